"""Pure-PyTorch reference of every reidfast op: the test oracle and the benchmark baseline.

Written for clarity, not speed. Each function here defines its op's semantics; the fused kernels must agree with
it in values and in gradients (through autograd on these functions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and accumulation use: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def activate(z: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    if activation == "none":
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "lrelu":
        return F.leaky_relu(z, negative_slope)
    raise ValueError(f"activation must be one of 'none', 'relu', 'lrelu'; got {activation!r}")


def adain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str = "none",
    negative_slope: float = 0.2,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Adaptive instance norm, then the activation, then the skip connection.

    y = act((x - mean_nc) / sqrt(var_nc + eps) * weight[n, c] + bias[n, c]) + residual
    with mean and biased variance over H*W per (n, c), computed in float32 (float64 for float64 x).
    This is MUNIT/DG-Net's AdaptiveInstanceNorm2d with the ResBlock's activation and skip folded in.
    """
    acc = opmath_dtype(x.dtype)
    xf = x.to(acc)
    mean = xf.mean(dim=(2, 3), keepdim=True)
    var = xf.var(dim=(2, 3), unbiased=False, keepdim=True)
    z = (xf - mean) / torch.sqrt(var + eps) * weight.to(acc)[:, :, None, None] + bias.to(acc)[:, :, None, None]
    y = activate(z, activation, negative_slope)
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(x.dtype)


# ---- homography warp ---------------------------------------------------------------------------------------
# The rule for points at or near the horizon (denominator w of the projective division near 0), shared with the
# kernels (csrc/include/reidfast/homography_math.h, triton/homography.py): |w| is raised to at least
# HOMOGRAPHY_MIN_DENOMINATOR keeping its sign (w == 0 counts as positive), and the resulting normalized
# coordinates are clamped to +-HOMOGRAPHY_MAX_COORD. Such points sample the padding; nothing becomes Inf or NaN.
HOMOGRAPHY_MIN_DENOMINATOR = 1e-6
HOMOGRAPHY_MAX_COORD = 1e6
PADDING_MODES = ("zeros", "border", "reflection")


def base_coordinates(size: int, align_corners: bool, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Normalized coordinates of the pixel centres of an axis of `size` pixels: affine_grid's base grid.

    align_corners=True: -1 and 1 are the first and last centres; False: they are the outer edges; one pixel: 0.
    """
    if size == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    i = torch.arange(size, dtype=dtype, device=device)
    if align_corners:
        return 2 * i / (size - 1) - 1
    return (2 * i + 1) / size - 1


def homography_grid(H: torch.Tensor, out_size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """The (N, Hout, Wout, 2) grid_sample grid of homography_warp: H applied to affine_grid's base coordinates.

    Computed in H's dtype. The base coordinates are those of an identity `affine_grid` (same align_corners).
    """
    out_h, out_w = out_size
    ys = base_coordinates(out_h, align_corners, H.dtype, H.device)
    xs = base_coordinates(out_w, align_corners, H.dtype, H.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # (Hout, Wout, 3): (x, y, 1)
    uvw = torch.einsum("nij,hwj->nhwi", H, points)
    w = uvw[..., 2:]
    eps = HOMOGRAPHY_MIN_DENOMINATOR
    w_safe = torch.where(w.abs() < eps, torch.where(w < 0, -eps, eps).to(w.dtype), w)
    return (uvw[..., :2] / w_safe).clamp(-HOMOGRAPHY_MAX_COORD, HOMOGRAPHY_MAX_COORD)


def homography_warp(
    img: torch.Tensor,
    H: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinear sampling of img at the points H maps the output's normalized coordinates to.

    H (N, 3, 3) maps an output point (x, y, 1), x and y in [-1, 1] as in affine_grid/grid_sample under
    align_corners, to input normalized coordinates after the projective division (with the horizon rule above).
    Coordinates and interpolation are computed in float32 (float64 for a float64 img); the result has img's dtype.
    """
    acc = opmath_dtype(img.dtype)
    size = tuple(img.shape[-2:]) if out_size is None else tuple(out_size)
    grid = homography_grid(H.to(acc), size, align_corners)
    out = F.grid_sample(img.to(acc), grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    return out.to(img.dtype)
