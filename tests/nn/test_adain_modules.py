"""reidfast.nn's AdaIN modules: what they compute against the op, and the settings they refuse when built."""
import re

import numpy as np
import pytest
import torch

from reidfast import ops
from reidfast.nn import AdaIN2d, AdaINResBlock


def test_adain2d_is_the_op_with_its_settings():
    g = torch.Generator().manual_seed(0)
    x, w, b, r = (torch.randn(*shape, generator=g) for shape in ((2, 3, 5, 4), (2, 3), (2, 3), (2, 3, 5, 4)))
    module = AdaIN2d(3, activation="lrelu", negative_slope=0.1, eps=1e-3)
    want = ops.adain(x, w, b, r, "lrelu", 0.1, 1e-3)
    torch.testing.assert_close(module(x, w, b, residual=r), want)
    with pytest.raises(ValueError, match="x has 4 channels, the module was built for 3"):
        module(torch.randn(2, 4, 5, 4), w, b)
    with pytest.raises(TypeError, match="AdaIN2d: x must be a torch.Tensor, got ndarray"):
        module(x.numpy(), w, b)


@pytest.mark.parametrize("make, error, words", [
    (lambda: AdaIN2d(0), ValueError, "num_features must be a positive integer"),
    (lambda: AdaIN2d(2.5), ValueError, "num_features must be a positive integer"),
    (lambda: AdaIN2d(4, activation="gelu"), ValueError, "activation must be one of"),
    (lambda: AdaIN2d(4, eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda: AdaIN2d(4, eps="1e-5"), TypeError, "eps must be a real number"),
    (lambda: AdaIN2d(4, activation="lrelu", negative_slope=float("inf")), ValueError, "negative_slope must be finite"),
    (lambda: AdaINResBlock(0), ValueError, "dim must be a positive integer"),
    (lambda: AdaINResBlock(4, activation="tanh"), ValueError, "activation must be one of"),
    (lambda: AdaINResBlock(4, pad_mode="circular"), ValueError, "pad_mode must be"),
])
def test_bad_settings_are_refused_when_the_module_is_built(make, error, words):
    with pytest.raises(error, match=words):
        make()


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_resblock_is_the_published_composition(pad_mode):
    # written out from its definition with torch's own functions: padded 3x3 conv -> AdaIN (style weight1, bias1) ->
    # ReLU -> padded 3x3 conv -> AdaIN (weight2, bias2) -> + x, style laid out [weight1, bias1, weight2, bias2]
    import torch.nn.functional as F

    from reidfast.ops import reference
    torch.manual_seed(0)
    block = AdaINResBlock(3, pad_mode=pad_mode).double()
    x, style = torch.randn(2, 3, 6, 5, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    w1, b1, w2, b2 = style.split(3, dim=1)

    def conv(conv_module, h):
        padded = F.pad(h, (1, 1, 1, 1), mode="reflect") if pad_mode == "reflect" else F.pad(h, (1, 1, 1, 1))
        return F.conv2d(padded, conv_module.weight, conv_module.bias)

    h = torch.relu(reference.adain(conv(block.conv1, x), w1, b1))
    want = reference.adain(conv(block.conv2, h), w2, b2) + x
    torch.testing.assert_close(block(x, style), want)


def test_resblock_style_of_the_wrong_kind_is_named():
    block = AdaINResBlock(3)
    x, style = torch.randn(2, 3, 4, 4), torch.randn(2, 12)
    torch.testing.assert_close(block(x, list(style.split(3, dim=1))), block(x, style))
    for bad, words in (((style[:, :3],) * 3, "tuple of length 3"), (None, "NoneType")):
        with pytest.raises(TypeError, match=r"AdaINResBlock: style must be a \(N, 12\) tensor or a tuple of four "
                                            rf"\(N, 3\) tensors .*got a {words}"):
            block(x, bad)


def test_counts_are_the_integers_the_ops_take():
    # one reading of integer arguments for the ops and the modules: numpy and 0-d integer tensors are counts, kept
    # as Python ints; a bool (Python's, numpy's or torch's) or a tensor of one element is not
    for count in (np.int64(3), torch.tensor(3)):
        assert type(AdaIN2d(count).num_features) is int and type(AdaINResBlock(count).dim) is int
    for bad in (True, np.True_, torch.tensor(True), torch.tensor([3]), torch.tensor(3.0)):
        message = f"AdaIN2d: num_features must be a positive integer, got {bad!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            AdaIN2d(bad)
        with pytest.raises(ValueError, match="AdaINResBlock: dim must be a positive integer"):
            AdaINResBlock(bad)
