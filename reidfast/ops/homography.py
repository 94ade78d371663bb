"""`homography_warp`: bilinear grid sampling at the points a 3x3 homography maps the output to, fused (SA-GAN's
spatial transformer). The coordinate convention and the horizon rule are defined in `reference.homography_warp`
(and, for the kernels, csrc/include/reidfast/grid_math.h and homography_math.h)."""
from __future__ import annotations

import torch

from . import _backend, _extension, reference
from ._args import as_int
from ._registration import register_homography_op_pair
from .reference import PADDING_MODES

_IMG_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_backend.register_op("homography_warp", ("cuda", "triton", "cpu", "reference"))
if _extension.has_cpu_kernels():
    register_homography_op_pair("reidfast::homography_warp_forward", "reidfast::homography_warp_backward",
                                python_autograd=False)
    _forward_op = torch.ops.reidfast.homography_warp_forward.default  # looked up once, not per call


def check_size(who: str, name: str, size, optional: bool = False) -> tuple[int, int]:
    """A (height, width) argument: two positive integers, Python's or numpy's (anything `operator.index` takes but a
    bool), returned as Python ints; traced sizes (SymInt) pass as they are. Errors start with who and name it."""
    try:
        pair = tuple(size)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise TypeError(f"{who}: {name} must be {'None or ' if optional else ''}a pair (height, width) of positive "
                        f"ints, got {size!r}")
    values = [v if isinstance(v, torch.SymInt) else as_int(v) for v in pair]
    if any(v is None for v in values):  # a whole float is refused too, as range() refuses it: sizes count pixels
        raise TypeError(f"{who}: {name} must hold two ints (Python or numpy integers), got {size!r}")
    if not (values[0] > 0 and values[1] > 0):
        raise ValueError(f"{who}: {name} must be positive, got ({values[0]}, {values[1]})")
    return values[0], values[1]


def check_align_corners(who: str, align_corners) -> None:
    if not isinstance(align_corners, bool):
        kind = type(align_corners)  # qualified beyond builtins: numpy's bool is also called "bool"
        name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise TypeError(f"{who}: align_corners must be a bool, got {name}")


def check_settings(who: str, out_size, padding_mode, align_corners):
    """The warp's non-tensor arguments (also checked by reidfast.nn.HomographyTransformer when it is built); errors
    start with who. Returns out_size as (Hout, Wout), or None."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{who}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    check_align_corners(who, align_corners)
    if out_size is None:
        return None
    return check_size(who, "out_size", out_size, optional=True)


def check_has_pixels(img: torch.Tensor, who: str = "homography_warp") -> None:
    """grid_sample's rule, on every backend (the C++ kernels' twin: homography_checks.h, check_inputs): an image
    without pixels has nothing to sample, not even its padding."""
    if img.shape[2] == 0 or img.shape[3] == 0:
        raise ValueError(f"{who}: img must have a positive height and width, got shape {tuple(img.shape)}")


def check_image(img, who: str = "homography_warp") -> None:
    """The image argument of a warp: a 4-D tensor of a sampled dtype with pixels."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{who}: img must be a torch.Tensor, got {type(img).__name__}")
    if img.dim() != 4:
        raise ValueError(f"{who}: img must be 4-D (N, C, H, W), got shape {tuple(img.shape)}")
    if img.dtype not in _IMG_DTYPES:
        raise TypeError(f"{who}: img must be float32, float64, float16 or bfloat16, got {img.dtype}")
    check_has_pixels(img, who)


def _check(img, H):
    check_image(img)
    if not isinstance(H, torch.Tensor):
        raise TypeError(f"homography_warp: H must be a torch.Tensor of shape (N, 3, 3), got {type(H).__name__}")
    N = img.shape[0]
    if tuple(H.shape) != (N, 3, 3):
        raise ValueError(f"homography_warp: H must have shape (N, 3, 3) = ({N}, 3, 3), got {tuple(H.shape)}")
    if not H.is_floating_point():
        raise TypeError(f"homography_warp: H must be a floating-point tensor, got {H.dtype}")
    if H.device != img.device:
        raise ValueError(f"homography_warp: H is on {H.device} but img is on {img.device}")


def homography_warp(
    img: torch.Tensor,
    H: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Warps img by the homography H: out[n, :, i, j] = img[n] sampled bilinearly at H[n] applied to (x_j, y_i, 1).

    img: (N, C, Hin, Win) float32/float64/float16/bfloat16, contiguous or channels_last (the output keeps it).
    H: (N, 3, 3), mapping OUTPUT normalized coordinates (x, y, 1) to INPUT normalized coordinates after the
      projective division; x, y in [-1, 1] with affine_grid/grid_sample's meaning under `align_corners`
      (so H = [[theta], [0, 0, 1]] reproduces affine_grid(theta) + grid_sample). Cast to float32 (float64 for a
      float64 img), the dtype of all coordinate math.
    out_size: (Hout, Wout), default the input size.
    padding_mode: "zeros" | "border" | "reflection", as grid_sample.
    Points whose projective denominator |w| < 1e-6 use w = +-1e-6 (sign kept, 0 counts as positive) and
    coordinates are clamped to +-1e6: they sample the padding, never producing Inf or NaN.
    Equals grid_sample(img, grid_from(H), "bilinear", padding_mode, align_corners) in values and gradients; the
    grid is never materialized. Differentiable in img and H (only the gradients needed are computed). On CUDA the
    gradient in img uses atomics: with torch.use_deterministic_algorithms(True) it raises (as grid_sample's
    backward does); the gradient in H is deterministic on every backend.
    The semantics are `reidfast.ops.reference.homography_warp`.
    """
    _check(img, H)
    out_h, out_w = (check_settings("homography_warp", out_size, padding_mode, align_corners)
                    or (int(img.shape[2]), int(img.shape[3])))
    backend = _backend.resolve("homography_warp", img.device)
    if backend == "reference":
        return reference.homography_warp(img, H, (out_h, out_w), padding_mode, align_corners)
    H = H.to(reference.opmath_dtype(img.dtype))
    if backend == "triton":
        from .triton import homography as triton_homography  # imported on first use: needs triton

        op = triton_homography.homography_warp_forward_triton
    else:
        op = _forward_op
    return op(img, H, out_h, out_w, padding_mode, align_corners)
