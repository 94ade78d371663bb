"""render --image in the pose of --pose (an image of the run's dataset, or a keypoints file)

FD-GAN's generator G draws the person of each --image (through E's visual feature) in a target pose. --pose
accepts:
  - an image file of the run's dataset (a path or just its file name, e.g. 0002_c1s1_000451_03.jpg) whose
    keypoints the dataset's keypoints file holds (the synthetic dataset's annotations.csv, or --keypoints CSV);
  - a keypoints CSV (the pose-guided person generation format, header name:keypoints_y:keypoints_x): every row
    is a target pose, coordinates in pixels of images of --pose-size (default: the size of the dataset's images);
  - an FD-GAN pose text file (.txt: 18 lines "y x", negative for missing), coordinates in pixels of --pose-size.
For image i and pose j it writes input_<i>.png, pose_<j>.png (the pose map's maximum) and generated_<i>_<j>.png,
all at the run's input size (the pose maps at the middle training bandwidth). The noise vector is fixed by --seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import read_fdgan_pose, read_keypoints_csv, scale_keypoints
from ..models.fdgan import NOISE_FEATURE, from_generator_range
from ..train.fdgan import pose_picture
from ..train.images import save_image_grid
from .common import load_images

POSE_FILE_SUFFIXES = (".csv", ".txt")  # --pose as a keypoints file; any other --pose is an image


def add_arguments(parser) -> None:
    parser.add_argument("--image", nargs="+", required=True, metavar="IMG", help="images of the persons to draw")
    parser.add_argument("--pose", required=True, metavar="POSE_SOURCE",
                        help="an image of the run's dataset with known keypoints (path or file name), a keypoints "
                             "CSV (name:keypoints_y:keypoints_x, one pose per row) or an FD-GAN pose .txt file")
    parser.add_argument("--pose-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size the CSV/.txt coordinates refer to (default: the dataset images' size)")
    parser.add_argument("--keypoints", metavar="CSV", default=None,
                        help="the keypoints file of the dataset images (default: the run's --keypoints, else the "
                             "dataset's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise vector (0)")


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.height, img.width


def _check_file(argument: str, value: str) -> None:
    path = Path(value)
    if not path.exists():
        raise ValueError(f"{argument} {value}: no such file")
    if not path.is_file():
        raise ValueError(f"{argument} {value}: not a file")


def check_arguments(args) -> None:
    """The user's mistakes in --pose-size, --keypoints and --pose that show without the dataset: refused before
    any image is read."""
    if args.pose_size is not None and min(args.pose_size) < 1:  # 0 divides by zero, negatives mirror the poses
        raise ValueError(f"--pose-size: H and W must be positive integers, got {' '.join(map(str, args.pose_size))}")
    if args.keypoints is not None:  # checked even where --pose does not need it: a wrong path is a mistake anyway
        _check_file("--keypoints", args.keypoints)
    if Path(args.pose).suffix.lower() in POSE_FILE_SUFFIXES:  # never an image name: the path must exist
        _check_file("--pose", args.pose)


def target_poses(method, cfg, args) -> list[tuple[str, np.ndarray]]:
    """(label, (18, 2) keypoints in pixels of the run's input size) of every pose --pose names (the arguments
    passed check_arguments)."""
    height, width = cfg["height"], cfg["width"]
    source = Path(args.pose)
    if source.suffix.lower() in POSE_FILE_SUFFIXES:
        dataset = None
        if args.pose_size is None:
            dataset = method.load_dataset(cfg)
        h0, w0 = args.pose_size or _image_size(dataset.train[0].path)
        if source.suffix.lower() == ".csv":
            poses = list(read_keypoints_csv(source).items())
        else:
            poses = [(source.stem, read_fdgan_pose(source))]
        if not poses:
            raise ValueError(f"--pose: {source} holds no pose")
        return [(Path(name).stem, scale_keypoints(kp, width / w0, height / h0)) for name, kp in poses]
    # an image of the dataset, as a path or by its file name alone: its keypoints from the dataset's keypoints file
    dataset = method.load_dataset(cfg)
    by_name = {Path(s.path).name: s.path for split in (dataset.train, dataset.query, dataset.gallery) for s in split}
    path = source if source.is_file() else Path(by_name.get(source.name, ""))
    if not path.is_file():
        raise ValueError(f"--pose {args.pose}: no such file, and {dataset.name} has no image of that name (give an "
                         f"image of the run's dataset, a keypoints CSV or a .txt pose file)")
    csv = args.keypoints or cfg.get("keypoints") or dataset.keypoints_csv
    if csv is None or not Path(csv).is_file():
        raise ValueError(f"--pose {args.pose}: {dataset.name} has no keypoints file; pass --keypoints CSV, or give "
                         f"--pose as a keypoints CSV or .txt file")
    keypoints = read_keypoints_csv(csv)
    if source.name not in keypoints:
        raise ValueError(f"--pose {args.pose}: no keypoints for {source.name} in {csv} (give an image of the run's "
                         f"dataset, a keypoints CSV or a .txt pose file)")
    h0, w0 = _image_size(path)
    return [(source.stem, scale_keypoints(keypoints[source.name], width / w0, height / h0))]


def generate(method, cfg, args, out, device) -> list[Path]:
    check_arguments(args)
    size = (cfg["height"], cfg["width"])
    images = load_images(args.image, size, device, "--image", method.resize_filter)
    poses = target_poses(method, cfg, args)
    keypoints = torch.from_numpy(np.stack([kp for _, kp in poses]).astype(np.float32)).to(device)
    maps = method.pose_maps(keypoints)
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    noise = torch.randn(1, NOISE_FEATURE, generator=g).to(device)
    out = Path(out)
    written = []
    for j, picture in enumerate(pose_picture(maps)):
        written.append(save_image_grid(picture[None], out / f"pose_{j}.png", nrow=1, padding=0))
    for i, image in enumerate(images):
        written.append(save_image_grid(image[None], out / f"input_{i}.png", nrow=1, padding=0))
        batch = image[None].expand(len(poses), -1, -1, -1)
        fake = from_generator_range(method.generate(batch, maps, noise.expand(len(poses), -1)))
        for j, picture in enumerate(fake):
            written.append(save_image_grid(picture[None], out / f"generated_{i}_{j}.png", nrow=1, padding=0))
    return written
