"""AdaIN in Triton: one program per row (n, c); a row is walked in BLOCK-sized chunks, so any H*W works.

Strides cover both layouts: contiguous (c-stride H*W, element stride 1) and channels_last (c-stride 1, element
stride C); the sample stride is C*H*W in both.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._registration import register_adain_op_pair
from ..reference import opmath_dtype

_ACTIVATIONS = {"none": 0, "relu": 1, "lrelu": 2}


def _split_scalar(value: float) -> tuple[float, float]:
    """value as float32 hi + lo: Triton passes Python floats as float32, which float64 kernels must not inherit."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(torch.tensor(value - hi, dtype=torch.float32))


@triton.jit
def _activation(z, ACT: tl.constexpr, slope):
    if ACT == 1:
        z = tl.where(z > 0, z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _activation_grad(z, ACT: tl.constexpr, slope):
    # At z == 0: relu passes 0, leaky_relu passes the slope, as PyTorch's own backward does.
    if ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, slope)
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d.to(z.dtype)


@triton.jit
def _adain_fwd_kernel(X, W, B, R, Y, MEAN, RSTD, C, HW, stride_c, stride_e, slope_hi, slope_lo, eps_hi, eps_lo,
                      HAS_RES: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    slope = tl.cast(slope_hi, ACC) + tl.cast(slope_lo, ACC)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    base = (row // C) * C * HW + (row % C) * stride_c
    total = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        total += tl.load(X + base + offs * stride_e, mask=mask, other=0.0).to(ACC)
    mean = tl.sum(total, axis=0) / HW
    sq = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        d = tl.where(mask, tl.load(X + base + offs * stride_e, mask=mask, other=0.0).to(ACC) - mean, 0.0)
        sq += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / HW + eps)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    scale = rstd * tl.load(W + row).to(ACC)
    bias = tl.load(B + row).to(ACC)  # (x - mean) * scale + bias: folding mean into bias cancels when |mean| >> std
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        ptr = base + offs * stride_e
        y = _activation((tl.load(X + ptr, mask=mask, other=0.0).to(ACC) - mean) * scale + bias, ACT, slope)
        if HAS_RES:
            y += tl.load(R + ptr, mask=mask, other=0.0).to(ACC)
        tl.store(Y + ptr, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _adain_bwd_kernel(GY, X, W, B, MEAN, RSTD, GX, GW, GB, C, HW, stride_c, stride_e, slope_hi, slope_lo,
                      ACT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    slope = tl.cast(slope_hi, ACC) + tl.cast(slope_lo, ACC)
    base = (row // C) * C * HW + (row % C) * stride_c
    mean = tl.load(MEAN + row)
    rstd = tl.load(RSTD + row)
    w = tl.load(W + row)
    b = tl.load(B + row)
    acc_g = tl.zeros([BLOCK], dtype=ACC)
    acc_gx = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        ptr = base + offs * stride_e
        xh = (tl.load(X + ptr, mask=mask, other=0.0).to(ACC) - mean) * rstd
        g = tl.load(GY + ptr, mask=mask, other=0.0).to(ACC) * _activation_grad(xh * w + b, ACT, slope)
        acc_g += g
        acc_gx += g * xh  # masked lanes have g == 0
    sum_g = tl.sum(acc_g, axis=0)
    sum_gx = tl.sum(acc_gx, axis=0)
    tl.store(GB + row, sum_g)
    tl.store(GW + row, sum_gx)
    mean_g = sum_g / HW
    mean_gx = sum_gx / HW
    for start in range(0, HW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < HW
        ptr = base + offs * stride_e
        xh = (tl.load(X + ptr, mask=mask, other=0.0).to(ACC) - mean) * rstd
        g = tl.load(GY + ptr, mask=mask, other=0.0).to(ACC) * _activation_grad(xh * w + b, ACT, slope)
        gx = rstd * w * (g - mean_g - xh * mean_gx)
        tl.store(GX + ptr, gx.to(GX.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> torch.memory_format:
    # The rule of the C++ kernels (adain_checks.h): channels_last only when x is exactly that.
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _launch_params(x: torch.Tensor):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    if _layout(x) == torch.channels_last:
        stride_c, stride_e = 1, C
    else:
        stride_c, stride_e = HW, 1
    block = min(triton.next_power_of_2(max(HW, 1)), 4096)
    num_warps = 8 if block >= 2048 else 4
    acc = tl.float64 if opmath_dtype(x.dtype) == torch.float64 else tl.float32
    return stride_c, stride_e, block, num_warps, acc


@torch.library.custom_op("reidfast::adain_forward_triton", mutates_args=())
def adain_forward_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
    activation: str, negative_slope: float, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fmt = _layout(x)
    x = x.contiguous(memory_format=fmt)
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
    N, C = x.shape[:2]
    y = torch.empty_like(x, memory_format=fmt)
    mean = torch.empty((N, C), dtype=weight.dtype, device=x.device)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return y, mean.zero_(), rstd.zero_()
    stride_c, stride_e, block, num_warps, acc = _launch_params(x)
    _adain_fwd_kernel[(N * C,)](
        x, weight.contiguous(), bias.contiguous(), residual if residual is not None else x, y, mean, rstd,
        C, x.shape[2] * x.shape[3], stride_c, stride_e, *_split_scalar(negative_slope), *_split_scalar(eps),
        HAS_RES=residual is not None, ACT=_ACTIVATIONS[activation], ACC=acc, BLOCK=block, num_warps=num_warps,
    )
    return y, mean, rstd


@torch.library.custom_op("reidfast::adain_backward_triton", mutates_args=())
def adain_backward_triton(
    grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
    rstd: torch.Tensor, activation: str, negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fmt = _layout(x)
    x = x.contiguous(memory_format=fmt)
    grad_y = grad_y.contiguous(memory_format=fmt)
    N, C = x.shape[:2]
    gx = torch.empty_like(x, memory_format=fmt)
    gw = torch.zeros_like(weight)
    gb = torch.zeros_like(bias)
    if x.numel() == 0:
        return gx, gw, gb
    stride_c, stride_e, block, num_warps, acc = _launch_params(x)
    _adain_bwd_kernel[(N * C,)](
        grad_y, x, weight.contiguous(), bias.contiguous(), mean.contiguous(), rstd.contiguous(), gx, gw, gb,
        C, x.shape[2] * x.shape[3], stride_c, stride_e, *_split_scalar(negative_slope),
        ACT=_ACTIVATIONS[activation], ACC=acc, BLOCK=block, num_warps=num_warps,
    )
    return gx, gw, gb


register_adain_op_pair("reidfast::adain_forward_triton", "reidfast::adain_backward_triton", python_autograd=True)
