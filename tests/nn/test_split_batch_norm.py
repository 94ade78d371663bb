"""Split BatchNorm: under batchnorm_groups(module, g), one call over g equal groups gives what g calls, one group
each, give (outputs, gradients, running statistics), eagerly (g native calls) and in the one-pass form compiled
graphs take, for single layers and for a whole ResNet-50."""
import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from reidfast.models.backbone import ResNet50
from reidfast.nn import SplitBatchNorm1d, SplitBatchNorm2d, batchnorm_groups, batchnorm_groups_of, split_batchnorm


def _randomize(bn):
    with torch.no_grad():  # non-trivial affine parameters and running statistics to start from
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _separate_and_grouped(module, groups, forward=None, train=True):
    """(outputs, input grads, module) of `module` called once per group, and of a split copy called once on the
    concatenation (through `forward(split, x, g)`, default its call under batchnorm_groups), with the same random
    upstream gradient."""
    module.zero_grad(set_to_none=True)
    split = split_batchnorm(copy.deepcopy(module))
    module.train(train)
    split.train(train)
    inputs = [x.clone().requires_grad_(True) for x in groups]
    outputs = [module(x) for x in inputs]
    joined = torch.cat([x.detach() for x in groups]).requires_grad_(True)
    if forward is None:
        with batchnorm_groups(split, len(groups)):
            joined_out = split(joined)
    else:
        joined_out = forward(split, joined, len(groups))
    upstream = torch.randn_like(joined_out)
    torch.cat(outputs).backward(upstream)
    joined_out.backward(upstream)
    return (torch.cat(outputs), torch.cat([x.grad for x in inputs]), module), (joined_out, joined.grad, split)


def _assert_same(separate, grouped, **tol):
    out, grad, module = separate
    out_g, grad_g, module_g = grouped
    torch.testing.assert_close(out_g, out, **tol)
    torch.testing.assert_close(grad_g, grad, **tol)
    for (name, p), (_, p_g) in zip(module.named_parameters(), module_g.named_parameters()):
        torch.testing.assert_close(p_g.grad, p.grad, msg=name, **tol)
    state, state_g = module.state_dict(), module_g.state_dict()
    assert list(state) == list(state_g)
    for key in state:
        torch.testing.assert_close(state_g[key], state[key], msg=key, **tol)


def _one_pass(split, x, g):
    return split.grouped_forward(x, g)


@pytest.mark.parametrize("layer, shape", [(nn.BatchNorm2d, (5, 3, 4)), (nn.BatchNorm1d, (5,)),
                                          (nn.BatchNorm1d, (5, 7))])
@pytest.mark.parametrize("form", ["calls", "one pass"])
def test_one_call_over_groups_equals_one_call_per_group(layer, shape, form):
    # "calls": the eager form (g native calls); "one pass": what a compiled graph runs (one reduction for all)
    torch.manual_seed(0)
    bn = _randomize(layer(shape[0]).double())
    for step in range(2):  # the closed-form update of the second step starts from the first's
        groups = [torch.randn((4,) + shape, dtype=torch.float64) * (i + 1) + i for i in range(3)]
        separate, grouped = _separate_and_grouped(bn, groups, _one_pass if form == "one pass" else None)
        _assert_same(separate, grouped)
        bn = separate[2]
    assert isinstance(grouped[2], (SplitBatchNorm1d, SplitBatchNorm2d))
    assert int(grouped[2].num_batches_tracked) == 6  # 3 groups a step, 2 steps


@pytest.mark.parametrize("form", ["calls", "one pass"])
def test_channels_last_input_keeps_its_layout(form):
    torch.manual_seed(1)
    bn = _randomize(nn.BatchNorm2d(6).double())
    groups = [torch.randn(3, 6, 5, 4, dtype=torch.float64).to(memory_format=torch.channels_last) for _ in range(2)]
    separate, grouped = _separate_and_grouped(bn, groups, _one_pass if form == "one pass" else None)
    _assert_same(separate, grouped)
    assert grouped[0].is_contiguous(memory_format=torch.channels_last)


def test_whole_resnet50_under_compile_equals_separate_calls():
    # every other layer is per sample: the network's compiled call over 3 groups (each layer's one-pass form, as
    # dynamo and aot_autograd trace it; aot_eager generates no code) equals 3 eager calls, in fp64
    torch._dynamo.reset()
    torch.manual_seed(2)
    net = ResNet50(last_stride=1, width=4).double()

    def compiled_call(split, x, g):
        with batchnorm_groups(split, g):
            return torch.compile(split, backend="aot_eager", fullgraph=True)(x)

    groups = [torch.randn(2, 3, 64, 32, dtype=torch.float64) + i for i in range(3)]
    separate, grouped = _separate_and_grouped(net, groups, compiled_call)
    torch._dynamo.reset()
    assert sum(isinstance(m, SplitBatchNorm2d) for m in grouped[2].modules()) == 53
    _assert_same(separate, grouped, rtol=1e-9, atol=1e-10)


def test_eval_mode_and_a_single_group_are_plain_batch_norm():
    torch.manual_seed(3)
    bn = _randomize(nn.BatchNorm2d(4))
    split = split_batchnorm(copy.deepcopy(bn))
    x = torch.randn(6, 4, 3, 3)
    bn.eval()
    split.eval()
    with batchnorm_groups(split, 3):  # eval: running statistics, nothing shared between samples
        torch.testing.assert_close(split(x), bn(x), rtol=0, atol=0)
    bn.train()
    split.train()
    torch.testing.assert_close(split(x), bn(x), rtol=0, atol=0)  # outside batchnorm_groups: BatchNorm itself


def test_layers_without_running_statistics_split_in_eval_mode_too():
    # track_running_stats=False normalizes by batch statistics in both modes (DG-Net's frozen view of Ea)
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(3, track_running_stats=False).double()
    groups = [torch.randn(2, 3, 4, 4, dtype=torch.float64) + i for i in range(2)]
    for form in (None, _one_pass):
        separate, grouped = _separate_and_grouped(bn, groups, form, train=False)
        _assert_same(separate, grouped)


def test_conversion_keeps_objects_parameters_buffers_and_state_dict():
    net = nn.Sequential(ResNet50(width=4), nn.Linear(128, 8), nn.BatchNorm1d(8))
    modules, params, buffers = list(net.modules()), list(net.parameters()), list(net.buffers())
    keys = list(net.state_dict())
    assert split_batchnorm(net) is net
    assert list(net.modules()) == modules and list(net.parameters()) == params and list(net.buffers()) == buffers
    assert keys == list(net.state_dict())
    assert isinstance(net[2], SplitBatchNorm1d) and isinstance(net[0].bn1, SplitBatchNorm2d)
    with batchnorm_groups(net, 2):
        assert {m.groups for m in net.modules() if isinstance(m, SplitBatchNorm2d)} == {2}
    assert {m.groups for m in net.modules() if isinstance(m, SplitBatchNorm2d)} == {1}  # restored after


def test_one_pass_keeps_bfloat16_inputs_with_float32_statistics():
    torch.manual_seed(5)
    bn = SplitBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 2) * 3 + 2
    out = bn.grouped_forward(x.bfloat16(), 2)
    assert out.dtype == torch.bfloat16
    reference = torch.cat([SplitBatchNorm2d(3)(part) for part in x.bfloat16().float().chunk(2)])
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)
    assert bn.running_mean.dtype == torch.float32


class _OnePass(nn.Module):
    def __init__(self, bn, groups):
        super().__init__()
        self.bn, self.groups = bn, groups

    def forward(self, x):
        return self.bn.grouped_forward(x, self.groups)


def test_gradcheck_of_the_one_pass_form():
    torch.manual_seed(6)
    one_pass = _OnePass(SplitBatchNorm2d(2, track_running_stats=False).double(), 2)
    x = torch.randn(4, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    call = lambda x, w, b: torch.func.functional_call(one_pass, {"bn.weight": w, "bn.bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(call, (x, weight, bias))
    assert torch.autograd.gradgradcheck(call, (x, weight, bias))


def test_bad_input_is_a_clear_error():
    bn = split_batchnorm(nn.BatchNorm2d(3))
    with batchnorm_groups(bn, 4), pytest.raises(ValueError, match="batch 6 does not split into 4 equal groups"):
        bn(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SplitBatchNorm1d(3).grouped_forward(torch.randn(4, 3), 4)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        with batchnorm_groups(bn, 0):
            pass
    for bad in (2.0, True, "2", torch.tensor(True), torch.tensor([2])):  # refused where given, not by chunk() later
        with pytest.raises(TypeError, match=re.escape(f"batchnorm_groups: groups must be an int, got {bad!r}")):
            with batchnorm_groups(bn, bad):
                pass
    for count in (np.int64(2), torch.tensor(2)):  # the integers the ops take
        with batchnorm_groups(bn, count):
            assert bn.groups == 2 and type(bn.groups) is int


def test_group_counts_of_several_modules_hold_inside_the_block_only():
    # batchnorm_groups_of sets each module's count around a trainer's compiled step function; every count returns
    # to 1 after the block, also when the block raises
    a, b = split_batchnorm(nn.BatchNorm2d(3)), split_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm1d(2)))
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with batchnorm_groups_of([(a, 3), (b, 2)]):
        assert a.groups == 3 and [m.groups for m in b] == [2, 2]
        torch.testing.assert_close(a(x), torch.cat([nn.functional.batch_norm(c, None, None, training=True)
                                                    for c in x.chunk(3)]))
    assert a.groups == 1 and [m.groups for m in b] == [1, 1]
    with pytest.raises(RuntimeError, match="inside"):
        with batchnorm_groups_of([(a, 2), (b, 3)]):
            raise RuntimeError("inside")
    assert a.groups == 1 and [m.groups for m in b] == [1, 1]
