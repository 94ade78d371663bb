"""A Conv2d for the networks whose input gradient is penalized (discriminators under R1 or a WGAN gradient
penalty)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv2d import conv2d


class PenaltyConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state dict and padding modes) through `reidfast.ops.conv2d`: the same values
    and derivatives, with the second derivative that a penalty on the input gradient needs run by weight-gradient
    kernels instead of autograd's barely parallel swapped convolution."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        return conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)
