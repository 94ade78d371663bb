"""Benchmark cases for reidfast.ops.homography_warp against the reference (eager and torch.compile'd).

Passes: fwd; fwdbwd_H (image not requiring grad: the localization network learning through the warp of a real
image); fwdbwd (both gradients: the image comes from a generator). On a GPU the CUDA backend's fwdbwd_H is also
timed at each forced count of output points per thread in the grad_H kernel (REIDFAST_HOMOGRAPHY_POINTS=1, 2, 4:
passes fwdbwd_H-1pt, -2pt, -4pt), which chooses by the channel count by default (csrc/cuda/homography.cu).
"""
from __future__ import annotations

import torch

from reidfast import ops
from reidfast.ops import reference
from timing import with_env

# (N, C, Hin, Win): 256x128 re-id images, RGB at batch 128 (bandwidth away from launch overhead) and 16; SA-GAN's
# own call, RGB with its mask (or with a channel of ones when a warp is undone) for both directions at batch 8
# (reidfast/train/sagan.py); and feature maps, for many channels.
SHAPES = [(128, 3, 256, 128), (16, 3, 256, 128), (16, 4, 256, 128), (16, 64, 128, 64), (16, 256, 64, 32)]
QUICK_SHAPES = [(128, 3, 256, 128), (16, 4, 256, 128)]  # the GPU target's shape, SA-GAN's call
CPU_SHAPES = [(16, 3, 256, 128), (16, 4, 256, 128), (8, 64, 64, 32)]
CPU_QUICK_SHAPES = [(16, 3, 256, 128)]
PASSES = ("fwd", "fwdbwd_H", "fwdbwd")


def _homographies(N, device):
    g = torch.Generator().manual_seed(0)
    H = torch.eye(3).expand(N, 3, 3) + 0.05 * torch.randn(N, 3, 3, generator=g)
    H[:, 2, :2] = 0.2 * torch.randn(N, 2, generator=g)
    return H.to(device)


def _reference_call(img, H):
    # the plain unfused path (homography grid + grid_sample) without the reference's handling of NaN coordinates,
    # which no input here needs and which would slow the baseline by about a quarter
    return reference.homography_warp(img, H, None, "zeros", False, nan_rule=False)


def _bytes(img, pass_):
    # fwd: read img, write out (+ H). grad_H pass: also read grad_out and img again. Both: plus write grad_img
    # (read-modify-write of the accumulation buffer counted once each way).
    e = img.element_size() * img.numel()
    return {"fwd": 2 * e, "fwdbwd_H": 4 * e, "fwdbwd": 6 * e}[pass_]


def cases(device: torch.device, quick: bool):
    """Yields dicts: name fields, the callables to time for reidfast and the reference, and bytes moved."""
    if device.type == "cpu":
        shapes = CPU_QUICK_SHAPES if quick else CPU_SHAPES
        dtypes = [torch.float32]
        backends = ["cpu"]
    else:
        shapes = QUICK_SHAPES if quick else SHAPES
        dtypes = [torch.float32, torch.bfloat16]
        backends = ["cuda", "triton"]
    compiled_reference = torch.compile(_reference_call)
    for shape in shapes:
        for dtype in dtypes:
            img = torch.randn(shape, device=device, dtype=dtype)
            H = _homographies(shape[0], device)
            gy = torch.randn_like(img)
            for pass_ in PASSES:
                need_img = pass_ == "fwdbwd"
                need_h = pass_ != "fwd"
                x = img.detach().clone().requires_grad_(need_img)
                h = H.detach().clone().requires_grad_(need_h)
                wrt = [t for t, need in ((x, need_img), (h, need_h)) if need]

                def make(fn, x=x, h=h, wrt=wrt, need_h=need_h):
                    if not need_h:
                        def call():
                            with torch.no_grad():
                                fn(x, h)
                        return call

                    def call_bwd():
                        torch.autograd.grad(fn(x, h), wrt, gy)
                    return call_bwd

                for backend in backends:
                    def ours(img_, H_, backend=backend):
                        with ops.use_backend(backend):
                            return ops.homography_warp(img_, H_, None, "zeros", False)

                    row = {
                        "op": "homography", "pass": pass_, "shape": list(shape),
                        "dtype": str(dtype).replace("torch.", ""), "backend": backend, "fn": make(ours),
                        "ref": make(_reference_call), "ref_compiled": make(compiled_reference),
                        "bytes": _bytes(img, pass_),
                    }
                    yield row
                    if backend == "cuda" and pass_ == "fwdbwd_H":
                        # the grad_H kernel at each forced points-per-thread count (the row above: the default,
                        # 4 for 1, 3 or 4 channels, else 1); their reference columns are the row above's
                        for points in ("1", "2", "4"):
                            yield {**row, "pass": f"fwdbwd_H-{points}pt", "ref": None, "ref_compiled": None,
                                   "fn": with_env(row["fn"], "REIDFAST_HOMOGRAPHY_POINTS", points)}
