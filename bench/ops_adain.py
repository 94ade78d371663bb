"""Benchmark cases for reidfast.ops.adain against the reference (eager and torch.compile'd)."""
from __future__ import annotations

import itertools

import torch

from reidfast import ops
from reidfast.ops import reference
from timing import with_env

# DG-Net's decoder ResBlocks run AdaIN at 128 channels x 64 x 32 (batch 8 in the paper's setting), and a larger one
# to measure bandwidth away from launch overhead.
SHAPES = [(8, 128, 64, 32), (32, 128, 64, 32), (64, 256, 64, 64)]
QUICK_SHAPES = [(8, 128, 64, 32)]


# What every row times: DG-Net's decoder ResBlock form, AdaIN then ReLU then the skip connection added
ACTIVATION = "relu"

# Memory layouts timed: on a GPU the trainers run their networks channels_last (reidfast/train/loop.py), so that is
# what DG-Net's decoder hands AdaIN there; rows in it say so in their pass ("fwd-cl") and note.
LAYOUTS = {"cpu": ["contiguous"], "cuda": ["contiguous", "channels_last"]}


def _reference_call(x, w, b, r):
    return reference.adain(x, w, b, r, activation=ACTIVATION)


def cases(device: torch.device, quick: bool):
    """Yields dicts: name fields (activation and residual: what the call computes), the callables to time for
    reidfast and the reference, and bytes moved."""
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float32, torch.bfloat16]
    shapes = QUICK_SHAPES if quick else SHAPES
    if device.type == "cpu":
        shapes = shapes[:2]
    compiled_reference = torch.compile(_reference_call)
    backends = ["cpu"] if device.type == "cpu" else ["cuda", "triton"]
    for shape, dtype, layout in itertools.product(shapes, dtypes, LAYOUTS[device.type]):
        N, C = shape[:2]
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        r = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        w = torch.randn(N, C, device=device) + 1
        b = torch.randn(N, C, device=device)
        elem = x.element_size() * x.numel()
        for pass_ in ("fwd", "fwdbwd"):
            grad = pass_ == "fwdbwd"
            xs = [t.detach().clone().requires_grad_(grad) for t in (x, w, b, r)]
            gy = torch.randn_like(x)
            # fwd: read x and residual, write y. bwd: read grad_y and x, write grad_x (grad_residual is grad_y).
            nbytes = 3 * elem + (3 * elem if grad else 0)

            def make(fn, xs=xs, gy=gy, grad=grad):
                if not grad:
                    def call():
                        with torch.no_grad():
                            fn(*xs)
                    return call

                def call_bwd():
                    y = fn(*xs)
                    torch.autograd.grad(y, xs, gy)
                return call_bwd

            for backend in backends:
                def ours(x_, w_, b_, r_, backend=backend):
                    with ops.use_backend(backend):
                        return ops.adain(x_, w_, b_, r_, activation=ACTIVATION)

                row = {
                    "op": "adain", "pass": pass_ if layout == "contiguous" else f"{pass_}-cl",
                    "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "layout": layout,
                    "backend": backend, "fn": make(ours), "ref": make(_reference_call),
                    "ref_compiled": make(compiled_reference), "bytes": nbytes,
                    "activation": ACTIVATION, "residual": True,
                    "note": f"activation {ACTIVATION}, residual added, {layout}",
                }
                yield row
                if backend == "cuda" and layout == "channels_last":
                    # the channels_last kernels with each channel's H*W in slices, as many as fill the device (the
                    # row above: the default, one block per 32 channels; csrc/cuda/adain.cu, cl_slices); its
                    # reference columns are the row above's
                    yield {**row, "pass": f"{row['pass']}-sliced", "ref": None, "ref_compiled": None,
                           "fn": with_env(row["fn"], "REIDFAST_ADAIN_CL_SLICES", "auto"),
                           "note": f"{row['note']}, H*W in slices"}
