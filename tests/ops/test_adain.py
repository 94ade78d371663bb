"""adain: every backend against reference.adain, values and gradients; registration; errors."""
import pytest
import torch

from reidfast import ops
from reidfast.ops import _backend, _extension, reference

HAS_CUDA = torch.cuda.is_available()
needs_ext = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="reidfast._C not built")

# (N, C, H, W): odd H*W (no block multiple), N*C == 1, one big row, DG-Net-like.
SHAPES = [(2, 3, 5, 7), (1, 1, 9, 11), (1, 2, 64, 80), (2, 8, 16, 8)]
ACTIVATIONS = ["none", "relu", "lrelu"]


def cpu_backends():
    out = []
    if _extension.has_cpu_kernels():
        out.append("cpu")
    if _backend.TRITON_ON_CPU:
        out.append("triton")
    return out


def make_inputs(shape, dtype, device="cpu", channels_last=False, residual=True, requires_grad=False):
    N, C = shape[:2]
    x = torch.randn(shape, dtype=torch.float64).mul_(2.0).add_(0.5)
    w = torch.randn(N, C, dtype=torch.float64) + 1.0
    b = torch.randn(N, C, dtype=torch.float64)
    r = torch.randn(shape, dtype=torch.float64) if residual else None
    acc = reference.opmath_dtype(dtype)
    tensors = [x.to(device, dtype), w.to(device, acc), b.to(device, acc), None if r is None else r.to(device, dtype)]
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
        if tensors[3] is not None:
            tensors[3] = tensors[3].contiguous(memory_format=torch.channels_last)
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def run(backend, tensors, activation):
    x, w, b, r = tensors
    with ops.use_backend(backend):
        return ops.adain(x, w, b, r, activation=activation, negative_slope=0.2)


def tolerances(dtype):
    return {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5)}[dtype]


# Interpreted Triton is slow: it gets the small shapes only.
BACKEND_SHAPES = [(b, s) for b in cpu_backends() for s in SHAPES if b != "triton" or s[2] * s[3] <= 1024]


@pytest.mark.parametrize("backend, shape", BACKEND_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_backward_match_reference(backend, shape, activation, dtype, channels_last):
    assert_matches_reference(backend, shape, activation, dtype, channels_last)


def assert_matches_reference(backend, shape, activation, dtype, channels_last, device="cpu"):
    """Values and gradients of the backend against the reference on the same inputs, float32 or float64."""
    tensors = make_inputs(shape, dtype, device=device, channels_last=channels_last, requires_grad=True)
    ref_tensors = [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
    y = run(backend, tensors, activation)
    y_ref = run("reference", ref_tensors, activation)
    atol, rtol = tolerances(dtype)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    if channels_last and shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last), "output must keep channels_last"
    grad = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, [t for t in tensors if t is not None], grad)
    want = torch.autograd.grad(y_ref, [t for t in ref_tensors if t is not None], grad)
    for name, g, w in zip(["x", "weight", "bias", "residual"], got, want):
        torch.testing.assert_close(g, w, atol=atol * 10, rtol=rtol * 10, msg=lambda m, n=name: f"grad {n}: {m}")


@needs_ext
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_cpu_kernels(activation, channels_last):
    tensors = make_inputs((2, 3, 4, 5), torch.float64, channels_last=channels_last, requires_grad=True)

    def f(x, w, b, r):
        with ops.use_backend("cpu"):
            return ops.adain(x, w, b, r, activation=activation)

    assert torch.autograd.gradcheck(f, tuple(tensors), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", cpu_backends())
def test_double_backward_is_a_clear_error(backend):
    # The kernels' autograd differentiates once; a gradient of the gradient must say so, not return a disconnected
    # zero (C++) or fail in torch's words about a formula never registered (Triton).
    x, w, b, _ = make_inputs((2, 3, 4, 5), torch.float64, requires_grad=True)
    with ops.use_backend(backend):
        y = ops.adain(x, w, b, activation="lrelu")
    (g_w,) = torch.autograd.grad(y.square().sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="adain: double backward"):
        g_w.sum().backward()


@pytest.mark.skipif(not _backend.TRITON_ON_CPU, reason=_backend.TRITON_ON_CPU_WHY_NOT)
def test_gradcheck_triton_kernels():
    tensors = make_inputs((1, 2, 3, 5), torch.float64, requires_grad=True)

    def f(x, w, b, r):
        with ops.use_backend("triton"):
            return ops.adain(x, w, b, r, activation="lrelu")

    assert torch.autograd.gradcheck(f, tuple(tensors), eps=1e-6, atol=1e-5)


def test_large_row_statistics_are_stable():
    # A large offset with a small spread: naive sum-of-squares variance would lose every digit here.
    if not _extension.has_cpu_kernels():
        pytest.skip("reidfast._C not built")
    x = (torch.randn(1, 2, 300, 301) * 0.01 + 1000.0).float()
    w, b = torch.ones(1, 2), torch.zeros(1, 2)
    with ops.use_backend("cpu"):
        y = ops.adain(x, w, b)
    exact = reference.adain(x.double(), w.double(), b.double())
    torch_fp32_error = (reference.adain(x, w, b).double() - exact).abs().max().item()
    assert (y.double() - exact).abs().max().item() <= 2 * torch_fp32_error + 1e-4


@needs_ext
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_cpu_op(residual, channels_last):
    x, w, b, r = make_inputs((2, 3, 4, 5), torch.float32, channels_last=channels_last, residual=residual,
                             requires_grad=True)
    torch.library.opcheck(torch.ops.reidfast.adain_forward.default, (x, w, b, r, "lrelu", 0.2, 1e-5))
    y, mean, rstd = torch.ops.reidfast.adain_forward(x, w, b, r, "lrelu", 0.2, 1e-5)
    gy = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.reidfast.adain_backward.default,
        (gy, x.detach(), w.detach(), b.detach(), mean, rstd, "lrelu", 0.2),
    )


@pytest.mark.skipif(not _backend.TRITON_ON_CPU, reason=_backend.TRITON_ON_CPU_WHY_NOT)
def test_opcheck_triton_op():
    from reidfast.ops.triton import adain as triton_adain

    x, w, b, r = make_inputs((1, 2, 3, 4), torch.float32, requires_grad=True)
    torch.library.opcheck(triton_adain.adain_forward_triton, (x, w, b, r, "relu", 0.2, 1e-5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_ext
def test_resblock_compiles_fullgraph_and_matches_reference():
    from reidfast.nn import AdaINResBlock

    block = AdaINResBlock(4)
    x = torch.randn(2, 4, 6, 5)
    style = torch.randn(2, 16)
    with ops.use_backend("cpu"):
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        y = compiled(x, style)
        y.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    with ops.use_backend("reference"):
        y_ref = block(x, style)
        y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, [p.grad for p in block.parameters()]):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@needs_ext
def test_resblock_compiles_with_inductor():
    from reidfast.nn import AdaINResBlock

    block = AdaINResBlock(3)
    x, style = torch.randn(1, 3, 4, 4), torch.randn(1, 12)
    with ops.use_backend("cpu"):
        y = torch.compile(block, fullgraph=True)(x, style)
    with ops.use_backend("reference"):
        torch.testing.assert_close(y, block(x, style), atol=1e-5, rtol=1e-5)


@needs_ext
def test_a_compiled_call_compiles_once_from_a_cold_backend_cache():
    # The backend choice is cached per (op, device, setting) in eager mode; traced, that cache must not become a
    # guard, or the first compiled call of an op would compile its graph twice.
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, w, b, _ = make_inputs((2, 3, 4, 5), torch.float32)
    fn = torch.compile(lambda x, w, b: ops.adain(x, w, b, activation="relu"), backend=counting, fullgraph=True)
    torch._dynamo.reset()
    _backend._RESOLVED.clear()
    try:
        with ops.use_backend("cpu"):
            y1, y2 = fn(x, w, b), fn(x, w, b)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    torch.testing.assert_close(y1, y2)


def test_empty_spatial_size_is_an_error_free_no_op():
    x = torch.randn(2, 3, 0, 4)
    for backend in ["reference"] + (["cpu"] if _extension.has_cpu_kernels() else []):
        with ops.use_backend(backend):
            assert ops.adain(x, torch.ones(2, 3), torch.zeros(2, 3)).shape == x.shape


# ---- errors a user sees -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: (torch.randn(2, 3, 4), torch.ones(2, 3), torch.zeros(2, 3), {}), ValueError, "x must be 4-D"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 4), torch.zeros(2, 3), {}), ValueError, "weight must have shape"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(3, 3), {}), ValueError, "bias must have shape"),
        (lambda: (torch.randint(0, 3, (2, 3, 4, 4)), torch.ones(2, 3), torch.zeros(2, 3), {}), TypeError, "x must be float"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"activation": "gelu"}), ValueError, "activation must be one of"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"residual": torch.randn(2, 3, 4, 5)}), ValueError, "residual must have the shape"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"residual": torch.randn(2, 3, 4, 4).double()}), TypeError, "residual must have x's dtype"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"eps": -1.0}), ValueError, "eps must be >= 0"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"eps": "1e-5"}), TypeError, "eps must be a real number, got str"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"negative_slope": None}), TypeError, "negative_slope must be a real number"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"negative_slope": float("nan")}), ValueError, "negative_slope must be finite, got nan"),
        (lambda: (torch.randn(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2, 3), {"negative_slope": -float("inf")}), ValueError, "negative_slope must be finite, got -inf"),
    ],
)
def test_bad_input_gives_clear_error(make, exc, words):
    x, w, b, kw = make()
    with pytest.raises(exc, match=words):
        ops.adain(x, w, b, **kw)


@needs_ext
def test_cpp_op_checks_its_own_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        torch.ops.reidfast.adain_forward(x, torch.ones(3, 3), torch.zeros(2, 3), None, "none", 0.2, 1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        torch.ops.reidfast.adain_forward(x, torch.ones(2, 3), torch.zeros(2, 3), None, "tanh", 0.2, 1e-5)
    with pytest.raises(TypeError, match="weight must be Float"):
        torch.ops.reidfast.adain_forward(x, torch.ones(2, 3).double(), torch.zeros(2, 3), None, "none", 0.2, 1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only refusal")
def test_device_mismatch_and_unavailable_backend_are_explained():
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        ops.adain(x, torch.ones(1, 2, device="meta"), torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run adain: the tensors are on cpu"):
        with ops.use_backend("cuda"):
            ops.adain(x, torch.ones(1, 2), torch.zeros(1, 2))


def assert_within_pytorch_same_dtype_error(backend, shape, dtype, device, channels_last, cast_slack=0.0):
    """The backend's values and gradients against the float64 reference within twice PyTorch's own error in `dtype`
    (the reference, which computes in float32, on the same low-precision inputs: its error is the rounding of each
    result to `dtype`) plus a float32-accumulation slack (the order of summation differs from PyTorch's) and
    `cast_slack` times the result's magnitude. Computing in the low-precision dtype, as the contract forbids, fails
    it: in float16 the weight's gradient then errs by about 6e-4 of its magnitude, against a bound of 1e-4."""
    tensors = make_inputs(shape, dtype, device=device, channels_last=channels_last, requires_grad=True)
    exact = [None if t is None else t.detach().double().requires_grad_(True) for t in tensors]
    same_dtype = [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
    y = run(backend, tensors, "lrelu")
    assert y.dtype == dtype
    y64 = run("reference", exact, "lrelu")
    y_torch = run("reference", same_dtype, "lrelu")
    bound = 2 * (y_torch.double() - y64).abs().max().item() + 5e-5 + cast_slack * y64.abs().max().item()
    assert (y.double() - y64).abs().max().item() <= bound
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [t for t in tensors if t is not None], gy)
    want = torch.autograd.grad(y64, [t for t in exact if t is not None], gy.double())
    torch_got = torch.autograd.grad(y_torch, [t for t in same_dtype if t is not None], gy)
    for name, g, w, t in zip(["x", "weight", "bias", "residual"], got, want, torch_got):
        scale = w.abs().max().item() + 1e-6
        bound = 2 * (t.double() - w).abs().max().item() + (1e-4 + cast_slack) * scale
        err = (g.double() - w).abs().max().item()
        assert err <= bound, f"grad {name}: error {err:.3g} over the bound {bound:.3g} (magnitude {scale:.3g})"


# The CPU kernel's half-precision paths, and the Triton kernels' under the interpreter (float32 is tested above).
# The interpreter (numpy) casts float32 to bfloat16 by truncation where a GPU rounds to nearest (triton 3.8: 1 +
# 2^-8 + 2^-12 becomes 1, not 1 + 2^-7): its bfloat16 outputs may sit up to a unit in the last place from the
# reference where rounding leaves half of one, so they get half a unit of the largest output (2^-8 of its magnitude)
# of slack; the GPU test below holds the Triton kernels to the strict bound.
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 16, 16)])
def test_half_precision_matches_reference_within_pytorch_same_dtype_error(backend, dtype, channels_last, shape):
    torch.manual_seed(0)
    interpreter_cast = backend == "triton" and dtype == torch.bfloat16
    assert_within_pytorch_same_dtype_error(backend, shape, dtype, "cpu", channels_last,
                                           cast_slack=2.0 ** -8 if interpreter_cast else 0.0)


# ---- GPU ---------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(8, 128, 64, 32), (3, 5, 7, 9), (1, 1, 301, 299)])
def test_gpu_matches_reference_within_pytorch_same_dtype_error(backend, dtype, channels_last, shape):
    assert_within_pytorch_same_dtype_error(backend, shape, dtype, "cuda", channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("slices", ["auto", "2", "3", "7", "60000"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(8, 128, 64, 32), (3, 5, 7, 9), (2, 40, 9, 7), (1, 33, 1, 5)])
def test_gpu_channels_last_in_slices(slices, dtype, shape, monkeypatch):
    # the channels_last kernels with each channel's H*W cut in slices (csrc/cuda/adain.cu: partial sums, then the
    # element pass), against the reference; more slices than elements (60000 > 5) leaves one element per slice
    monkeypatch.setenv("REIDFAST_ADAIN_CL_SLICES", slices)
    if dtype == torch.float64:
        assert_matches_reference("cuda", shape, "lrelu", dtype, True, device="cuda")
    else:
        assert_within_pytorch_same_dtype_error("cuda", shape, dtype, "cuda", True)


@pytest.mark.gpu
@pytest.mark.parametrize("value", ["0", "-3", "two", "70000", "4x"])
def test_gpu_channels_last_slices_setting_is_checked(value, monkeypatch):
    monkeypatch.setenv("REIDFAST_ADAIN_CL_SLICES", value)
    with pytest.raises(ValueError, match="REIDFAST_ADAIN_CL_SLICES must be 'auto' or an integer from 1 to 65535"):
        run("cuda", make_inputs((2, 4, 3, 3), torch.float32, device="cuda", channels_last=True), "lrelu")


@pytest.mark.gpu
def test_gpu_auto_picks_cuda_kernels():
    assert ops.resolve_backend("adain", torch.device("cuda")) == "cuda"
