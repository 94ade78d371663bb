"""reidfast.ops.conv2d / reidfast.nn.PenaltyConv2d against reference.conv2d (F.conv2d): values and derivatives
of every order, under torch.func.grad as the penalties take them, compiled, and under autocast; and the reason the
op exists, checked: its second derivative runs no convolution with the batch in the channel dimension."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reidfast.nn import PenaltyConv2d
from reidfast.ops import conv2d, explain_backend, reference, resolve_backend, use_backend

# (x shape, weight shape, stride, padding, dilation, groups): strided with an input size a strided convolution
# reaches from two sizes (9), 1x1, dilated, grouped, a 1x1 map
CASES = [
    ((2, 3, 9, 7), (5, 3, 4, 4), 2, 1, 1, 1),
    ((3, 4, 6, 5), (6, 4, 1, 1), 1, 0, 1, 1),
    ((2, 4, 8, 8), (4, 4, 3, 3), 1, 2, 2, 1),
    ((2, 6, 7, 6), (4, 3, 3, 3), (2, 1), (1, 0), 1, 2),
    ((2, 5, 1, 1), (3, 5, 1, 1), 1, 0, 1, 1),
]


def _inputs(case, dtype=torch.float64, channels_last=False):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(x_shape, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=g, dtype=dtype)
    b = torch.randn(w_shape[0], generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, w, b)], dict(stride=stride, padding=padding, dilation=dilation,
                                                         groups=groups)


def _penalty(conv, x, w, b, kw):
    """A WGAN-GP-like penalty of a two-layer network (the case's convolution, LeakyReLU, a fixed 1x1 convolution to
    one channel), with the input gradient by torch.func.grad as reidfast.train.penalties.input_gradient takes it, plus
    the score, so that derivatives of both orders reach the weights."""
    head = torch.linspace(-1.0, 1.0, w.shape[0], dtype=w.dtype, device=w.device).view(1, -1, 1, 1)  # constant

    def score(inp):
        h = F.leaky_relu(conv(inp, w, b, **kw), 0.2)
        return conv(h, head, None).mean((1, 2, 3))

    grad = torch.func.grad(lambda inp: score(inp).sum())(x)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean() + score(x).sum()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_first_derivatives_match_the_reference(case, channels_last):
    (x, w, b), kw = _inputs(case, channels_last=channels_last)
    out = conv2d(x, w, b, **kw)
    ref = reference.conv2d(x, w, b, **kw)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x, w, b), grad_out),
                               torch.autograd.grad(ref, (x, w, b), grad_out))


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck_in_float64(case):
    (x, w, b), kw = _inputs(case)
    fn = lambda x, w, b: conv2d(x, w, b, **kw)  # noqa: E731
    # forward-mode derivatives too (torch.func.jvp, jacfwd) on the first case, at 4-8x the time of the others; the
    # transforms test below compares forward mode and forward over reverse with the reference's
    assert torch.autograd.gradcheck(fn, (x, w, b), check_forward_ad=case == CASES[0])
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("case", CASES[::2])
def test_torch_func_transforms_give_the_references_results(case):
    # what torch.func does with nn.Conv2d works the same on the op: a per-sample call under vmap, Jacobians by
    # reverse and forward mode, Hessians (forward over reverse), per-sample gradients of an input-gradient penalty
    (x, w, b), kw = _inputs(case)
    x, w, b = (t.detach() for t in (x, w, b))
    ours = lambda x, w, b: conv2d(x, w, b, **kw)  # noqa: E731
    ref = lambda x, w, b: reference.conv2d(x, w, b, **kw)  # noqa: E731
    per_sample = x.unsqueeze(1)  # (N, 1, C, H, W): vmap hands each call one 1-sample batch
    torch.testing.assert_close(torch.func.vmap(ours, (0, None, None))(per_sample, w, b),
                               torch.func.vmap(ref, (0, None, None))(per_sample, w, b))
    one = x[:1]
    for jacobian in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jacobian(ours, argnums=(0, 1, 2))(one, w, b),
                                   jacobian(ref, argnums=(0, 1, 2))(one, w, b))

    def energy(conv):
        return lambda x, w, b: F.leaky_relu(conv(x, w, b), 0.2).square().sum()
    torch.testing.assert_close(torch.func.hessian(energy(ours), argnums=(0, 1))(one, w, b),
                               torch.func.hessian(energy(ref), argnums=(0, 1))(one, w, b))

    def penalty_gradients(conv):
        penalty = lambda w, b, sample: _penalty(conv, sample, w, b, kw)  # noqa: E731
        return torch.func.vmap(torch.func.grad(penalty, argnums=(0, 1)), (None, None, 0))(w, b, per_sample)
    torch.testing.assert_close(penalty_gradients(conv2d), penalty_gradients(reference.conv2d))


@pytest.mark.parametrize("case", CASES)
def test_a_penalty_on_the_input_gradient_gets_autograds_parameter_gradients(case):
    (x, w, b), kw = _inputs(case)
    got = torch.autograd.grad(_penalty(conv2d, x, w, b, kw), (x, w, b))
    want = torch.autograd.grad(_penalty(reference.conv2d, x, w, b, kw), (x, w, b))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_penalty_gradients_match_eager(backend):
    # the op stays whole in the compiled graph; inlined, torch.compile dropped the penalty's share of the weight
    # gradient (the bug this test keeps out)
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: _penalty(conv2d, x, w, b, kw), backend=backend, fullgraph=True)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(_penalty(reference.conv2d, x, w, b, kw), (x, w, b))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


class _Convolutions(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.inputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.inputs.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("conv, swapped", [(conv2d, False), (reference.conv2d, True)])
def test_the_second_derivative_runs_no_convolution_over_the_batch_as_channels(conv, swapped):
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    penalty = _penalty(conv, x, w, b, kw)
    with _Convolutions() as seen:
        torch.autograd.grad(penalty, (x, w, b))
    batch = x.shape[0]
    assert seen.inputs, "the backward ran no forward convolution at all"
    # autograd's formula convolves (C_in, N, H, W) inputs: the batch as channels; the reference shows it happens
    assert any(shape[1] == batch and shape[0] != batch for shape in seen.inputs) == swapped, seen.inputs


def test_the_reference_backend_runs_the_reference():
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    with use_backend("reference"):
        penalty = _penalty(conv2d, x, w, b, kw)
    with _Convolutions() as seen:
        torch.autograd.grad(penalty, (x, w, b))
    assert any(shape[1] == x.shape[0] and shape[0] != x.shape[0] for shape in seen.inputs)


@pytest.mark.parametrize("setting", ["auto", "cuda", "cpu", "reference"])
def test_the_reported_backend_is_the_one_that_runs(setting):
    # conv2d has no kernels: every setting but "reference" runs its torch ops, on any device, and says so
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    with use_backend(setting):
        reported = resolve_backend("conv2d", x.device)
        penalty = _penalty(conv2d, x, w, b, kw)
    with _Convolutions() as seen:
        torch.autograd.grad(penalty, (x, w, b))
    assert reported == ("reference" if setting == "reference" else "torch")
    ran_reference = any(shape[1] == x.shape[0] and shape[0] != x.shape[0] for shape in seen.inputs)
    assert ran_reference == (reported == "reference")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explain_backend_lists_the_torch_ops_and_the_reference(device):
    reasons = explain_backend("conv2d", device)
    assert [b for b, why in reasons if not why] == ["torch", "reference"]
    for backend, why in reasons[:3]:
        assert why.startswith(f"conv2d has no {backend} kernels") and "torch ops" in why, why


def test_autocast_computes_in_the_autocast_dtype_like_the_reference():
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = conv2d(x, w, b, **kw), reference.conv2d(x, w, b, **kw)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.float().square().sum(), (x, w, b))
    assert [g.dtype for g in grads] == [torch.float32] * 3  # the parameters' own dtype, through the casts
    torch.testing.assert_close(grads, torch.autograd.grad(ref.float().square().sum(), (x, w, b)))


def test_compiled_under_autocast_casts_as_eager_does():
    # In a compiled graph the op takes the autocast dtype without asking whether the device type has autocast: the
    # Dynamo of torch 2.11 cannot trace that question and broke the graph at every convolution (fullgraph=True
    # fails on such a break)
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32)
    compiled = torch.compile(lambda x, w, b: conv2d(x, w, b, **kw), backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = compiled(x, w, b), conv2d(x, w, b, **kw)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want)


def test_arguments_are_taken_as_f_conv2d_takes_them():
    (x, w, b), kw = _inputs(CASES[3])
    x, w, b = (t.detach() for t in (x, w, b))
    # numpy integers and 0-d integer tensors are ints to F.conv2d
    for stride in (np.int64(2), torch.tensor(2), (np.int32(2), 1)):
        torch.testing.assert_close(conv2d(x, w, b, stride=stride, groups=np.int64(2)),
                                   F.conv2d(x, w, b, stride=stride, groups=2))
    # what F.conv2d refuses is a TypeError that names the argument, never a truncated value
    for bad in ({"groups": 2.5}, {"groups": 2.0}, {"stride": 2.0}, {"padding": (1.5, 0)}, {"dilation": "2"}):
        name = next(iter(bad))
        with pytest.raises(TypeError):
            F.conv2d(x, w, b, **{"groups": 2, **bad})
        with pytest.raises(TypeError, match=f"conv2d: {name} must be an int"):
            conv2d(x, w, b, **{"groups": 2, **bad})
    # one value in a sequence serves both dimensions, as in F.conv2d; three are refused, not spread over the others
    one = {"stride": (2,), "padding": [1], "dilation": (2,)}
    torch.testing.assert_close(conv2d(x, w, b, groups=2, **one), F.conv2d(x, w, b, groups=2, **one))
    for bad in ({"stride": (2,), "padding": (1, 1, 1)}, {"stride": (1, 2, 1)}, {"dilation": ()}):
        name = next(k for k, v in bad.items() if len(v) != 1)
        with pytest.raises(RuntimeError):
            F.conv2d(x, w, b, groups=2, **bad)
        with pytest.raises(ValueError, match=rf"conv2d: {name} must be an int or 2 ints \(height, width\), got"):
            conv2d(x, w, b, groups=2, **bad)
    for name, args in (("x", (x.numpy(), w)), ("weight", (x, w.tolist()))):
        with pytest.raises(TypeError, match=f"conv2d: {name} must be a torch.Tensor, got"):
            conv2d(*args)


def test_meta_tensors_give_the_references_shapes():
    # Shape inference on the meta device (a discriminator built under torch.device("meta")): as F.conv2d and
    # nn.Conv2d, no data and no error (a device type without autocast made the autocast check raise).
    (x, w, b), kw = _inputs(CASES[3])
    x, w, b = (t.detach().to("meta") for t in (x, w, b))
    out = conv2d(x, w, b, **kw)
    assert out.device.type == "meta" and out.shape == reference.conv2d(x, w, b, **kw).shape
    with torch.device("meta"):
        net = PenaltyConv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect")
        assert net(torch.empty(2, 3, 9, 8)).shape == (2, 4, 5, 4)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_penalty_conv2d_is_a_drop_in_nn_conv2d(padding_mode):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode=padding_mode).double()
    ours = PenaltyConv2d(3, 4, 3, stride=2, padding=1, padding_mode=padding_mode).double()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)

    def penalty(net):
        grad = torch.func.grad(lambda inp: torch.func.functional_call(net, dict(net.named_parameters()),
                                                                      (inp,)).sum())(x)
        return grad.square().sum() + net(x).square().sum()

    got = torch.autograd.grad(penalty(ours), [x, *ours.parameters()])
    want = torch.autograd.grad(penalty(plain), [x, *plain.parameters()])
    torch.testing.assert_close(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_penalty_gradients_match_eager_on_cuda(channels_last):
    (x, w, b), kw = _inputs(CASES[0], dtype=torch.float32, channels_last=channels_last)
    x, w, b = (t.detach().cuda().requires_grad_() for t in (x, w, b))  # .cuda() keeps the layout
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: _penalty(conv2d, x, w, b, kw), fullgraph=True)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(_penalty(reference.conv2d, x, w, b, kw), (x, w, b))
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)  # TF32 may differ between the two
