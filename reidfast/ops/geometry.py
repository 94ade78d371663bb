"""Homography helpers around `homography_warp`: parameterization, inverse, composition, and conversion between
pixel-coordinate matrices and the normalized convention the op uses.

Coordinate conventions (defined here once; the kernels' versions are in csrc/include/reidfast/grid_math.h):

* Pixel coordinates: (u, v) = (column, row), the centre of pixel [row i, column j] is at (j, i); the image spans
  [-0.5, W - 0.5] x [-0.5, H - 0.5]. This is OpenCV's and kornia's convention.
* Normalized coordinates (affine_grid / grid_sample), per axis of `size` pixels:
    align_corners=True : g = 2 p / (size - 1) - 1     (-1, +1 are the centres of the first and last pixels)
    align_corners=False: g = (2 p + 1) / size - 1     (-1, +1 are the outer edges of the first and last pixels)
  An axis of a single pixel maps its centre to 0 in both (affine_grid's rule).
* `homography_warp(img, H)` takes H mapping OUTPUT normalized coordinates to INPUT normalized coordinates
  (a backward map, like affine_grid's theta). Kornia/OpenCV matrices M map SOURCE pixels to DESTINATION pixels
  (a forward map); `warp_perspective` and `pixel_to_normalized` convert.
"""
from __future__ import annotations

import torch

from ._args import as_int
from .homography import check_align_corners, check_image, check_settings, check_size, homography_warp


def _check_homographies(fn: str, name: str, H) -> None:
    if not isinstance(H, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor of shape (..., 3, 3), got {type(H).__name__}")
    if H.dim() < 2 or tuple(H.shape[-2:]) != (3, 3):
        raise ValueError(f"{fn}: {name} must have shape (..., 3, 3), got {tuple(H.shape)}")
    if not H.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {H.dtype}")


def homography_from_params(p: torch.Tensor) -> torch.Tensor:
    """(N, 8) parameters -> (N, 3, 3) homographies I + [[p0, p1, p2], [p3, p4, p5], [p6, p7, 0]].

    Zero parameters give the identity, so a localization network whose last layer starts at zero starts at the
    identity warp. Differentiable.
    """
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"homography_from_params: p must be a torch.Tensor of shape (N, 8), got {type(p).__name__}")
    if p.dim() != 2 or p.shape[1] != 8:
        raise ValueError(f"homography_from_params: p must have shape (N, 8), got {tuple(p.shape)}")
    if not p.is_floating_point():
        raise TypeError(f"homography_from_params: p must be a floating-point tensor, got {p.dtype}")
    flat = torch.cat([p, p.new_zeros(p.shape[0], 1)], dim=1).view(-1, 3, 3)
    return flat + torch.eye(3, dtype=p.dtype, device=p.device)


# |det H| / (product of H's rows' norms), in units of the dtype's eps, under which homography_inverse refuses H
SINGULAR_RATIO = 64


def homography_inverse(H: torch.Tensor) -> torch.Tensor:
    """Batched inverse of (..., 3, 3) homographies (the warp that undoes H, up to resampling). A singular H is an
    error, which on a GPU waits for the device to check; `homography_adjugate` does not wait. Half-precision H is
    inverted in float32 (linalg.inv has no half-precision kernels) and returned in its own dtype."""
    _check_homographies("homography_inverse", "H", H)
    if H.dtype in (torch.float16, torch.bfloat16):
        return homography_inverse(H.float()).to(H.dtype)
    inverse, info = torch.linalg.inv_ex(H)
    if H.device.type == "meta":  # meta tensors (shape inference) hold nothing to check
        return inverse
    # Singular to working precision too, not only where the factorization meets an exact zero: by Hadamard's
    # inequality |det H| <= the product of its rows' norms, a ratio that no row's scale changes and that is about
    # 1 / cond(H); below 64 eps the inverse has lost nearly all its digits (and a warp by it samples garbage).
    with torch.no_grad():
        ratio = torch.linalg.det(H).abs() / torch.linalg.vector_norm(H, dim=-1).prod(-1)
    singular = (info != 0) | ~(ratio >= SINGULAR_RATIO * torch.finfo(H.dtype).eps)  # NaN and Inf entries too
    if bool(singular.any()):
        at = singular.flatten().nonzero().flatten().tolist()
        raise ValueError(f"homography_inverse: H is singular (no inverse: exactly, to working precision, or not "
                         f"finite) at flattened batch index(es) {at[:10]}{' ...' if len(at) > 10 else ''}")
    return inverse


def homography_adjugate(H: torch.Tensor) -> torch.Tensor:
    """The adjugate of (..., 3, 3) homographies, det(H) H^-1, in closed form: no pivoting, no division, nothing that
    waits on a GPU, differentiable. A homography acts up to scale, so this is also a warp that undoes H wherever H
    is invertible; a training step uses it where `homography_inverse` would synchronize (SA-GAN's cycle loss).
    """
    _check_homographies("homography_adjugate", "H", H)
    # Column k of adj(H) is the cross product of rows k+1 and k+2 of H (indices mod 3): H times it gives det(H) in
    # row k and 0 elsewhere.
    return torch.linalg.cross(H.roll(-1, dims=-2), H.roll(-2, dims=-2), dim=-1).transpose(-1, -2)


def compose_warps(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """H such that homography_warp(img, H) == homography_warp(homography_warp(img, first), second) (up to
    resampling and borders). Since each H maps output points back to input points, that is first @ second."""
    _check_homographies("compose_warps", "first", first)
    _check_homographies("compose_warps", "second", second)
    if first.dtype != second.dtype:  # matmul would refuse it; a silent promotion would hide a precision choice
        raise TypeError(f"compose_warps: first and second must have the same dtype, got {first.dtype} and "
                        f"{second.dtype}")
    if first.device != second.device:
        raise ValueError(f"compose_warps: first is on {first.device} but second is on {second.device}")
    try:  # batch dimensions broadcast, as in matmul: one warp composes with a batch of them
        torch.broadcast_shapes(first.shape[:-2], second.shape[:-2])
    except RuntimeError:
        raise ValueError(f"compose_warps: the batch shapes of first {tuple(first.shape)} and second "
                         f"{tuple(second.shape)} do not broadcast") from None
    return first @ second


def _axis(size: int, align_corners: bool) -> tuple[float, float]:
    """(scale, offset) of one axis' pixel -> normalized map g = scale * p + offset."""
    if size == 1:
        return 1.0, 0.0  # the single pixel's centre is 0; any scale works, 1 keeps the matrix invertible
    if align_corners:
        return 2.0 / (size - 1), -1.0
    return 2.0 / size, 1.0 / size - 1.0


def _normalization(size, align_corners: bool, inverse: bool, dtype, device) -> torch.Tensor:
    """normalization_matrix for checked arguments, or its inverse in closed form (no linalg.inv, which has no
    half-precision kernels)."""
    sy, oy = _axis(size[0], align_corners)
    sx, ox = _axis(size[1], align_corners)
    if inverse:
        sx, ox, sy, oy = 1.0 / sx, -ox / sx, 1.0 / sy, -oy / sy
    return torch.tensor([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def normalization_matrix(height: int, width: int, align_corners: bool, *, dtype=torch.float32,
                         device=None) -> torch.Tensor:
    """(3, 3) matrix taking pixel coordinates (u, v, 1) of a height x width image to normalized ones."""
    size = []
    for name, value in (("height", height), ("width", width)):
        n = as_int(value)
        if n is None:
            raise TypeError(f"normalization_matrix: {name} must be an int (Python or numpy integer), got {value!r}")
        if n < 1:
            raise ValueError(f"normalization_matrix: {name} must be positive, got {n}")
        size.append(n)
    check_align_corners("normalization_matrix", align_corners)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:  # an integer matrix would truncate 2 / size
        raise TypeError(f"normalization_matrix: dtype must be a floating-point torch.dtype, got {dtype!r}")
    return _normalization(size, align_corners, False, dtype, device)


def _check_conversion(fn: str, name: str, M, in_size, out_size, align_corners):
    _check_homographies(fn, name, M)
    check_align_corners(fn, align_corners)
    return check_size(fn, "in_size", in_size), check_size(fn, "out_size", out_size)


def pixel_to_normalized(M: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int],
                        align_corners: bool) -> torch.Tensor:
    """Converts M, mapping OUTPUT pixel coordinates to INPUT pixel coordinates, into homography_warp's H.

    M: (..., 3, 3) floating point; in_size, out_size: (height, width). H = N_in @ M @ N_out^-1 with N the
    normalization matrices.
    """
    in_size, out_size = _check_conversion("pixel_to_normalized", "M", M, in_size, out_size, align_corners)
    n_in = _normalization(in_size, align_corners, False, M.dtype, M.device)
    n_out_inv = _normalization(out_size, align_corners, True, M.dtype, M.device)
    return n_in @ M @ n_out_inv


def normalized_to_pixel(H: torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int],
                        align_corners: bool) -> torch.Tensor:
    """Inverse of `pixel_to_normalized`: homography_warp's H -> the map from output to input pixel coordinates."""
    in_size, out_size = _check_conversion("normalized_to_pixel", "H", H, in_size, out_size, align_corners)
    n_in_inv = _normalization(in_size, align_corners, True, H.dtype, H.device)
    n_out = _normalization(out_size, align_corners, False, H.dtype, H.device)
    return n_in_inv @ H @ n_out


def warp_perspective(img: torch.Tensor, M: torch.Tensor, dsize: tuple[int, int], padding_mode: str = "zeros",
                     align_corners: bool = True) -> torch.Tensor:
    """Kornia-style perspective warp: M (N, 3, 3) maps SOURCE pixel coordinates to DESTINATION pixel coordinates.

    dst[n, :, i, j] = bilinear sample of img[n] at pixel M[n]^-1 (j, i, 1) (after the projective division), with
    `padding_mode` beyond the image; dsize = (height, width) of the result. With align_corners=True (kornia's
    default) this is kornia.geometry.transform.warp_perspective. align_corners only changes where the border and
    reflection paddings see the image edge (pixel centres for True, outer edges for False); the pixel mapping is
    exact for both (kornia itself normalizes with the align_corners=True convention whatever the flag).
    Runs the fused homography_warp, so it is differentiable in img and M.
    """
    check_image(img, "warp_perspective")
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"warp_perspective: M must be a torch.Tensor of shape (N, 3, 3), got {type(M).__name__}")
    if tuple(M.shape) != (img.shape[0], 3, 3):
        raise ValueError(f"warp_perspective: M must have shape (N, 3, 3) = ({img.shape[0]}, 3, 3), got "
                         f"{tuple(M.shape)}")
    if not M.is_floating_point():
        raise TypeError(f"warp_perspective: M must be a floating-point tensor, got {M.dtype}")
    if M.device != img.device:
        raise ValueError(f"warp_perspective: M is on {M.device} but img is on {img.device}")
    out_h, out_w = check_size("warp_perspective", "dsize", dsize)
    check_settings("warp_perspective", None, padding_mode, align_corners)
    Mc = M.to(torch.float64 if img.dtype == torch.float64 else torch.float32)
    try:
        inverse = homography_inverse(Mc)
    except ValueError as exc:
        raise ValueError(f"warp_perspective: M has no inverse ({exc})") from None
    H = pixel_to_normalized(inverse, tuple(img.shape[-2:]), (out_h, out_w), align_corners)
    return homography_warp(img, H, (out_h, out_w), padding_mode=padding_mode, align_corners=align_corners)
