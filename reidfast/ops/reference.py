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
