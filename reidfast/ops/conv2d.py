"""conv2d for networks whose input gradient is penalized (DG-Net's R1, SA-GAN's WGAN-GP): the values and the
derivatives of `reference.conv2d` (F.conv2d) at every order; what differs is which kernels run the second order.

A penalty on grad_x D(x) reaches D's weights through the derivative of each convolution's input gradient (a
transposed convolution of the output gradient with the weight). Autograd takes that derivative's weight part as a
forward convolution with batch and channels swapped: the layer's whole output-gradient map becomes the kernel,
(C_out, N, H_out, W_out), and the output is as small as the weight, (C_in, C_out, kh, kw): a GEMM of a few
hundred rows and a reduction over the whole batch and map, barely parallel. The slowest convolution kernels of the
H100 profiles in bench/results/*profile* (2.3-2.6 ms a call; 15% of a DG-Net reference iteration's GPU time) match
these calls by count and kind. The same numbers are a weight gradient, wgrad(input = the second-order gradient,
output gradient = the layer's output gradient), which cuDNN computes with kernels made for it, parallel over the
batch and the map.

Here the convolution is an autograd.Function whose input gradient is a second one: computed by autograd's own
kernel, and differentiated by a forward convolution (for the output gradient's part) and the weight-gradient
kernel (for the weight's). Every kernel is one that a convolution's plain forward and backward run; the first-order
weight and bias gradients are autograd's own. (A conv_transpose2d for the input gradient would be shorter, but
torch.compile has mispredicted the output layout of transposed convolutions with output padding on CUDA.) Under
torch.compile the function stays whole in the graph (allow_in_graph), so that its backward also holds inside a
first derivative taken in the compiled region (torch.func.grad): inlined, it lost the penalty's share of the
weight gradient (torch 2.14). The functions also have forward-mode derivatives (jvp) and vmap rules generated from
their bodies, so torch.func's vmap, jacrev, jacfwd and hessian work on the op as on F.conv2d.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.autograd import Function

from . import _backend, reference
from ._args import check_tensor

_backend.register_op("conv2d", ("reference",), torch_ops="torch ops with a rewritten second derivative")


def _convolution_backward(grad_out, x, weight, stride, padding, dilation, groups, mask):
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding, dilation, False, [0, 0],
                                               groups, mask)


# The Functions take stride, padding and dilation as six int arguments, not lists: torch.func builds their vmap
# rules (generate_vmap_rule) by flattening the arguments, and forward-mode AD under vmap (jacfwd, hessian) failed to
# match a list's leaves to one argument (torch 2.14). conf rebuilds what aten's convolutions take.
def _conf(sh, sw, ph, pw, dh, dw, groups):
    return [sh, sw], [ph, pw], [dh, dw], groups


class _InputGrad(Function):
    """grad_x of conv2d(x, weight) for grad_out, by autograd's own kernel; x gives only the input's size and layout
    (a strided convolution's input size is not a function of its output size)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, x, weight, *ints):
        return _convolution_backward(grad_out, x, weight, *_conf(*ints), [True, False, False])[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, weight, *ints = inputs
        ctx.save_for_backward(grad_out, weight)
        ctx.save_for_forward(grad_out, x, weight)
        ctx.ints = ints

    @staticmethod
    def backward(ctx, grad_grad_x):
        grad_out, weight = ctx.saved_tensors
        stride, padding, dilation, groups = _conf(*ctx.ints)
        d_grad_out = d_weight = None
        # grad_x is linear in grad_out and in weight: <grad_grad_x, grad_x> = <grad_out, conv2d(grad_grad_x, weight)>,
        # so its derivatives are a forward convolution and a weight gradient with grad_grad_x as the input
        if ctx.needs_input_grad[0]:
            d_grad_out = F.conv2d(grad_grad_x, weight, None, stride, padding, dilation, groups)
        if ctx.needs_input_grad[2]:
            d_weight = _convolution_backward(grad_out, grad_grad_x, weight, stride, padding, dilation, groups,
                                             [False, True, False])[1]
        return (d_grad_out, None, d_weight) + (None,) * 7

    @staticmethod
    def jvp(ctx, grad_out_tangent, x_tangent, weight_tangent, *_):
        # bilinear in (grad_out, weight); x gives only a size
        grad_out, x, weight = ctx.saved_tensors
        terms = []
        if grad_out_tangent is not None:
            terms.append(_InputGrad.apply(grad_out_tangent, x, weight, *ctx.ints))
        if weight_tangent is not None:
            terms.append(_InputGrad.apply(grad_out, x, weight_tangent, *ctx.ints))
        return sum(terms[1:], terms[0]) if terms else None


class _Conv2d(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, *ints):
        return F.conv2d(x, weight, bias, *_conf(*ints))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, *ints = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.ints = ints
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = _conf(*ctx.ints)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if torch.is_grad_enabled():  # a backward that builds a graph (a penalty's input gradient): grad_x by
            if need_x:                # _InputGrad, whose own derivative is the point of this op
                grad_x = _InputGrad.apply(grad_out, x, weight, *ctx.ints)
            if need_weight:  # autograd's own op, differentiated in turn by autograd's formula
                grad_weight = _convolution_backward(grad_out, x, weight, stride, padding, dilation, groups,
                                                    [False, True, False])[1]
        elif need_x or need_weight:  # a plain backward: one call for both, as autograd's convolution backward makes
            grad_x, grad_weight, _ = _convolution_backward(grad_out, x, weight, stride, padding, dilation, groups,
                                                           [need_x, need_weight, False])
        if need_bias:
            grad_bias = grad_out.sum((0, 2, 3))
        return (grad_x, grad_weight, grad_bias) + (None,) * 7

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent, *_):
        # bilinear in (x, weight), plus the bias
        x, weight = ctx.saved_tensors
        terms = []
        if x_tangent is not None:
            terms.append(_Conv2d.apply(x_tangent, weight, None, *ctx.ints))
        if weight_tangent is not None:
            terms.append(_Conv2d.apply(x, weight_tangent, None, *ctx.ints))
        out = sum(terms[1:], terms[0]) if terms else None
        if bias_tangent is not None:
            bias_term = bias_tangent.view(1, -1, 1, 1)
            out = bias_term.expand(ctx.output_shape) if out is None else out + bias_term
        return out


@torch.compiler.allow_in_graph
def _apply(x, weight, bias, stride, padding, dilation, groups):
    return _Conv2d.apply(x, weight, bias, *stride, *padding, *dilation, groups)


def _ints(name: str, v) -> list[int]:
    """stride, padding or dilation as F.conv2d takes it: an int (Python's, numpy's, a 0-d integer tensor's) for both
    dimensions, or a sequence of them. Anything else (a float, which F.conv2d refuses too) is a TypeError naming
    the argument, not a silent truncation."""
    # Sequences are told apart by type, not by operator.index raising: Dynamo (torch 2.11) turned that TypeError,
    # raised while tracing a resumed frame, into an internal error instead of passing it to the except clause
    if not isinstance(v, (tuple, list)):
        try:
            return [operator.index(v)] * 2
        except TypeError:
            pass  # another sequence type (a numpy array), read below
    try:
        ints = [operator.index(e) for e in v]
    except TypeError:
        raise TypeError(f"conv2d: {name} must be an int or a tuple of ints, got {v!r}") from None
    if len(ints) == 1:  # F.conv2d's rule: one value serves both dimensions
        return ints * 2
    if len(ints) != 2:
        raise ValueError(f"conv2d: {name} must be an int or 2 ints (height, width), got {v!r}")
    return ints


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, dilation, groups)` with a faster second derivative (module
    docstring). Under autocast, x, weight and bias are cast to the autocast dtype first, as F.conv2d's autocast
    rule does. String padding, inputs other than 4-D and the "reference" backend setting run the reference."""
    check_tensor("conv2d", "x", x)
    check_tensor("conv2d", "weight", weight)
    # resolve, not the bare setting: a misspelt REIDFAST_BACKEND is the same ValueError here as in the other ops
    if _backend.resolve("conv2d", x.device) == "reference" or isinstance(padding, str) or x.dim() != 4:
        return reference.conv2d(x, weight, bias, stride, padding, dilation, groups)
    device_type = x.device.type
    # A device type without autocast (meta: shape inference, a model built on torch.device("meta")) has nothing to
    # cast, and torch.is_autocast_enabled would raise on it. Compiled code does not ask: Dynamo (torch 2.11) cannot
    # trace is_autocast_available, and breaking the graph at every convolution is what compiling is meant to avoid;
    # the tensors a compiled graph runs on are on devices with autocast.
    if ((torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type))
            and torch.is_autocast_enabled(device_type)):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    try:
        groups = operator.index(groups)
    except TypeError:
        raise TypeError(f"conv2d: groups must be an int, got {groups!r}") from None
    return _apply(x, weight, bias, _ints("stride", stride), _ints("padding", padding), _ints("dilation", dilation),
                  groups)
