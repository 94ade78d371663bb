"""Fake (meta) kernels and autograd for the reidfast custom ops, registered once per op pair.

The C++ ops (schemas in csrc/ops.cpp) and the Triton ops (torch.library.custom_op) share the fake kernels, so both
backends present identical shapes and strides to torch.compile. The C++ ops register their autograd in C++
(csrc/autograd/: one dispatcher round trip per differentiable call, and gradients for C++ users); the Triton ops
register the Python twin below, which computes the same gradients with the same backward op contract.
"""
from __future__ import annotations

import torch

from .rank_result import SUMMARY_TAIL
from .reference import opmath_dtype


def _row_layout(x: torch.Tensor) -> torch.memory_format:
    # Same rule as the kernels: channels_last only when x is exactly that and not also plain contiguous.
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _refuse_double_backward(backward_name: str, op: str) -> None:
    """Autograd for a Triton backward op that refuses to be differentiated, with the C++ ops' message
    (csrc/autograd/): gradients are first-order, and a gradient of the gradient must say so rather than fail in
    torch's words about a missing formula."""

    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: double backward (a gradient of its gradient) is not supported")

    torch.library.register_autograd(backward_name, backward, setup_context=lambda ctx, inputs, output: None)


def _adain_forward_fake(x, weight, bias, residual, activation, negative_slope, eps):
    stats = x.new_empty((x.shape[0], x.shape[1]), dtype=opmath_dtype(x.dtype))
    return torch.empty_like(x, memory_format=_row_layout(x)), stats, torch.empty_like(stats)


def _adain_backward_fake(grad_y, x, weight, bias, mean, rstd, activation, negative_slope):
    return torch.empty_like(x, memory_format=_row_layout(x)), torch.empty_like(weight), torch.empty_like(bias)


def register_adain_op_pair(forward_name: str, backward_name: str, *, python_autograd: bool) -> None:
    """Registers fake kernels for an AdaIN forward/backward op pair, and autograd for the forward when
    python_autograd (the Triton ops; the C++ ops have theirs in csrc/autograd/adain.cpp)."""
    torch.library.register_fake(forward_name)(_adain_forward_fake)
    torch.library.register_fake(backward_name)(_adain_backward_fake)
    if not python_autograd:
        return
    backward_op = getattr(torch.ops.reidfast, backward_name.split("::")[1]).default

    def setup_context(ctx, inputs, output):
        x, weight, bias, residual, activation, negative_slope, _eps = inputs
        _y, mean, rstd = output
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.activation = activation
        ctx.negative_slope = negative_slope
        ctx.has_residual = residual is not None
        ctx.mark_non_differentiable(mean, rstd)

    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = backward_op(
            grad_y, x, weight, bias, mean, rstd, ctx.activation, ctx.negative_slope
        )
        # y = ... + residual: the residual's gradient is grad_y itself, no kernel needed.
        grad_residual = grad_y if ctx.has_residual else None
        return grad_x, grad_weight, grad_bias, grad_residual, None, None, None

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)
    _refuse_double_backward(backward_name, "adain")


def _rank_queries_fake(dist, q_pids, q_camids, g_pids, g_camids, ap_mode):
    num_q = dist.shape[0]
    ap = dist.new_empty((num_q,), dtype=torch.float64)
    index = dist.new_empty((num_q,), dtype=torch.int64)
    return ap, torch.empty_like(ap), index, torch.empty_like(index)


def _rank_summary_fake(ap, inp, first_hit, num_matches, max_rank):
    return ap.new_empty((max_rank + SUMMARY_TAIL,), dtype=torch.float64)


def register_rank_ops(queries_name: str, summary_name: str) -> None:
    """Fake kernels of the per-query ranking op and its summary (no autograd: ranks are not differentiable)."""
    torch.library.register_fake(queries_name)(_rank_queries_fake)
    torch.library.register_fake(summary_name)(_rank_summary_fake)


def _homography_forward_fake(img, H, out_h, out_w, padding_mode, align_corners):
    return img.new_empty((img.shape[0], img.shape[1], out_h, out_w)).contiguous(memory_format=_row_layout(img))


def _homography_backward_fake(grad_out, img, H, padding_mode, align_corners, output_mask):
    grad_img = torch.empty_like(img, memory_format=_row_layout(img)) if output_mask[0] else img.new_empty((0,))
    grad_H = torch.empty_like(H, memory_format=torch.contiguous_format) if output_mask[1] else H.new_empty((0,))
    return grad_img, grad_H


def register_homography_op_pair(forward_name: str, backward_name: str, *, python_autograd: bool) -> None:
    """Registers fake kernels for a homography-warp forward/backward op pair, and autograd for the forward when
    python_autograd (the Triton ops; the C++ ops have theirs in csrc/autograd/homography.cpp).

    The backward op computes only the gradients autograd asks for (output_mask); one not asked for comes back
    with shape (0,) and is returned to autograd as None.
    """
    torch.library.register_fake(forward_name)(_homography_forward_fake)
    torch.library.register_fake(backward_name)(_homography_backward_fake)
    if not python_autograd:
        return
    backward_op = getattr(torch.ops.reidfast, backward_name.split("::")[1]).default

    def setup_context(ctx, inputs, output):
        img, H, _out_h, _out_w, padding_mode, align_corners = inputs
        ctx.save_for_backward(img, H)
        ctx.padding_mode = padding_mode
        ctx.align_corners = align_corners

    def backward(ctx, grad_out):
        img, H = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        grad_img, grad_H = backward_op(grad_out, img, H, ctx.padding_mode, ctx.align_corners, mask)
        return (grad_img if mask[0] else None, grad_H if mask[1] else None, None, None, None, None)

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)
    _refuse_double_backward(backward_name, "homography_warp")
