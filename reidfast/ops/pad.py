"""reflection_pad2d: `F.pad(x, padding, mode="reflect")` for 4-D inputs, with the same values and derivatives of
every order; what differs is what torch.compile makes of its backward.

Inductor decomposes a reflection pad's backward into nine masked gathers per call (the centre and the eight
reflected border regions), and a penalty on a discriminator's input gradient (DG-Net's R1) differentiates every
pad of the network twice: the graphs of a DG-Net step then hold hundreds of them, a sixth of its compile time
(on the 2-core CPU, the first compiled iteration of `python -m reidfast.train dgnet --compile` at the cpu-quick
preset's size, empty cache, took 297 s with this op against 359 s without). Here the backward is a custom op
(`torch.ops.reidfast.reflection_pad2d_backward`) that the compiled graph calls as one ATen kernel, and its own
derivative is the pad again. The pad is an autograd.Function kept whole in the graph (allow_in_graph), so that its
backward also holds inside a first derivative taken in the compiled region (torch.func.grad), as
`reidfast.ops.conv2d`'s does; forward-mode derivatives and vmap rules (the backward op's own, registered below)
make torch.func's other transforms work on it as on F.pad.

ATen's CUDA kernel for that backward accumulates with atomics (nondeterministic); under
`torch.use_deterministic_algorithms(True)` the op runs `F.pad` itself, whose compiled backward (the gathers) is
deterministic and whose eager one refuses in PyTorch's words, as a plain reflect-padded nn.Conv2d does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from . import _backend, reference
from ._args import as_int, check_tensor

_backend.register_op("reflection_pad2d", ("reference",), torch_ops="ATen kernels, with an opaque backward")


@torch.library.custom_op("reidfast::reflection_pad2d_backward", mutates_args=())
def _pad_backward(grad_out: torch.Tensor, height: int, width: int, padding: list[int]) -> torch.Tensor:
    """The gradient of reflection_pad2d's (N, C, height, width) input for the padded output's gradient (contiguous,
    whatever grad_out's layout, so that the fake kernel can say so)."""
    shape_of_input = grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], height, width))
    return torch.ops.aten.reflection_pad2d_backward(grad_out, shape_of_input, padding).contiguous()


@_pad_backward.register_fake
def _(grad_out, height, width, padding):
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], height, width))


@torch.library.register_vmap("reidfast::reflection_pad2d_backward")
def _(info, in_dims, grad_out, height, width, padding):
    """Under torch.func.vmap: the vmapped dimension joins the batch."""
    grad_out = grad_out.movedim(in_dims[0], 0)
    size = grad_out.shape[0]
    return _pad_backward(grad_out.flatten(0, 1), height, width, padding).unflatten(0, (size, -1)), 0


# The two Functions take the padding as four int arguments, not a list: torch.func builds their vmap rules
# (generate_vmap_rule) by flattening the arguments, and forward-mode AD under vmap (jacfwd, hessian) failed to
# match a list's four leaves to one argument (torch 2.14).
class _PadBackward(Function):
    """reflection_pad2d's input gradient, linear in grad_out: its derivative is the pad of grad_grad_x, and its
    forward-mode derivative is itself applied to the tangent."""
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, height, width, left, right, top, bottom):
        return _pad_backward(grad_out, height, width, [left, right, top, bottom])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.size, ctx.padding = inputs[1:3], inputs[3:]

    @staticmethod
    def backward(ctx, grad_grad_x):
        return _ReflectionPad.apply(grad_grad_x, *ctx.padding), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_tangent, *_):
        return _PadBackward.apply(grad_out_tangent, *ctx.size, *ctx.padding)


class _ReflectionPad(Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, left, right, top, bottom):
        return F.pad(x, (left, right, top, bottom), mode="reflect")

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.size = (inputs[0].shape[-2], inputs[0].shape[-1])
        ctx.padding = inputs[1:]

    @staticmethod
    def backward(ctx, grad_out):
        return _PadBackward.apply(grad_out, *ctx.size, *ctx.padding), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _ReflectionPad.apply(x_tangent, *ctx.padding)


@torch.compiler.allow_in_graph
def _apply(x, padding):
    return _ReflectionPad.apply(x, *padding)


def reflection_pad2d(x: torch.Tensor, padding) -> torch.Tensor:
    """`F.pad(x, padding, mode="reflect")` (padding: (left, right, top, bottom), each smaller than the side it
    pads) with an opaque backward under torch.compile (module docstring). Inputs other than 4-D, the "reference"
    backend setting and deterministic mode run the reference; F.pad's own checks and messages apply to all."""
    check_tensor("reflection_pad2d", "x", x)
    if not isinstance(padding, (tuple, list)):
        raise TypeError(f"reflection_pad2d: padding must be a tuple of 4 ints (left, right, top, bottom), got "
                        f"{type(padding).__name__} {padding!r}")
    # resolve first: a misspelt REIDFAST_BACKEND is the same ValueError here as in the other ops
    if (_backend.resolve("reflection_pad2d", x.device) == "reference" or x.dim() != 4
            or torch.are_deterministic_algorithms_enabled()):
        return reference.reflection_pad2d(x, padding)
    ints = [as_int(p) for p in padding]
    if any(p is None for p in ints):  # F.pad refuses a float too; int() would truncate it
        raise TypeError(f"reflection_pad2d: padding must hold ints, got {padding!r}")
    if len(ints) != 4:
        raise ValueError(f"reflection_pad2d: padding must be 4 ints (left, right, top, bottom) for a 4-D input, "
                         f"got {ints}")
    return _apply(x, ints)
