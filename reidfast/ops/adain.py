"""`adain`: adaptive instance normalization + activation + skip connection, fused (DG-Net's decoder ResBlocks)."""
from __future__ import annotations

import math
import numbers

import torch

from . import _backend, _extension, reference
from ._registration import register_adain_op_pair

ACTIVATIONS = ("none", "relu", "lrelu")
_X_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_backend.register_op("adain", ("cuda", "triton", "cpu", "reference"))
if _extension.has_cpu_kernels():
    register_adain_op_pair("reidfast::adain_forward", "reidfast::adain_backward", python_autograd=False)
    _forward_op = torch.ops.reidfast.adain_forward.default  # looked up once, not per call


def _check(x, weight, bias, residual, activation, negative_slope, eps):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"adain: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"adain: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"adain: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    N, C = x.shape[:2]
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"adain: {name} must be a torch.Tensor of shape (N, C), got {type(t).__name__}")
        if tuple(t.shape) != (N, C):
            raise ValueError(f"adain: {name} must have shape (N, C) = ({N}, {C}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"adain: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"adain: {name} is on {t.device} but x is on {x.device}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"adain: residual must be a torch.Tensor or None, got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"adain: residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"adain: residual must have x's dtype {x.dtype}, got {residual.dtype}")
        if residual.device != x.device:
            raise ValueError(f"adain: residual is on {residual.device} but x is on {x.device}")
    check_settings("adain", activation, negative_slope, eps)


def check_settings(who: str, activation, negative_slope, eps) -> None:
    """The op's non-tensor arguments (also checked by reidfast.nn.AdaIN2d when it is built); errors start with who."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{who}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    for name, value in (("negative_slope", negative_slope), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__} {value!r}")
    if not eps >= 0:
        raise ValueError(f"{who}: eps must be >= 0, got {eps}")
    if not math.isfinite(negative_slope):
        raise ValueError(f"{who}: negative_slope must be finite, got {negative_slope}")


def adain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str = "none",
    negative_slope: float = 0.2,
    eps: float = 1e-5,
) -> torch.Tensor:
    """y = act((x - mean) / sqrt(var + eps) * weight + bias) + residual, per sample and channel.

    x: (N, C, H, W) float32/float64/float16/bfloat16, contiguous or channels_last (the output keeps the layout).
    weight, bias: (N, C) per-sample style parameters; cast to float32 (float64 for float64 x), in which the
      statistics (mean and biased variance over H*W) and all accumulation are done.
    residual: optional tensor like x, added after the activation (the skip of a ResBlock).
    activation: "none" | "relu" | "lrelu" (slope `negative_slope`).
    Differentiable in x, weight, bias and residual, with one fused backward kernel.
    The semantics are `reidfast.ops.reference.adain`.
    """
    _check(x, weight, bias, residual, activation, negative_slope, eps)
    backend = _backend.resolve("adain", x.device)
    if backend == "reference":
        return reference.adain(x, weight, bias, residual, activation, negative_slope, eps)
    acc = reference.opmath_dtype(x.dtype)
    weight, bias = weight.to(acc), bias.to(acc)
    if backend == "triton":
        from .triton import adain as triton_adain  # imported on first use: needs triton

        op = triton_adain.adain_forward_triton
    else:
        op = _forward_op
    y, _mean, _rstd = op(x, weight, bias, residual, activation, float(negative_slope), float(eps))
    return y
