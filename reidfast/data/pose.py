"""18-point OpenPose keypoints: file readers/writers, Gaussian heatmaps and horizontal flips.

Convention inside reidfast: keypoints are float arrays/tensors of shape (..., 18, 2) holding (x, y) in pixels of
the image they belong to (x = column, y = row); a missing point is (-1, -1). "Right"/"left" are the person's own.

File formats read here:
- the pose-guided person generation CSV: header ``name:keypoints_y:keypoints_x``, one row per image,
  ``0002_c1s1_000451_03.jpg:[12, 30, -1, ...]:[31, 31, -1, ...]`` (y list first), -1 for missing;
- FD-GAN's one text file per image (``poses/<image stem>.txt``): 18 lines ``y x`` (row first, then column,
  whitespace separated, floats allowed) in the pixels of the original image, a negative value for missing.
  This is the order the original FD-GAN loader reads (first number scaled by the height ratio).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

OPENPOSE_18 = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
               "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
               "right_eye", "left_eye", "right_ear", "left_ear")
NUM_KEYPOINTS = len(OPENPOSE_18)
LEFT_RIGHT_PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))


def _flip_permutation() -> list[int]:
    perm = list(range(NUM_KEYPOINTS))
    for r, l in LEFT_RIGHT_PAIRS:
        perm[r], perm[l] = l, r
    return perm


# keypoint k of a mirrored image is keypoint FLIP_PERMUTATION[k] of the original
FLIP_PERMUTATION = tuple(_flip_permutation())
CSV_HEADER = "name:keypoints_y:keypoints_x"


def _check_keypoints(keypoints, where: str) -> None:
    if keypoints.shape[-2:] != (NUM_KEYPOINTS, 2):
        raise ValueError(f"{where}: keypoints must have shape (..., {NUM_KEYPOINTS}, 2) holding (x, y); "
                         f"got {tuple(keypoints.shape)}")


def missing_mask(keypoints):
    """True where a keypoint is missing (either coordinate negative); works on numpy arrays and tensors."""
    return (keypoints < 0).any(-1)


def read_keypoints_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """image name -> (18, 2) float32 (x, y) array from a ``name:keypoints_y:keypoints_x`` CSV."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().replace(" ", "") != CSV_HEADER:
        raise ValueError(f"read_keypoints_csv: {path} must start with the header {CSV_HEADER!r}, "
                         f"found {lines[0][:60]!r}" if lines else f"read_keypoints_csv: {path} is empty")
    poses = {}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            name, ys, xs = line.split(":")
            y, x = np.asarray(json.loads(ys), np.float32), np.asarray(json.loads(xs), np.float32)
            if y.shape != (NUM_KEYPOINTS,) or x.shape != (NUM_KEYPOINTS,):
                raise ValueError(f"expected {NUM_KEYPOINTS} values per list, got {y.shape} and {x.shape}")
        except ValueError as error:
            raise ValueError(f"read_keypoints_csv: {path} line {number} is not "
                             f"'name:[{NUM_KEYPOINTS} ys]:[{NUM_KEYPOINTS} xs]' ({error}): {line[:80]!r}") from None
        kp = np.stack([x, y], axis=1)
        kp[missing_mask(kp)] = -1
        poses[name.strip()] = kp
    return poses


def write_keypoints_csv(path: str | os.PathLike, poses: Mapping[str, np.ndarray]) -> None:
    """Write (x, y) keypoints as the ``name:keypoints_y:keypoints_x`` CSV, rounded to integer pixels."""
    rows = [CSV_HEADER]
    for name, kp in poses.items():
        kp = np.asarray(kp, dtype=np.float64)
        _check_keypoints(kp, "write_keypoints_csv")
        kp = np.where(missing_mask(kp)[:, None], -1, np.rint(kp)).astype(int)
        rows.append(f"{name}:{json.dumps(kp[:, 1].tolist())}:{json.dumps(kp[:, 0].tolist())}")
    Path(path).write_text("\n".join(rows) + "\n")


def read_fdgan_pose(path: str | os.PathLike) -> np.ndarray:
    """(18, 2) float32 (x, y) keypoints from an FD-GAN pose text file (18 lines ``y x``)."""
    path = Path(path)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        values = np.asarray(rows, dtype=np.float32)
    except ValueError:
        values = None
    if values is None or values.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"read_fdgan_pose: {path} must hold {NUM_KEYPOINTS} lines of 'y x'; "
                         f"found {len(rows)} lines, first {rows[:1]}")
    kp = values[:, ::-1].copy()
    kp[missing_mask(kp)] = -1
    return kp


def read_fdgan_poses(pose_dir: str | os.PathLike, image_names) -> dict[str, np.ndarray]:
    """image name -> keypoints for FD-GAN's ``<pose_dir>/<image stem>.txt`` files."""
    pose_dir = Path(pose_dir)
    return {name: read_fdgan_pose(pose_dir / (Path(name).stem + ".txt")) for name in image_names}


def scale_keypoints(keypoints, scale_x: float, scale_y: float):
    """Keypoints of an image resized by (scale_x, scale_y); missing points stay missing."""
    _check_keypoints(keypoints, "scale_keypoints")
    scale = torch.tensor([scale_x, scale_y]) if torch.is_tensor(keypoints) else np.array([scale_x, scale_y])
    if torch.is_tensor(keypoints):
        scale = scale.to(keypoints)
    scaled = keypoints * scale
    missing = missing_mask(keypoints)[..., None]
    return torch.where(missing, -1.0, scaled) if torch.is_tensor(keypoints) else np.where(missing, -1.0, scaled)


def flip_keypoints(keypoints, width: int, swap_left_right: bool = True):
    """Keypoints of the horizontally mirrored image (x -> width - 1 - x, pixel-index convention).

    A mirror turns the person's right side into their left, so by default right/left keypoints swap places.
    ``swap_left_right=False`` only mirrors the coordinates, which is what code that flips pose maps with
    ``np.flip`` (FD-GAN) does.
    """
    _check_keypoints(keypoints, "flip_keypoints")
    missing = missing_mask(keypoints)
    if torch.is_tensor(keypoints):
        flipped = keypoints.clone()
        flipped[..., 0] = torch.where(missing, -1.0, (width - 1) - keypoints[..., 0])
    else:
        flipped = np.array(keypoints, dtype=np.result_type(keypoints, np.float32), copy=True)
        flipped[..., 0] = np.where(missing, -1.0, (width - 1) - flipped[..., 0])
    return flipped[..., list(FLIP_PERMUTATION), :] if swap_left_right else flipped


def flip_heatmaps(heatmaps: torch.Tensor, swap_left_right: bool = True) -> torch.Tensor:
    """Mirror (B, 18, H, W) heatmaps; with ``swap_left_right`` the left/right channels also trade places."""
    if heatmaps.dim() != 4 or heatmaps.shape[1] != NUM_KEYPOINTS:
        raise ValueError(f"flip_heatmaps: heatmaps must be (B, {NUM_KEYPOINTS}, H, W), got {tuple(heatmaps.shape)}")
    flipped = heatmaps.flip(-1)
    return flipped[:, list(FLIP_PERMUTATION)] if swap_left_right else flipped


def keypoints_to_heatmaps(keypoints: torch.Tensor, height: int, width: int,
                          sigma: float | torch.Tensor = 5.0, *, check_sigma: bool = True) -> torch.Tensor:
    """(B, 18, 2) (x, y) keypoints -> (B, 18, height, width) Gaussian heatmaps, on the keypoints' device.

    ``exp(-((col - x)^2 + (row - y)^2) / (2 sigma^2))``: peak 1 at the keypoint, computed in closed form as the
    outer product of a row and a column profile (no per-pixel loop, no blur). `sigma` is a float or a (B,)
    tensor (a per-sample sigma, e.g. for FD-GAN's sigma jitter). Missing keypoints give all-zero channels.
    A sigma that is not positive is an error. Checking a sigma held on a GPU waits for it; check_sigma=False skips
    that check, for callers whose sigma is positive by construction (a trainer's step then never waits).
    """
    if not torch.is_tensor(keypoints):
        raise TypeError(f"keypoints_to_heatmaps: keypoints must be a tensor, got {type(keypoints).__name__}")
    if keypoints.dim() != 3:
        raise ValueError(f"keypoints_to_heatmaps: keypoints must be (B, {NUM_KEYPOINTS}, 2), "
                         f"got {tuple(keypoints.shape)}")
    _check_keypoints(keypoints, "keypoints_to_heatmaps")
    dtype = keypoints.dtype if keypoints.is_floating_point() else torch.float32
    kp = keypoints.to(dtype)
    batch = kp.shape[0]
    if torch.is_tensor(sigma):
        sigma = sigma.to(dtype)
        sigma = sigma.expand(batch) if sigma.dim() == 0 else sigma
        if sigma.shape != (batch,):
            raise ValueError(f"keypoints_to_heatmaps: sigma must be a number or shape ({batch},), "
                             f"got shape {tuple(sigma.shape)}")
        if check_sigma and bool((~(sigma > 0)).any()):  # NaN too
            raise ValueError("keypoints_to_heatmaps: sigma must be positive, got a value <= 0 or NaN")
        inv = (-0.5 / sigma.to(kp.device) ** 2).view(batch, 1, 1)
    else:  # a number: checked and used on the host, nothing copied to the device
        if not float(sigma) > 0:
            raise ValueError(f"keypoints_to_heatmaps: sigma must be positive, got {sigma}")
        inv = -0.5 / float(sigma) ** 2
    cols = torch.arange(width, dtype=dtype, device=kp.device)
    rows = torch.arange(height, dtype=dtype, device=kp.device)
    profile_x = torch.exp((cols.view(1, 1, -1) - kp[..., 0:1]) ** 2 * inv)  # (B, 18, W)
    profile_y = torch.exp((rows.view(1, 1, -1) - kp[..., 1:2]) ** 2 * inv)  # (B, 18, H)
    profile_y = profile_y * (~missing_mask(kp)).to(dtype).unsqueeze(-1)
    return profile_y.unsqueeze(-1) * profile_x.unsqueeze(-2)
