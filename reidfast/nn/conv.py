"""Convolutions whose padding and, for the networks whose input gradient is penalized (discriminators under R1 or
a WGAN gradient penalty), whose second derivative run through reidfast's ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv2d import conv2d
from ..ops.pad import reflection_pad2d


class PaddedConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state dict and padding modes) whose reflect padding is
    `reidfast.ops.reflection_pad2d`: the same values and derivatives, and a backward that torch.compile keeps as
    one kernel call instead of decomposing it into gathers."""

    _convolution = staticmethod(F.conv2d)

    def _padded(self, input: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(input padded as nn.Conv2d pads it ahead of the convolution, the padding left to the convolution)."""
        if self.padding_mode == "zeros":
            return input, self.padding
        if self.padding_mode == "reflect":
            return reflection_pad2d(input, self._reversed_padding_repeated_twice), (0, 0)
        return F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        input, padding = self._padded(input)
        return self._convolution(input, weight, bias, self.stride, padding, self.dilation, self.groups)


class PenaltyConv2d(PaddedConv2d):
    """`PaddedConv2d` through `reidfast.ops.conv2d`: the same values and derivatives, with the second derivative
    that a penalty on the input gradient needs run by weight-gradient kernels instead of autograd's barely parallel
    swapped convolution. (String padding runs nn.Conv2d's own.)"""

    _convolution = staticmethod(conv2d)
