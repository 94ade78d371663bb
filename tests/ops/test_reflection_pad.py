"""reidfast.ops.reflection_pad2d / reidfast.nn.PaddedConv2d against reference.reflection_pad2d (F.pad, reflect):
values and derivatives of every order, under torch.func.grad as the penalties take them, compiled; and the reason
the op exists, checked: the compiled backward calls the opaque backward op instead of ATen's decomposable one."""
import pytest
import torch
import torch.nn.functional as F
from torch._functorch.aot_autograd import aot_function, make_boxed_func

from reidfast.nn import PaddedConv2d, PenaltyConv2d
from reidfast.ops import explain_backend, reference, reflection_pad2d, resolve_backend, use_backend

# (input shape, padding (left, right, top, bottom)): symmetric, lopsided, zero on a side, the largest a side
# allows (size - 1), a 1-pixel-wide map padded only in height
CASES = [
    ((2, 3, 6, 5), (1, 1, 1, 1)),
    ((1, 4, 7, 9), (2, 0, 3, 1)),
    ((3, 2, 4, 4), (3, 3, 3, 3)),
    ((2, 2, 5, 1), (0, 0, 2, 2)),
]


def _input(case, dtype=torch.float64, channels_last=False):
    shape, _ = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _penalty(pad, x, padding, weight):
    """A penalty on the input gradient of a small network (pad, 3x3 convolution, LeakyReLU, mean), the input
    gradient by torch.func.grad as reidfast.train.penalties.input_gradient takes it, plus the score: derivatives of
    both orders go through the pad."""
    def score(inp):
        return F.leaky_relu(F.conv2d(pad(inp, padding), weight), 0.2).mean((1, 2, 3))

    grad = torch.func.grad(lambda inp: score(inp).sum())(x)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean() + score(x).sum()


def _weight(x):
    return torch.randn(3, x.shape[1], 3, 3, dtype=x.dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_first_derivatives_match_the_reference(case, channels_last, dtype):
    x = _input(case, dtype, channels_last)
    padding = case[1]
    out, ref = reflection_pad2d(x, padding), reference.reflection_pad2d(x, padding)
    assert out.dtype == dtype and torch.equal(out, ref)
    grad_out = torch.randn_like(ref)
    got, = torch.autograd.grad(out, x, grad_out)
    want, = torch.autograd.grad(ref, x, grad_out)
    torch.testing.assert_close(got, want)
    assert got.shape == x.shape and got.dtype == dtype


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck_in_float64(case):
    x = _input(case)
    fn = lambda x: reflection_pad2d(x, case[1])  # noqa: E731
    # forward-mode derivatives too (torch.func.jvp, jacfwd; forward over reverse by the hessians below)
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("case", CASES[:2])
def test_torch_func_transforms_give_the_references_results(case):
    # what torch.func does with F.pad works the same on the op: a per-sample call under vmap (its backward op has a
    # vmap rule), Jacobians by reverse and forward mode, Hessians, per-sample gradients of an input-gradient penalty
    x, padding = _input(case).detach(), case[1]
    weight = _weight(x)
    ours = lambda x: reflection_pad2d(x, padding)  # noqa: E731
    ref = lambda x: reference.reflection_pad2d(x, padding)  # noqa: E731
    per_sample = x.unsqueeze(1)
    torch.testing.assert_close(torch.func.vmap(ours)(per_sample), torch.func.vmap(ref)(per_sample))
    one = x[:1]
    for jacobian in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jacobian(ours)(one), jacobian(ref)(one))

    def energy(pad):
        return lambda x: F.leaky_relu(F.conv2d(pad(x), weight), 0.2).square().sum()
    torch.testing.assert_close(torch.func.hessian(energy(ours))(one), torch.func.hessian(energy(ref))(one))

    def penalty_gradients(pad):
        penalty = lambda w, sample: _penalty(pad, sample, padding, w)  # noqa: E731
        return torch.func.vmap(torch.func.grad(penalty), (None, 0))(weight, per_sample)
    torch.testing.assert_close(penalty_gradients(reflection_pad2d), penalty_gradients(reference.reflection_pad2d))


@pytest.mark.parametrize("case", CASES[:2])
def test_a_penalty_on_the_input_gradient_gets_autograds_gradients(case):
    x = _input(case)
    w = _weight(x).requires_grad_()
    got = torch.autograd.grad(_penalty(reflection_pad2d, x, case[1], w), (x, w))
    want = torch.autograd.grad(_penalty(reference.reflection_pad2d, x, case[1], w), (x, w))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_of_the_backward_op(channels_last):
    grad_out = torch.randn(2, 3, 8, 7)
    if channels_last:
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.reidfast.reflection_pad2d_backward, (grad_out, 5, 4, [1, 2, 2, 1]))


def _recorded_graphs(fn, *args):
    """The forward and backward graphs AOTAutograd makes of fn(*args), as text."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm)

    compiled = aot_function(fn, fw_compiler=record, bw_compiler=record)
    out = compiled(*args)
    out.backward()
    return graphs


@pytest.mark.parametrize("pad, opaque", [(reflection_pad2d, True), (reference.reflection_pad2d, False)])
def test_the_traced_backward_calls_the_opaque_op(pad, opaque):
    # what Inductor receives: with the reference it decomposes ATen's backward into masked gathers; here it gets
    # one call of the custom op, and the penalty's second derivative is the pad itself
    x = _input(CASES[0], torch.float32)
    w = _weight(x).requires_grad_()
    forward, backward = _recorded_graphs(lambda x, w: _penalty(pad, x, CASES[0][1], w), x, w)
    graphs = forward + backward
    assert ("reidfast.reflection_pad2d_backward" in graphs) == opaque
    assert ("aten.reflection_pad2d_backward" in graphs) != opaque


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_penalty_gradients_match_eager(backend):
    x = _input(CASES[1], torch.float32)
    w = _weight(x).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: _penalty(reflection_pad2d, x, CASES[1][1], w), backend=backend,
                             fullgraph=True)
    got = torch.autograd.grad(compiled(x, w), (x, w))
    want = torch.autograd.grad(_penalty(reference.reflection_pad2d, x, CASES[1][1], w), (x, w))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _runs_the_op(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__.startswith("_ReflectionPad")


def test_deterministic_mode_and_the_reference_setting_run_the_reference():
    # ATen's CUDA kernel of the backward accumulates with atomics: deterministic mode takes F.pad's own path
    x = _input(CASES[0], torch.float32)
    assert _runs_the_op(reflection_pad2d(x, CASES[0][1]))
    with use_backend("reference"):
        assert resolve_backend("reflection_pad2d", x.device) == "reference"
        assert not _runs_the_op(reflection_pad2d(x, CASES[0][1]))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        y = reflection_pad2d(x, CASES[0][1])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert not _runs_the_op(y) and torch.equal(y, reference.reflection_pad2d(x, CASES[0][1]))


def test_explain_backend_names_the_aten_kernels():
    reasons = explain_backend("reflection_pad2d", "cpu")
    assert [b for b, why in reasons if not why] == ["torch", "reference"]


def test_bad_padding_is_refused_as_f_pad_refuses_it():
    x = _input(CASES[0], torch.float32)
    with pytest.raises(ValueError, match="reflection_pad2d: padding must be 4 ints"):
        reflection_pad2d(x, (1, 1))
    # a float is refused, as F.pad refuses it, not truncated
    with pytest.raises(TypeError):
        F.pad(x, (1.5, 1, 1, 1), mode="reflect")
    with pytest.raises(TypeError, match="reflection_pad2d: padding must hold ints"):
        reflection_pad2d(x, (1.5, 1, 1, 1))
    with pytest.raises(TypeError, match=r"reflection_pad2d: padding must be a tuple of 4 ints .*got int 1"):
        reflection_pad2d(x, 1)
    with pytest.raises(TypeError, match="reflection_pad2d: x must be a torch.Tensor, got ndarray"):
        reflection_pad2d(x.detach().numpy(), (1, 1, 1, 1))
    # a pad as large as the side: F.pad's own message, for the op as for the reference
    for pad in (reflection_pad2d, reference.reflection_pad2d):
        with pytest.raises(RuntimeError, match="Padding size should be less than"):
            pad(x, (5, 5, 0, 0))
    # other ranks go to F.pad, which handles them
    x3 = torch.randn(2, 3, 6)
    torch.testing.assert_close(reflection_pad2d(x3, (2, 1)), F.pad(x3, (2, 1), mode="reflect"))


@pytest.mark.parametrize("cls", [PaddedConv2d, PenaltyConv2d])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_padded_convolutions_are_drop_in_nn_conv2d(cls, padding_mode):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), padding_mode=padding_mode).double()
    conv = cls(3, 4, 3, stride=2, padding=(1, 2), padding_mode=padding_mode).double()
    conv.load_state_dict(ref.state_dict())
    x = _input(((2, 3, 7, 6), None))
    out, want = conv(x), ref(x)
    torch.testing.assert_close(out, want)
    grad_out = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(out, [x, *conv.parameters()], grad_out),
                               torch.autograd.grad(want, [x, *ref.parameters()], grad_out))
    assert _runs_the_op(conv._padded(x)[0]) == (padding_mode == "reflect")


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_penalty_gradients_match_eager_on_cuda(channels_last):
    x = _input(CASES[1], torch.float32, channels_last).detach().cuda().requires_grad_()  # .cuda() keeps the layout
    w = _weight(x).cuda().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: _penalty(reflection_pad2d, x, CASES[1][1], w), fullgraph=True)
    got = torch.autograd.grad(compiled(x, w), (x, w))
    want = torch.autograd.grad(_penalty(reference.reflection_pad2d, x, CASES[1][1], w), (x, w))
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)  # TF32 may differ between the two
