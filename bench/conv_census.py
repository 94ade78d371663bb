"""The convolutions of one training iteration, by shape: what a GPU's convolution library will be asked for, found
on any device (a CPU runs the GPU shapes, slowly). Two kinds of call are flagged, the kinds that showed up as the
slowest kernels of H100 profiles:

- "map-sized kernel": a forward convolution whose kernel covers at least half of its input map. Autograd's second
  derivative of a convolution's input gradient takes this form, the batch in the channel dimension and an output
  gradient as the kernel (a penalty on a discriminator's input gradient, R1 or WGAN-GP): a GEMM with a small
  output and a reduction over the whole batch and map, barely parallel. reidfast.nn.PenaltyConv2d avoids it.
- "channels % 8": input or output channels that are not a multiple of 8, which keeps cuDNN off its tensor-core
  layouts (RGB inputs and outputs, one-channel critics).

    python bench/conv_census.py --method sagan [--config reidfast] [--shapes gpu|cpu] [--device cpu|cuda]

Uses bench/train_step.py's cases and configurations (compile off: the census sees eager calls; under
torch.compile the same calls run inside the graphs). Nothing is timed.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402


class ConvolutionCensus(TorchDispatchMode):
    """Counts aten.convolution and aten.convolution_backward calls by (kind, input, weight, stride, transposed or
    output mask)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight, stride, transposed = args[0], args[1], args[3], args[6]
            self.calls[("forward", tuple(x.shape), tuple(weight.shape), tuple(stride),
                        "transposed" if transposed else "")] += 1
        elif func is torch.ops.aten.convolution_backward.default:
            x, weight, stride, mask = args[1], args[2], args[4], args[-1]
            wanted = "+".join(name for name, on in zip(("input", "weight", "bias"), mask) if on)
            self.calls[("backward", tuple(x.shape), tuple(weight.shape), tuple(stride), wanted)] += 1
        return func(*args, **(kwargs or {}))


def flags(kind: str, x: tuple, weight: tuple) -> list[str]:
    out = []
    if kind == "forward" and weight[2] * weight[3] > 49 and 2 * weight[2] >= x[2] and 2 * weight[3] >= x[3]:
        out.append("map-sized kernel")
    if weight[0] % 8 or weight[1] % 8:
        out.append("channels % 8")
    return out


def census(case: str, config: str, device: torch.device, shapes: str) -> collections.Counter:
    from reidfast import ops
    try:
        _, _, _, step = train_step.prepare(case, config, device, shapes, compile=False)
        step()  # the first iteration may differ (lazy state); the second is counted
        with ConvolutionCensus() as seen:
            step()
    finally:
        ops.set_backend("auto")
    return seen.calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=list(train_step.CASES))
    p.add_argument("--config", default="reidfast", choices=list(train_step.CONFIGS))
    p.add_argument("--shapes", default="gpu", choices=("gpu", "cpu"),
                   help="the case's GPU shapes (default, also on a CPU: minutes there) or its CPU shapes")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    calls = census(args.method, args.config, torch.device(args.device), args.shapes)
    print(f"{args.method}, {args.config} configuration, {args.shapes} shapes: {sum(calls.values())} convolution "
          f"calls in one iteration, {len(calls)} distinct")
    print(f"{'calls':>5}  {'kind':<8} {'input':<22} {'weight':<22} {'stride':<8} {'':<20} flags")
    flagged = collections.Counter()
    for (kind, x, weight, stride, extra), n in sorted(calls.items(), key=lambda kv: (kv[0][0], -kv[1])):
        marks = flags(kind, x, weight)
        for mark in marks:
            flagged[mark] += n
        print(f"{n:>5}  {kind:<8} {str(x):<22} {str(weight):<22} {str(stride):<8} {extra:<20} {', '.join(marks)}")
    for mark in ("map-sized kernel", "channels % 8"):
        print(f"{mark}: {flagged[mark]} calls")
    return calls


if __name__ == "__main__":
    main()
