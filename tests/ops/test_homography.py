"""homography_warp: every backend against reference.homography_warp (values and gradients), the horizon rule,
conventions, geometry helpers, registration (opcheck, torch.compile), errors."""
import math
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidfast import ops
from reidfast.ops import _backend, _extension, reference

from ..conftest import run_in_fresh_process

HAS_CUDA = torch.cuda.is_available()
needs_ext = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="reidfast._C not built")
needs_interp = pytest.mark.skipif(not _backend.TRITON_ON_CPU, reason=_backend.TRITON_ON_CPU_WHY_NOT)

PADDINGS = ["zeros", "border", "reflection"]
# (N, C, Hin, Win, out_size): odd sizes, out_size larger and smaller than the input, a 1-pixel-wide output, and
# one with more channels and columns than the CPU kernel takes at once (channel chunks, column tiles, blocks of
# tiles that end inside a row).
CASES = [(2, 3, 7, 9, None), (3, 2, 11, 6, (9, 13)), (1, 4, 8, 8, (5, 1)), (2, 17, 6, 40, (4, 130))]


def random_homographies(N, kind, dtype=torch.float64, device="cpu"):
    """near: identity + small perturbation. projective: strong perspective (|h20|, |h21| up to 0.6) plus
    rotation/shear/scale, with the denominator kept away from 0 over [-1, 1]^2 so that finite differences hold."""
    g = torch.Generator().manual_seed(1234 + N)
    eye = torch.eye(3, dtype=torch.float64).expand(N, 3, 3)
    if kind == "near":
        H = eye + 0.05 * torch.randn(N, 3, 3, generator=g, dtype=torch.float64)
    else:
        H = eye + 0.4 * torch.randn(N, 3, 3, generator=g, dtype=torch.float64)
        H[:, 2, :2] = (torch.rand(N, 2, generator=g, dtype=torch.float64) * 1.2 - 0.6)
        H[:, 2, 2] = 1.0 + 0.1 * torch.rand(N, generator=g, dtype=torch.float64)
        H[:, :2, 2] *= 1.5  # translations that push part of the output outside the image
    return H.to(device, dtype)


def cpu_backends():
    out = []
    if _extension.has_cpu_kernels():
        out.append("cpu")
    if _backend.TRITON_ON_CPU:
        out.append("triton")
    return out


def warp(backend, img, H, out_size, padding, align):
    with ops.use_backend(backend):
        return ops.homography_warp(img, H, out_size, padding, align)


def compare_with_reference(backend, img, H, out_size, padding, align, tol):
    a, h = img.detach().clone().requires_grad_(True), H.detach().clone().requires_grad_(True)
    b, h2 = img.detach().clone().requires_grad_(True), H.detach().clone().requires_grad_(True)
    y = warp(backend, a, h, out_size, padding, align)
    y_ref = reference.homography_warp(b, h2, out_size, padding, align)
    assert y.dtype == img.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    gy = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, [a, h], gy)
    want = torch.autograd.grad(y_ref, [b, h2], gy)
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol, msg=lambda m: f"grad img: {m}")
    # grad_H sums over every output point: scale the tolerance by its magnitude.
    scale = want[1].abs().max().item() + 1.0
    torch.testing.assert_close(got[1], want[1], atol=tol * 10 * scale, rtol=tol * 10,
                               msg=lambda m: f"grad H: {m}")
    # grad_H alone (a real image: the localization network learning through the warp) takes its own kernel path
    h3 = H.detach().clone().requires_grad_(True)
    (alone,) = torch.autograd.grad(warp(backend, img.detach(), h3, out_size, padding, align), [h3], gy)
    torch.testing.assert_close(alone, want[1], atol=tol * 10 * scale, rtol=tol * 10,
                               msg=lambda m: f"grad H alone: {m}")
    return y


@needs_ext
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("kind", ["near", "projective"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_matches_reference(padding, align, kind, dtype, channels_last):
    # fp32: coordinates rounded at 1e-7 relative become 1e-7 x the width in pixels, times the image's slope
    tol = {torch.float64: 1e-10, torch.float32: 5e-5}[dtype]
    for N, C, hin, win, out_size in CASES:
        img = torch.randn(N, C, hin, win, dtype=dtype)
        if channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        y = compare_with_reference("cpu", img, random_homographies(N, kind, dtype), out_size, padding, align, tol)
        if channels_last and C > 1 and y.shape[-1] * y.shape[-2] > 1:
            assert y.is_contiguous(memory_format=torch.channels_last), "output must keep channels_last"


# The CPU kernel's per-point loops are also compiled for AVX2 and chosen at run time, and its grad_H loop takes AVX2
# gathers or not by the processor (csrc/cpu/homography.cpp, gathers_pay_off). The tests above use what this
# processor takes; each variable below, in a fresh process, forces one build (on a processor without AVX2 the
# last two run the baseline build again).
@needs_ext
@pytest.mark.parametrize("env", [{"REIDFAST_CPU_BASELINE": "1"}, {"REIDFAST_CPU_GATHERS": "1"},
                                 {"REIDFAST_CPU_GATHERS": "0"}], ids=["baseline", "avx2-gathers", "avx2-scalar"])
def test_cpu_builds_match_reference(env):
    code = """
import torch
from tests.ops import test_homography as t
torch.manual_seed(0)
for padding in t.PADDINGS:
    for align in (False, True):
        for N, C, hin, win, out_size in t.CASES:
            img = torch.randn(N, C, hin, win)
            t.compare_with_reference("cpu", img, t.random_homographies(N, "projective", torch.float32), out_size,
                                     padding, align, 5e-5)
print("ok")
"""
    done = run_in_fresh_process(code, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@needs_ext
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 builds are x86-64 only")
def test_cpu_gathers_setting_is_checked():
    code = """
import torch
from reidfast import ops
H = torch.eye(3)[None].requires_grad_(True)
ops.homography_warp(torch.randn(1, 3, 8, 8), H).sum().backward()
"""
    done = run_in_fresh_process(code, env={"REIDFAST_CPU_GATHERS": "yes"}, timeout=300)
    assert done.returncode != 0
    assert "REIDFAST_CPU_GATHERS must be 0 or 1" in done.stderr and "got 'yes'" in done.stderr, done.stderr[-3000:]


@needs_interp
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
def test_triton_interpreted_matches_reference(padding, align):
    for kind, (N, C, hin, win, out_size), channels_last in [("near", CASES[0], False), ("projective", CASES[1], True)]:
        img = torch.randn(N, C, hin, win, dtype=torch.float64)
        if channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        compare_with_reference("triton", img, random_homographies(N, kind), out_size, padding, align, 1e-10)


@needs_ext
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
def test_gradcheck_cpu_kernels(padding, align):
    img = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    H = random_homographies(1, "projective").requires_grad_(True)

    def f(x, h):
        with ops.use_backend("cpu"):
            return ops.homography_warp(x, h, (3, 4), padding, align)

    assert torch.autograd.gradcheck(f, (img, H), eps=1e-6, atol=1e-5)
    # H alone: the image is a constant, as for the localization network learning through the warp of a real image
    assert torch.autograd.gradcheck(lambda h: f(img.detach(), h), (H,), eps=1e-6, atol=1e-5)


@needs_ext
def test_gradient_in_H_alone_and_in_img_alone():
    img = torch.randn(2, 3, 6, 5)
    H = random_homographies(2, "projective", torch.float32)
    # The backward op computes only what is asked for; the other output comes back empty.
    y = torch.ops.reidfast.homography_warp_forward(img, H, 4, 4, "zeros", False)
    gy = torch.randn_like(y)
    gi, gh = torch.ops.reidfast.homography_warp_backward(gy, img, H, "zeros", False, [False, True])
    assert gi.numel() == 0 and gh.shape == (2, 3, 3)
    gi2, gh2 = torch.ops.reidfast.homography_warp_backward(gy, img, H, "zeros", False, [True, False])
    assert gi2.shape == img.shape and gh2.numel() == 0
    gi3, gh3 = torch.ops.reidfast.homography_warp_backward(gy, img, H, "zeros", False, [True, True])
    torch.testing.assert_close(gh, gh3)
    torch.testing.assert_close(gi2, gi3)
    # Through autograd: an image that does not require grad gets none, H does.
    h = H.clone().requires_grad_(True)
    with ops.use_backend("cpu"):
        ops.homography_warp(img, h, (4, 4)).mul(gy).sum().backward()
    torch.testing.assert_close(h.grad, gh)



@pytest.mark.parametrize("backend", cpu_backends())
def test_double_backward_is_a_clear_error(backend):
    # The kernels' autograd differentiates once; a gradient of the gradient must say so, not return a disconnected
    # zero (C++) or fail in torch's words about a formula never registered (Triton).
    img = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    H = random_homographies(1, "projective").requires_grad_(True)
    with ops.use_backend(backend):
        y = ops.homography_warp(img, H)
    (g_h,) = torch.autograd.grad(y.square().sum(), H, create_graph=True)
    with pytest.raises(RuntimeError, match="homography_warp: double backward"):
        g_h.sum().backward()

def test_identity_and_affine_convention():
    # H = [[theta], [0, 0, 1]] must reproduce affine_grid(theta) + grid_sample: this pins the base coordinates.
    img = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 1.1, -0.2]], [[1.0, 0.0, 0.3], [0.0, 0.8, 0.0]]],
                         dtype=torch.float64)
    H = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(2, 1, 3)], dim=1)
    for backend in ["reference"] + cpu_backends():
        for align in (False, True):
            for out_size in [(7, 10), (5, 4)]:
                grid = F.affine_grid(theta, [2, 3, *out_size], align_corners=align)
                want = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=align)
                torch.testing.assert_close(warp(backend, img, H, out_size, "zeros", align), want)
            eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
            torch.testing.assert_close(warp(backend, img, eye, None, "border", align), img)


@pytest.mark.parametrize("backend", ["reference"] + cpu_backends())
@pytest.mark.parametrize("padding", PADDINGS)
def test_horizon_rule_gives_finite_values_and_gradients(backend, padding):
    # w = x + tiny crosses zero inside the output: exactly 0, below the 1e-6 floor, and just above it.
    H = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
                      [[1.0, 0.5, 0.3137], [0.0, 1.0, 0.2171], [0.0, 0.0, 0.0]],
                      [[2.0, 0.0, 0.1], [0.0, 1.0, 0.0], [1.0, 0.0, 3e-7]]], dtype=torch.float64)
    img = torch.randn(3, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    h = H.clone().requires_grad_(True)
    y = warp(backend, img, h, (5, 7), padding, False)  # width 7: the centre column has x == 0 exactly
    gi, gh = torch.autograd.grad(y, [img, h], torch.randn_like(y))
    for t in (y, gi, gh):
        assert torch.isfinite(t).all()
    grid = reference.homography_grid(H, (5, 7), False)
    assert torch.isfinite(grid).all() and grid.abs().max() <= reference.HOMOGRAPHY_MAX_COORD
    # Sample 1 has w == 0 everywhere: every point maps beyond the image, so zeros padding gives 0 there.
    if padding == "zeros":
        assert y[1].abs().max() == 0
    if backend != "reference":  # reflection too: the floor is 1e-6 in float64 everywhere, so ~1e6 coordinates agree
        y_ref = reference.homography_warp(img, H, (5, 7), padding, False)
        torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)


def test_horizon_floor_is_in_the_coordinates_dtype():
    # A w below the floor is replaced by 1e-6 in H's dtype: in float64 the coordinate is u / 1e-6 to the last bits
    # (a float32-rounded floor moved it by 2.5e-9 of its size, which reflection padding turns into other pixels).
    H = torch.tensor([[[0.3, 0.0, 0.1], [0.0, 0.2, 0.05], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    grid = reference.homography_grid(H, (3, 4), False)
    ys, xs = reference.base_coordinates(3, False, torch.float64), reference.base_coordinates(4, False, torch.float64)
    expected = torch.stack(torch.broadcast_tensors(0.3 * xs[None, :] + 0.1, 0.2 * ys[:, None] + 0.05), -1) / 1e-6
    torch.testing.assert_close(grid[0], expected, atol=0, rtol=1e-15)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_nan_or_infinite_pixel_stays_where_it_is(backend, channels_last):
    # Pixel (0, 0) NaN, pixel (0, 1) infinite: points whose taps are inside the image but away from them, and points
    # outside the image, must not see them (the CPU kernel's outside taps point at offset 0 with weight 0, and
    # 0 * NaN is NaN). The shift by half the image keeps every inside tap away from the top-left corner.
    img = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    img[:, :, 0, 0] = math.nan
    img[:, :, 0, 1] = math.inf
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    H = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64).repeat(2, 1, 1)
    for padding in ("zeros", "border"):
        a, h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
        y = warp(backend, a, h, (6, 9), padding, False)
        assert torch.isfinite(y).all()
        if padding == "zeros":
            assert (y == 0).any()  # some points are outside the image
        b, h2 = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
        y_ref = reference.homography_warp(b, h2, (6, 9), padding, False)
        torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)
        if padding != "zeros":  # border: every point reads the image, whose bad pixels are not all avoided
            continue
        gy = torch.randn_like(y)
        gi, gh = torch.autograd.grad(y, [a, h], gy)
        want = torch.autograd.grad(y_ref, [b, h2], gy)
        assert torch.isfinite(gi).all() and torch.isfinite(gh).all()
        torch.testing.assert_close(gi, want[0], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(gh, want[1], atol=1e-8, rtol=1e-8)



def check_nan_homography_rule(backend, padding, nan_at, device="cpu", channels_last=False):
    """Sample 0's H holds a NaN (every projected coordinate is NaN), sample 1's is finite: sample 0's output is NaN
    in every channel, it sends no gradient to the image, its gradient in H is NaN; sample 1 is the reference's."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    img = torch.randn(2, 3, 5, 6, dtype=dtype, device=device)
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    H = random_homographies(2, "near", dtype, device)
    H[0][nan_at] = math.nan
    a, h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
    y = warp(backend, a, h, (4, 7), padding, False)
    assert torch.isnan(y[0]).all()
    gy = torch.randn_like(y)
    gi, gh = torch.autograd.grad(y, [a, h], gy)
    assert torch.isfinite(gi).all() and (gi[0] == 0).all()
    assert torch.isnan(gh[0]).any() and torch.isfinite(gh[1]).all()
    # sample 1 alone through the reference
    b, h1 = img[1:].clone().requires_grad_(True), H[1:].clone().requires_grad_(True)
    y1 = reference.homography_warp(b, h1, (4, 7), padding, False)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1:], y1, **tol)
    want = torch.autograd.grad(y1, [b, h1], gy[1:])
    torch.testing.assert_close(gi[1:], want[0], **tol)
    torch.testing.assert_close(gh[1:], want[1], **(tol if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)))
    if backend != "reference":  # the kernels' rule for the sample's whole gradient in H
        assert torch.isnan(gh[0]).all()


@pytest.mark.parametrize("backend", ["reference"] + cpu_backends())
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("nan_at", [(0, 0), (2, 2)])  # in u only; in the denominator w
def test_a_nan_in_H_gives_nan_output_and_no_image_gradient(backend, padding, nan_at):
    # grid_sample gave padding-dependent values at NaN points, and its CPU backward crashed under "border"
    check_nan_homography_rule(backend, padding, nan_at)



@pytest.mark.parametrize("padding", PADDINGS)
def test_the_benchmarks_plain_reference_is_the_reference_for_finite_coordinates(padding):
    # bench/ops_homography.py times nan_rule=False: the same values and gradients wherever no coordinate is NaN
    img = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    H = random_homographies(2, "projective")
    outs = []
    for nan_rule in (True, False):
        a, h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
        y = reference.homography_warp(a, h, (7, 4), padding, False, nan_rule=nan_rule)
        outs.append((y, *torch.autograd.grad(y, [a, h], torch.ones_like(y))))
    for x, z in zip(*outs):
        torch.testing.assert_close(x, z, atol=0, rtol=0)


@needs_ext
def test_half_precision_images_on_cpu_kernels():
    img = torch.randn(2, 3, 9, 8)
    H = random_homographies(2, "near", torch.float32)
    exact = reference.homography_warp(img.double(), H.double(), (7, 7))
    for dtype in (torch.float16, torch.bfloat16):
        low = img.to(dtype)
        y = warp("cpu", low, H, (7, 7), "zeros", False)
        assert y.dtype == dtype
        torch_err = (reference.homography_warp(low, H, (7, 7)).double() - exact).abs().max().item()
        assert (y.double() - exact).abs().max().item() <= 2 * torch_err + 1e-6


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_on_cpu_kernels(dtype):
    # the kernels accumulate in fp32 whatever the image dtype: on the same (rounded) image and output gradient (it
    # reaches the op in the image's dtype), the half-precision gradients are the fp32 ones up to the final rounding
    # of grad_img. 6 channels: more than one channel chunk.
    low = torch.randn(2, 6, 9, 8).to(dtype)
    H = random_homographies(2, "projective", torch.float32)
    gy = torch.randn(2, 6, 7, 7).to(dtype).float()
    grads = {}
    for name, img in (("low", low), ("fp32", low.float())):
        x, h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
        warp("cpu", x, h, (7, 7), "zeros", False).float().backward(gy)
        (h_alone,) = torch.autograd.grad(warp("cpu", img, h, (7, 7), "zeros", False).float(), [h], gy)
        grads[name] = (x.grad, h.grad, h_alone)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert grads["low"][0].dtype == dtype
    torch.testing.assert_close(grads["low"][0].float(), grads["fp32"][0], atol=tol, rtol=tol)
    torch.testing.assert_close(grads["low"][1], grads["fp32"][1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grads["low"][2], grads["fp32"][2], atol=1e-4, rtol=1e-5)


@needs_ext
def test_deterministic_mode_is_honoured_on_cpu():
    img = torch.randn(2, 3, 6, 6, requires_grad=True)
    H = random_homographies(2, "near", torch.float32).requires_grad_(True)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            with ops.use_backend("cpu"):
                y = ops.homography_warp(img, H)
            runs.append(torch.autograd.grad(y.square().sum(), [img, H]))
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---- registration ------------------------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_cpu_ops(channels_last):
    img = torch.randn(2, 3, 5, 6)
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    H = random_homographies(2, "near", torch.float32)
    img.requires_grad_(True)
    H.requires_grad_(True)
    torch.library.opcheck(torch.ops.reidfast.homography_warp_forward.default, (img, H, 4, 7, "border", True))
    y = torch.ops.reidfast.homography_warp_forward(img, H, 4, 7, "border", True)
    for mask in ([True, True], [False, True], [True, False]):
        torch.library.opcheck(torch.ops.reidfast.homography_warp_backward.default,
                              (torch.randn_like(y), img.detach(), H.detach(), "border", True, mask))


@needs_interp
def test_opcheck_triton_op():
    from reidfast.ops.triton import homography as triton_homography

    img = torch.randn(1, 2, 4, 5, requires_grad=True)
    H = random_homographies(1, "near", torch.float32).requires_grad_(True)
    torch.library.opcheck(triton_homography.homography_warp_forward_triton, (img, H, 3, 4, "zeros", False),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with pytest.raises(ValueError, match="img must have a positive height and width"):
        triton_homography.homography_warp_forward_triton(img.detach()[:, :, :0], H.detach(), 3, 4, "zeros", False)


@needs_ext
def test_compiles_fullgraph_aot_eager_and_matches_reference():
    torch._dynamo.reset()

    def f(img, p):
        H = ops.homography_from_params(p)
        return ops.homography_warp(img, H, (6, 5), "border", False) * 2.0

    img = torch.randn(2, 3, 7, 6, requires_grad=True)
    p = (0.1 * torch.randn(2, 8)).requires_grad_(True)
    with ops.use_backend("cpu"):
        y = torch.compile(f, fullgraph=True, backend="aot_eager")(img, p)
        y.square().sum().backward()
    got = (img.grad.clone(), p.grad.clone())
    img.grad = p.grad = None
    with ops.use_backend("reference"):
        y_ref = f(img, p)
        y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], img.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], p.grad, atol=1e-4, rtol=1e-4)


@needs_ext
def test_compiles_fullgraph_with_inductor():
    torch._dynamo.reset()

    def f(img, p):
        return ops.homography_warp(img, ops.homography_from_params(p), None, "zeros", True) + 1.0

    img, p = torch.randn(1, 2, 5, 4), 0.1 * torch.randn(1, 8)
    with ops.use_backend("cpu"):
        y = torch.compile(f, fullgraph=True)(img, p)
    with ops.use_backend("reference"):
        torch.testing.assert_close(y, f(img, p), atol=1e-5, rtol=1e-5)


# ---- geometry helpers --------------------------------------------------------------------------------------

def bilinear_at_pixel(img, u, v):
    """Bilinear value of img (C, H, W) at pixel coordinates (u = column, v = row), 0 outside: the sampling rule
    kornia's warp_perspective documents (dst(x, y) = src(M^-1 (x, y)) with zero padding)."""
    C, Hh, Ww = img.shape
    x0, y0 = math.floor(u), math.floor(v)
    out = torch.zeros(C, dtype=img.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0 + dx, y0 + dy
            w = (1 - abs(u - x)) * (1 - abs(v - y))
            if 0 <= x < Ww and 0 <= y < Hh:
                out += w * img[:, y, x]
    return out


@pytest.mark.parametrize("align", [True, False])
def test_warp_perspective_follows_kornias_definition(align):
    img = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    M = torch.tensor([[[0.9, 0.15, 1.2], [-0.1, 1.05, 0.7], [0.02, -0.015, 1.0]]], dtype=torch.float64)
    dsize = (5, 9)
    out = ops.warp_perspective(img, M, dsize, align_corners=align)
    Minv = torch.linalg.inv(M[0])
    for i in range(dsize[0]):
        for j in range(dsize[1]):
            s = Minv @ torch.tensor([j, i, 1.0], dtype=torch.float64)
            want = bilinear_at_pixel(img[0], (s[0] / s[2]).item(), (s[1] / s[2]).item())
            torch.testing.assert_close(out[0, :, i, j], want, atol=1e-10, rtol=1e-10)


def test_warp_perspective_translation_moves_pixels():
    img = torch.randn(1, 1, 5, 6)
    M = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])  # source (u, v) -> (u + 2, v + 1)
    out = ops.warp_perspective(img, M, (5, 6))
    torch.testing.assert_close(out[0, 0, 1:, 2:], img[0, 0, :-1, :-2], atol=1e-5, rtol=1e-5)
    assert out[0, 0, 0].abs().max() <= 1e-6 and out[0, 0, :, :2].abs().max() <= 1e-6  # float32 rounding at the edge


def test_warp_perspective_names_its_bad_arguments():
    img, M = torch.randn(1, 1, 5, 6), torch.eye(3)[None]
    # the same rule and error types as homography_warp's out_size: a wrong kind of value is a TypeError
    for dsize in (4, None, (4, 4, 4)):
        with pytest.raises(TypeError, match=r"warp_perspective: dsize must be a pair \(height, width\)"):
            ops.warp_perspective(img, M, dsize)
    for dsize in ((4.5, 6), (4.0, 6), (True, 6), ("4", 6)):
        with pytest.raises(TypeError, match="warp_perspective: dsize must hold two ints"):
            ops.warp_perspective(img, M, dsize)
    with pytest.raises(ValueError, match=r"warp_perspective: dsize must be positive, got \(0, 6\)"):
        ops.warp_perspective(img, M, (0, 6))
    with pytest.raises(TypeError, match="M must be a floating-point tensor, got torch.int64"):
        ops.warp_perspective(img, torch.eye(3, dtype=torch.int64)[None], (5, 6))
    with pytest.raises(TypeError, match="warp_perspective: M must be a torch.Tensor of shape \\(N, 3, 3\\), got list"):
        ops.warp_perspective(img, torch.eye(3)[None].tolist(), (5, 6))
    with pytest.raises(ValueError, match=r"M must have shape \(N, 3, 3\) = \(2, 3, 3\), got \(1, 3, 3\)"):
        ops.warp_perspective(img.expand(2, -1, -1, -1), M, (5, 6))
    with pytest.raises(TypeError, match="warp_perspective: img must be a torch.Tensor"):
        ops.warp_perspective(img.numpy(), M, (5, 6))
    with pytest.raises(TypeError, match="warp_perspective: img must be float32, float64, float16 or bfloat16"):
        ops.warp_perspective(img.to(torch.uint8), M, (5, 6))
    with pytest.raises(ValueError, match="warp_perspective: img must have a positive height and width"):
        ops.warp_perspective(torch.randn(1, 1, 0, 6), M, (5, 6))
    with pytest.raises(TypeError, match="warp_perspective: align_corners must be a bool, got NoneType"):
        ops.warp_perspective(img, M, (5, 6), align_corners=None)
    with pytest.raises(ValueError, match="warp_perspective: padding_mode must be one of"):
        ops.warp_perspective(img, M, (5, 6), padding_mode="wrap")
    with pytest.raises(ValueError, match="warp_perspective: M has no inverse .*singular"):
        ops.warp_perspective(img, torch.zeros(1, 3, 3), (5, 6))


@pytest.mark.parametrize("align", [True, False])
def test_pixel_normalized_conversions_round_trip_and_map_points(align):
    M = torch.tensor([[[1.1, 0.1, 2.0], [0.05, 0.9, -1.0], [0.01, 0.02, 1.0]]], dtype=torch.float64)
    in_size, out_size = (6, 9), (4, 7)
    H = ops.pixel_to_normalized(M, in_size, out_size, align)
    torch.testing.assert_close(ops.normalized_to_pixel(H, in_size, out_size, align), M)
    # An output pixel centre (j, i) must land, through H, on the normalized coordinate of M (j, i, 1).
    n_in = ops.normalization_matrix(*in_size, align, dtype=torch.float64)
    for i, j in [(0, 0), (3, 6), (2, 1)]:
        x = reference.base_coordinates(out_size[1], align, torch.float64)[j]
        y = reference.base_coordinates(out_size[0], align, torch.float64)[i]
        got = H[0] @ torch.stack([x, y, torch.tensor(1.0, dtype=torch.float64)])
        want = n_in @ (M[0] @ torch.tensor([j, i, 1.0], dtype=torch.float64))
        torch.testing.assert_close(got[:2] / got[2], want[:2] / want[2])


def test_geometry_helpers_reject_bad_matrices():
    H = random_homographies(3, "projective")
    singular = H.clone()
    singular[1, 2] = singular[1, 0] + singular[1, 1]  # the third row in the span of the others
    with pytest.raises(ValueError, match=r"homography_inverse: H is singular .* index\(es\) \[1\]"):
        ops.homography_inverse(singular)
    # singular to working precision: linalg.inv meets no exact zero and returns entries of 1e8 (float32)
    rank_two = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.6, 0.0], [0.0, 0.0, 1.0]])
    assert torch.linalg.inv_ex(rank_two).info == 0
    for bad in (rank_two, torch.eye(3).index_put((torch.tensor(0), torch.tensor(1)), torch.tensor(float("nan")))):
        with pytest.raises(ValueError, match=r"homography_inverse: H is singular .* index\(es\) \[2\]"):
            ops.homography_inverse(torch.stack([H[0].float(), H[1].float(), bad]))
    # far from singular, however differently its rows are scaled: no refusal
    scaled = torch.diag(torch.tensor([1e4, 1e-4, 1.0], dtype=torch.float64)) @ H
    torch.testing.assert_close(ops.homography_inverse(scaled) @ scaled, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    with pytest.raises(ValueError, match=r"homography_inverse: H must have shape \(\.\.\., 3, 3\), got \(3, 2, 3\)"):
        ops.homography_inverse(H[:, :2])
    with pytest.raises(TypeError, match="homography_adjugate: H must be a floating-point tensor"):
        ops.homography_adjugate(torch.eye(3, dtype=torch.long))
    with pytest.raises(ValueError, match="compose_warps: second must have shape"):
        ops.compose_warps(H, H[0, 0])


def test_sizes_accept_numpy_integers_everywhere():
    img, M = torch.randn(1, 1, 5, 6, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[None]
    assert ops.homography_warp(img, M, out_size=(np.int64(5), np.int32(7))).shape == (1, 1, 5, 7)
    assert ops.warp_perspective(img, M, dsize=(np.int64(6), 7)).shape == (1, 1, 6, 7)
    torch.testing.assert_close(ops.normalization_matrix(np.int64(4), np.int16(6), False),
                               ops.normalization_matrix(4, 6, False))
    M = M + 0.1 * torch.randn(3, 3, dtype=torch.float64)
    for convert in (ops.pixel_to_normalized, ops.normalized_to_pixel):
        torch.testing.assert_close(convert(M, (np.int64(5), np.int64(6)), (np.int32(4), 3), True),
                                   convert(M, (5, 6), (4, 3), True))
    assert ops.homography_warp(img, M, out_size=(torch.tensor(5), 7)).shape == (1, 1, 5, 7)  # a 0-d tensor's too
    for bad in (torch.tensor(True), torch.tensor([5]), np.True_):  # but not a bool, nor a tensor of one element
        with pytest.raises(TypeError, match="out_size must hold two ints"):
            ops.homography_warp(img, M, out_size=(bad, 7))


@pytest.mark.parametrize("call, exc, words", [
    (lambda M: ops.pixel_to_normalized(M.tolist(), (4, 5), (4, 5), True), TypeError,
     r"pixel_to_normalized: M must be a torch.Tensor of shape \(\.\.\., 3, 3\), got list"),
    (lambda M: ops.pixel_to_normalized(M.long(), (4, 5), (4, 5), True), TypeError,
     "pixel_to_normalized: M must be a floating-point tensor, got torch.int64"),
    (lambda M: ops.pixel_to_normalized(M[:2, :2], (4, 5), (4, 5), True), ValueError,
     r"pixel_to_normalized: M must have shape \(\.\.\., 3, 3\), got \(2, 2\)"),
    (lambda M: ops.normalized_to_pixel(M[:2], (4, 5), (4, 5), True), ValueError,
     r"normalized_to_pixel: H must have shape \(\.\.\., 3, 3\), got \(2, 3\)"),
    (lambda M: ops.pixel_to_normalized(M, (4, 5, 6), (4, 5), True), TypeError,
     r"pixel_to_normalized: in_size must be a pair \(height, width\)"),
    (lambda M: ops.normalized_to_pixel(M, (4, 5), 4, True), TypeError,
     r"normalized_to_pixel: out_size must be a pair \(height, width\)"),
    (lambda M: ops.pixel_to_normalized(M, (4.5, 5), (4, 5), True), TypeError,
     "pixel_to_normalized: in_size must hold two ints"),
    (lambda M: ops.normalized_to_pixel(M, (4, 5), (0, 5), True), ValueError,
     r"normalized_to_pixel: out_size must be positive, got \(0, 5\)"),
    (lambda M: ops.pixel_to_normalized(M, (4, 5), (4, 5), None), TypeError,
     "pixel_to_normalized: align_corners must be a bool, got NoneType"),
    (lambda M: ops.normalization_matrix(2.5, 3, True), TypeError,
     "normalization_matrix: height must be an int .*got 2.5"),
    (lambda M: ops.normalization_matrix(2, -3, True), ValueError, "normalization_matrix: width must be positive"),
    (lambda M: ops.normalization_matrix(2, 3, 1), TypeError, "normalization_matrix: align_corners must be a bool"),
    (lambda M: ops.normalization_matrix(2, 3, np.bool_(True)), TypeError,
     "normalization_matrix: align_corners must be a bool, got numpy.bool"),
    (lambda M: ops.normalization_matrix(5, 7, True, dtype=torch.int64), TypeError,
     "normalization_matrix: dtype must be a floating-point torch.dtype, got torch.int64"),
    (lambda M: ops.homography_warp(torch.randn(1, 1, 4, 4), M[None].float(), out_size=(4.5, 5)), TypeError,
     "homography_warp: out_size must hold two ints"),
    (lambda M: ops.compose_warps(M.expand(2, 3, 3), M.expand(3, 3, 3)), ValueError,
     r"compose_warps: the batch shapes of first \(2, 3, 3\) and second \(3, 3, 3\) do not broadcast"),
    (lambda M: ops.compose_warps(M.float(), M), TypeError,
     "compose_warps: first and second must have the same dtype, got torch.float32 and torch.float64"),
    (lambda M: ops.compose_warps(M, M.to("meta")), ValueError, "compose_warps: first is on cpu but second is on meta"),
    (lambda M: ops.homography_from_params([0.0] * 8), TypeError,
     "homography_from_params: p must be a torch.Tensor of shape \\(N, 8\\), got list"),
])
def test_geometry_helpers_name_their_bad_arguments(call, exc, words):
    with pytest.raises(exc, match=words):
        call(torch.eye(3, dtype=torch.float64))


def test_composition_broadcasts_one_warp_over_a_batch():
    H = random_homographies(3, "projective")
    torch.testing.assert_close(ops.compose_warps(H[0], H), H[0] @ H)
    torch.testing.assert_close(ops.compose_warps(H, H[:1]), H @ H[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pixel_normalized_conversions_take_half_precision(dtype):
    # the normalization matrices are inverted in closed form: linalg.inv has no half-precision kernels
    M = torch.tensor([[1.1, 0.1, 2.0], [0.05, 0.9, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    for convert in (ops.pixel_to_normalized, ops.normalized_to_pixel):
        got = convert(M.to(dtype), (6, 9), (4, 7), False)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), convert(M, (6, 9), (4, 7), False), atol=0.02, rtol=0.01)


def test_meta_tensors_give_shapes_through_the_helpers():
    # shape inference on the meta device, as homography_warp itself allows: the singularity check has no values
    H = torch.empty(2, 3, 3, device="meta")
    assert ops.homography_inverse(H).shape == (2, 3, 3)
    out = ops.warp_perspective(torch.empty(2, 3, 6, 8, device="meta"), H, (5, 7))
    assert out.device.type == "meta" and out.shape == (2, 3, 5, 7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_inverse_takes_half_precision(dtype):
    # matrices are any floating-point (..., 3, 3): linalg.inv's refusal of half precision must not reach the user
    H = random_homographies(2, "near")
    h = H.to(dtype).requires_grad_(True)
    inverse = ops.homography_inverse(h)
    assert inverse.dtype == dtype
    torch.testing.assert_close(inverse.double(), torch.linalg.inv(H.to(dtype).double()), atol=0.02, rtol=0.01)
    inverse.sum().backward()
    assert h.grad.dtype == dtype and torch.isfinite(h.grad).all()
    with pytest.raises(ValueError, match="H is singular"):
        ops.homography_inverse(torch.zeros(3, 3, dtype=dtype))


def test_params_inverse_and_composition():
    p = torch.zeros(3, 8)
    torch.testing.assert_close(ops.homography_from_params(p), torch.eye(3).expand(3, 3, 3))
    q = torch.arange(8.0).unsqueeze(0) / 10
    assert ops.homography_from_params(q)[0, 0, 2] == q[0, 2] and ops.homography_from_params(q)[0, 2, 2] == 1
    H = random_homographies(3, "projective")
    eye = torch.eye(3, dtype=H.dtype).expand(3, 3, 3)
    torch.testing.assert_close(ops.compose_warps(H, ops.homography_inverse(H)), eye)
    # The adjugate is det(H) H^-1, and differentiable.
    det = torch.linalg.det(H)[:, None, None]
    torch.testing.assert_close(ops.homography_adjugate(H), det * torch.linalg.inv(H))
    torch.testing.assert_close(ops.compose_warps(H, ops.homography_adjugate(H)), det * eye)
    assert torch.autograd.gradcheck(ops.homography_adjugate, (H.clone().requires_grad_(True),))
    # Warping by exact pixel maps twice equals warping once by the composition. A mirror and a translation do not
    # commute: the other order gives another image, so the test sees the order.
    a = torch.tensor([[-1.0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64).expand(1, 3, 3)  # mirror in x
    b = torch.tensor([[1.0, 0, 0.25], [0, 1, -0.5], [0, 0, 1]], dtype=torch.float64).expand(1, 3, 3)  # 1 px x, y
    img = torch.randn(1, 2, 4, 8, dtype=torch.float64)
    twice = ops.homography_warp(ops.homography_warp(img, a), b)
    once = ops.homography_warp(img, ops.compose_warps(a, b))
    inside = (..., slice(1, None), slice(None, -1))  # where b's translation stays inside the image
    torch.testing.assert_close(twice[inside], once[inside])
    other_order = ops.homography_warp(img, ops.compose_warps(b, a))
    assert not torch.allclose(other_order[inside], once[inside])


# ---- errors a user sees -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: (torch.randn(2, 3, 4), torch.eye(3).expand(2, 3, 3), {}), ValueError, "img must be 4-D"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 2, 3), {}), ValueError, r"H must have shape \(N, 3, 3\)"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(3, 3, 3), {}), ValueError, r"= \(2, 3, 3\), got \(3, 3, 3\)"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3), {}), ValueError, "H must have shape"),
        (lambda: (torch.randint(0, 3, (2, 3, 4, 4)), torch.eye(3).expand(2, 3, 3), {}), TypeError, "img must be float"),
        (lambda: (torch.randn(2, 3, 0, 4), torch.eye(3).expand(2, 3, 3), {"out_size": (4, 4)}), ValueError, "img must have a positive height and width"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3, dtype=torch.long).expand(2, 3, 3), {}), TypeError, "H must be a floating"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"padding_mode": "wrap"}), ValueError, "padding_mode must be one of"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"out_size": (0, 4)}), ValueError, "out_size must be positive"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"out_size": (4, -1)}), ValueError, "out_size must be positive"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"out_size": 4}), TypeError, "out_size must be None or a pair"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"out_size": (4.0, 4)}), TypeError, "out_size must hold two ints"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3).expand(2, 3, 3), {"align_corners": "yes"}), TypeError, "align_corners must be a bool"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.eye(3, device="meta").expand(2, 3, 3), {}), ValueError, "H is on meta but img is on cpu"),
    ],
)
def test_bad_input_gives_clear_error(make, exc, words):
    img, H, kw = make()
    with pytest.raises(exc, match=words):
        ops.homography_warp(img, H, **kw)


@needs_ext
def test_cpp_op_checks_its_own_arguments():
    img, H = torch.randn(2, 3, 4, 4), torch.eye(3).repeat(2, 1, 1)
    with pytest.raises(ValueError, match="H must have shape"):
        torch.ops.reidfast.homography_warp_forward(img, H[:1], 4, 4, "zeros", False)
    with pytest.raises(TypeError, match="H must be Float"):
        torch.ops.reidfast.homography_warp_forward(img, H.double(), 4, 4, "zeros", False)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        torch.ops.reidfast.homography_warp_forward(img, H, 4, 4, "wrap", False)
    with pytest.raises(ValueError, match="out_size must be positive"):
        torch.ops.reidfast.homography_warp_forward(img, H, 0, 4, "zeros", False)
    empty = torch.randn(2, 3, 4, 0)
    with pytest.raises(ValueError, match="img must have a positive height and width"):
        torch.ops.reidfast.homography_warp_forward(empty, H, 4, 4, "zeros", False)
    with pytest.raises(ValueError, match="img must have a positive height and width"):
        torch.ops.reidfast.homography_warp_backward(torch.randn(2, 3, 4, 4), empty, H, "zeros", False, [True, True])


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only refusal")
def test_unavailable_backend_is_explained():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run homography_warp: the tensors are on cpu"):
        with ops.use_backend("cuda"):
            ops.homography_warp(torch.randn(1, 2, 3, 3), torch.eye(3).expand(1, 3, 3))


# ---- GPU ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, out_size, kind", [((16, 3, 256, 128), None, "near"),
                                                    ((3, 5, 37, 29), (41, 23), "projective"),
                                                    ((6, 4, 45, 23), (40, 20), "projective"),
                                                    ((2, 64, 64, 32), (32, 16), "projective"),
                                                    ((4, 1, 33, 17), (20, 40), "projective")])
def test_gpu_matches_reference_within_pytorch_same_dtype_error(backend, dtype, padding, channels_last, shape,
                                                               out_size, kind, monkeypatch):
    N = shape[0]
    img64 = torch.randn(shape, dtype=torch.float64, device="cuda")
    H = random_homographies(N, kind, torch.float32, "cuda")
    img = img64.to(dtype)
    if channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    a, h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
    y = warp(backend, a, h, out_size, padding, False)
    assert y.dtype == dtype
    # Exact: float64 everything on the same (rounded) image and the same float32 matrix.
    e_img, e_h = img.double().requires_grad_(True), H.double().requires_grad_(True)
    y64 = reference.homography_warp(e_img, e_h, out_size, padding, False)
    # PyTorch's own path in this dtype: the grid built from the float32 H, cast to the image dtype, grid_sample.
    t_img, t_h = img.clone().requires_grad_(True), H.clone().requires_grad_(True)
    grid = reference.homography_grid(t_h, tuple(y.shape[-2:]), False).to(dtype)
    y_torch = F.grid_sample(t_img, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    torch_err = (y_torch.double() - y64).abs().max().item()
    assert (y.double() - y64).abs().max().item() <= 2 * torch_err + 1e-5
    gy = torch.randn_like(y64)
    got = torch.autograd.grad(y, [a, h], gy.to(dtype))
    want = torch.autograd.grad(y64, [e_img, e_h], gy)
    torch_got = torch.autograd.grad(y_torch, [t_img, t_h], gy.to(dtype))
    # grad_H jumps where a point crosses a pixel boundary (the bilinear derivative is discontinuous there), so
    # float32 coordinates differ from exact ones at a few points; PyTorch's own same-dtype error measures that.
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for name, g, w, t in zip(["img", "H"], got, want, torch_got):
        scale = w.abs().max().item() + 1e-6
        err = (g.double() - w).abs().max().item()
        bound = 4 * (t.double() - w).abs().max().item() + tol * scale
        assert err <= bound, f"grad {name}: {err} > {bound} (PyTorch's own error {(t.double() - w).abs().max()})"
    # The gradient in H alone (SA-GAN's localization network behind a fixed image) takes its own kernel path.
    h_only = H.clone().requires_grad_(True)
    g_h_only = torch.autograd.grad(warp(backend, img, h_only, out_size, padding, False), h_only, gy.to(dtype))[0]
    torch.testing.assert_close(g_h_only, got[1], rtol=1e-5, atol=1e-5 * (got[1].abs().max().item() + 1e-6))
    if backend == "cuda":  # and at each forced count of output points per thread (csrc/cuda/homography.cu)
        for points in ("1", "2", "4"):
            monkeypatch.setenv("REIDFAST_HOMOGRAPHY_POINTS", points)
            g_forced = torch.autograd.grad(warp(backend, img, h_only, out_size, padding, False), h_only,
                                           gy.to(dtype))[0]
            torch.testing.assert_close(g_forced, got[1], rtol=1e-5, atol=1e-5 * (got[1].abs().max().item() + 1e-6))
        monkeypatch.setenv("REIDFAST_HOMOGRAPHY_POINTS", "3")
        with pytest.raises(ValueError, match="REIDFAST_HOMOGRAPHY_POINTS must be 1, 2 or 4"):
            torch.autograd.grad(warp(backend, img, h_only, out_size, padding, False), h_only, gy.to(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_deterministic_mode(backend):
    img = torch.randn(2, 3, 16, 8, device="cuda", requires_grad=True)
    H = random_homographies(2, "near", torch.float32, "cuda").requires_grad_(True)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        # grad_H alone is deterministic: allowed, and bitwise reproducible.
        runs = []
        for _ in range(2):
            y = warp(backend, img.detach(), H, None, "zeros", False)
            runs.append(torch.autograd.grad(y.square().sum(), [H])[0])
        assert torch.equal(runs[0], runs[1])
        with pytest.raises(RuntimeError, match="deterministic"):
            y = warp(backend, img, H, None, "zeros", False)
            torch.autograd.grad(y.sum(), [img])
    finally:
        torch.use_deterministic_algorithms(prev)



@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_nan_in_H_rule(backend, padding, channels_last):
    check_nan_homography_rule(backend, padding, (2, 2), device="cuda", channels_last=channels_last)
    check_nan_homography_rule(backend, padding, (0, 0), device="cuda", channels_last=channels_last)

@pytest.mark.gpu
def test_gpu_auto_picks_cuda_kernels():
    assert ops.resolve_backend("homography_warp", torch.device("cuda")) == "cuda"


@pytest.mark.gpu
def test_gpu_compiles_with_inductor():
    torch._dynamo.reset()
    img = torch.randn(4, 3, 32, 16, device="cuda", requires_grad=True)
    p = (0.05 * torch.randn(4, 8, device="cuda")).requires_grad_(True)

    def f(img, p):
        return ops.homography_warp(img, ops.homography_from_params(p))

    y = torch.compile(f, fullgraph=True)(img, p)
    with ops.use_backend("reference"):
        torch.testing.assert_close(y, f(img, p), atol=1e-5, rtol=1e-5)
