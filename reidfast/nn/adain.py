"""AdaIN modules whose style parameters are forward arguments.

MUNIT/DG-Net's AdaptiveInstanceNorm2d stores weight and bias as module attributes that the caller assigns before
each forward; that mutation breaks DataParallel replicas and CUDA graphs. Here they are passed in.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import adain
from ..ops._args import as_int, check_tensor
from ..ops.adain import check_settings
from .conv import PaddedConv2d


def _check_count(module: str, name: str, value) -> int:
    count = as_int(value)
    if count is None or count < 1:
        raise ValueError(f"{module}: {name} must be a positive integer, got {value!r}")
    return count


class AdaIN2d(nn.Module):
    """y = act(instance_norm(x) * weight + bias) [+ residual] with per-sample (N, C) weight and bias."""

    def __init__(self, num_features: int, activation: str = "none", negative_slope: float = 0.2, eps: float = 1e-5):
        super().__init__()
        # Checked here, not at the first forward deep inside a network
        num_features = _check_count("AdaIN2d", "num_features", num_features)
        check_settings("AdaIN2d", activation, negative_slope, eps)
        self.num_features = num_features
        self.activation = activation
        self.negative_slope = negative_slope
        self.eps = eps

    def forward(self, x, weight, bias, residual=None):
        check_tensor("AdaIN2d", "x", x)
        if x.dim() == 4 and x.shape[1] != self.num_features:
            raise ValueError(f"AdaIN2d: x has {x.shape[1]} channels, the module was built for {self.num_features}")
        return adain(x, weight, bias, residual, self.activation, self.negative_slope, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, activation={self.activation!r}, eps={self.eps}"


class AdaINResBlock(nn.Module):
    """DG-Net's decoder residual block: conv3x3 -> AdaIN -> act -> conv3x3 -> AdaIN -> + x.

    Both AdaINs run fused: the first with its activation, the second with the skip connection.
    `style` is a (N, 4 * dim) tensor laid out as [weight1, bias1, weight2, bias2], each (N, dim), the slice order
    of the MLP output this block consumes; it can also be a tuple of those four tensors.
    """

    def __init__(self, dim: int, activation: str = "relu", pad_mode: str = "reflect", eps: float = 1e-5):
        super().__init__()
        dim = _check_count("AdaINResBlock", "dim", dim)
        if pad_mode not in ("reflect", "zeros", "replicate"):
            raise ValueError(f"AdaINResBlock: pad_mode must be 'reflect', 'zeros' or 'replicate', got {pad_mode!r}")
        self.dim = dim
        self.conv1 = PaddedConv2d(dim, dim, 3, padding=1, padding_mode=pad_mode)
        self.conv2 = PaddedConv2d(dim, dim, 3, padding=1, padding_mode=pad_mode)
        self.norm1 = AdaIN2d(dim, activation=activation, eps=eps)
        self.norm2 = AdaIN2d(dim, activation="none", eps=eps)

    @property
    def num_style_params(self) -> int:
        return 4 * self.dim

    def forward(self, x, style):
        if isinstance(style, torch.Tensor):
            if style.dim() != 2 or style.shape[1] != self.num_style_params:
                raise ValueError(
                    f"AdaINResBlock: style must have shape (N, {self.num_style_params}), got {tuple(style.shape)}"
                )
            w1, b1, w2, b2 = style.split(self.dim, dim=1)
        elif isinstance(style, (tuple, list)) and len(style) == 4:
            w1, b1, w2, b2 = style
        else:
            got = f"{type(style).__name__} of length {len(style)}" if isinstance(style, (tuple, list)) else \
                type(style).__name__
            raise TypeError(f"AdaINResBlock: style must be a (N, {self.num_style_params}) tensor or a tuple of four "
                            f"(N, {self.dim}) tensors (weight1, bias1, weight2, bias2), got a {got}")
        h = self.norm1(self.conv1(x), w1, b1)
        return self.norm2(self.conv2(h), w2, b2, residual=x)
