"""HomographyTransformer: identity at initialization, the random spatial code, gradients through the warp."""
import pytest
import torch

from reidfast import ops
from reidfast.nn import HomographyTransformer
from reidfast.ops import _extension

needs_ext = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="reidfast._C not built")


def test_starts_at_identity_whatever_the_code():
    net = HomographyTransformer(3, code_dim=4)
    img = torch.randn(2, 3, 16, 8)
    warped, H = net(img)  # code sampled from N(0, I)
    torch.testing.assert_close(H, torch.eye(3).expand(2, 3, 3))
    torch.testing.assert_close(warped, img, atol=1e-5, rtol=1e-5)


def test_code_changes_the_warp_once_trained_and_is_reproducible():
    torch.manual_seed(0)
    net = HomographyTransformer(3, code_dim=4, out_size=(12, 6))
    torch.nn.init.normal_(net.params.weight, std=0.05)
    img = torch.randn(2, 3, 16, 8)
    code = torch.randn(2, 4)
    w1, H1 = net(img, code)
    w2, H2 = net(img, code)
    assert w1.shape == (2, 3, 12, 6) and H1.shape == (2, 3, 3)
    torch.testing.assert_close(H1, H2)
    _, H3 = net(img, torch.randn(2, 4))
    assert not torch.allclose(H1, H3)
    assert torch.all(H1[:, 2, 2] == 1)


def test_gradients_reach_the_localization_network_and_match_reference_backend():
    torch.manual_seed(0)
    net = HomographyTransformer(3, code_dim=2, hidden=8)
    torch.nn.init.normal_(net.params.weight, std=0.05)
    img, code = torch.randn(2, 3, 12, 8, requires_grad=True), torch.randn(2, 2)
    grads = {}
    for backend in ["reference"] + (["cpu"] if _extension.has_cpu_kernels() else []):
        net.zero_grad()
        img.grad = None
        with ops.use_backend(backend):
            warped, _ = net(img, code)
        warped.square().sum().backward()
        grads[backend] = [net.params.weight.grad.clone(), net.features[0].weight.grad.clone(), img.grad.clone()]
    assert grads["reference"][0].abs().sum() > 0, "the warp must pass gradient to the last layer"
    for backend, g in grads.items():
        for a, b in zip(g, grads["reference"]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@needs_ext
def test_compiles_fullgraph():
    torch._dynamo.reset()
    net = HomographyTransformer(3, code_dim=2, hidden=8)
    with torch.no_grad():  # a trained-looking network: a fresh one is the identity, which would hide a skipped warp
        net.params.weight.normal_(0, 0.05)
    img, code = torch.randn(2, 3, 12, 8), torch.randn(2, 2)
    with ops.use_backend("cpu"):
        warped, H = torch.compile(net, fullgraph=True, backend="aot_eager")(img, code)
        want, want_H = net(img, code)
    assert not torch.allclose(want, img, atol=1e-3)
    torch.testing.assert_close(H, want_H)
    torch.testing.assert_close(warped, want, atol=1e-5, rtol=1e-5)


def test_bad_inputs():
    net = HomographyTransformer(3, code_dim=2)
    with pytest.raises(ValueError, match=r"img must be \(N, 3, H, W\)"):
        net(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"code must be \(N, 2\)"):
        net(torch.randn(2, 3, 8, 8), torch.randn(2, 3))
    with pytest.raises(ValueError, match="code_dim=0"):
        HomographyTransformer(3)(torch.randn(1, 3, 8, 8), torch.randn(1, 2))
    with pytest.raises(TypeError, match="HomographyTransformer: img must be a torch.Tensor, got ndarray"):
        net(torch.randn(2, 3, 8, 8).numpy())
    with pytest.raises(TypeError, match="HomographyTransformer: code must be a torch.Tensor or None, got list"):
        net(torch.randn(2, 3, 8, 8), [[0.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("kwargs, words", [
    ({"padding_mode": "mirror"}, "padding_mode must be one of"),
    ({"out_size": 64}, "out_size must be None or"),
    ({"out_size": (64, 0)}, "out_size must be positive"),
    ({"align_corners": "yes"}, "align_corners must be a bool"),
    ({"hidden": 0}, "hidden >= 1"),
    ({"in_channels": 3.0}, "in_channels must be an int, got 3.0"),
    ({"code_dim": 1.5}, "code_dim must be an int, got 1.5"),
    ({"hidden": "32"}, "hidden must be an int, got '32'"),
    ({"bound": "0.3"}, "bound must be a positive number or None, got '0.3'"),
    ({"bound": float("inf")}, "bound must be positive and finite, or None, got inf"),
    ({"bound": 0.0}, "bound must be positive and finite, or None, got 0.0"),
    ({"in_channels": True}, "in_channels must be an int, got True"),
    ({"code_dim": torch.tensor(True)}, "code_dim must be an int, got tensor\\(True\\)"),
    ({"hidden": torch.tensor([32])}, "hidden must be an int, got tensor\\(\\[32\\]\\)"),
])
def test_bad_settings_are_refused_when_the_module_is_built(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        HomographyTransformer(**{"in_channels": 3, **kwargs})


def test_sizes_are_the_integers_the_ops_take():
    import numpy as np
    net = HomographyTransformer(torch.tensor(3), code_dim=np.int64(2), hidden=torch.tensor(8, dtype=torch.int32))
    assert (net.in_channels, net.code_dim) == (3, 2) and type(net.in_channels) is int and type(net.code_dim) is int
