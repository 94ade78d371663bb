"""SA-GAN's spatial transformer: a localization network predicts a homography per image, the fused warp applies it.

SA-GAN makes the warp stochastic by concatenating a random spatial code z ~ N(0, I) to the localization network's
input; here the code is broadcast over the image as `code_dim` constant channels. The last layer starts at zero,
so a fresh module warps by the identity.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..ops import homography_from_params, homography_warp
from ..ops._args import as_int, check_tensor
from ..ops.homography import check_settings


class HomographyTransformer(nn.Module):
    """(img, code=None) -> (warped img, H).

    in_channels: image channels. code_dim: size of the random spatial code (0: none); when forward gets no code
      it samples one from N(0, I). hidden: width of the localization network. out_size: (Hout, Wout) of the warp
      (default the input size). padding_mode, align_corners: as homography_warp, whose normalized convention H
      follows (H maps output normalized coordinates to input ones).
    bound: if given, each of the 8 parameters is bound * tanh(raw / bound): still the identity at zero with unit
      slope there, but never a degenerate warp (a fold or a collapse) however far training pushes it.
    """

    def __init__(self, in_channels: int = 3, code_dim: int = 0, hidden: int = 32, out_size=None,
                 padding_mode: str = "zeros", align_corners: bool = False, bound: float | None = None):
        super().__init__()
        counts = []
        for name, value in (("in_channels", in_channels), ("code_dim", code_dim), ("hidden", hidden)):
            counts.append(as_int(value))
            if counts[-1] is None:
                raise TypeError(f"HomographyTransformer: {name} must be an int, got {value!r}")
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)):
            raise TypeError(f"HomographyTransformer: bound must be a positive number or None, got {bound!r}")
        in_channels, code_dim, hidden = counts
        if in_channels < 1 or code_dim < 0 or hidden < 1:
            raise ValueError(f"HomographyTransformer: need in_channels >= 1, code_dim >= 0, hidden >= 1; got "
                             f"{in_channels}, {code_dim}, {hidden}")
        if bound is not None and not 0 < bound < math.inf:  # inf * tanh(p / inf) is NaN: no bound is None
            raise ValueError(f"HomographyTransformer: bound must be positive and finite, or None, got {bound}")
        # Checked here, not at the first warp deep inside a training step
        out_size = check_settings("HomographyTransformer", out_size, padding_mode, align_corners)
        self.bound = bound
        self.in_channels = in_channels
        self.code_dim = code_dim
        self.out_size = out_size
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        self.features = nn.Sequential(
            nn.Conv2d(in_channels + code_dim, hidden, 5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((4, 2)),  # re-id images are about twice as tall as wide
            nn.Flatten(),
            nn.Linear(hidden * 8, hidden), nn.ReLU(inplace=True),
        )
        self.params = nn.Linear(hidden, 8)
        nn.init.zeros_(self.params.weight)
        nn.init.zeros_(self.params.bias)

    def localize(self, img: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """The (N, 3, 3) homography the module would apply to img."""
        check_tensor("HomographyTransformer", "img", img)
        if code is not None:
            check_tensor("HomographyTransformer", "code", code, "a torch.Tensor or None")
        if img.dim() != 4 or img.shape[1] != self.in_channels:
            raise ValueError(f"HomographyTransformer: img must be (N, {self.in_channels}, H, W), "
                             f"got {tuple(img.shape)}")
        x = img
        if self.code_dim:
            if code is None:
                code = torch.randn(img.shape[0], self.code_dim, device=img.device, dtype=img.dtype)
            if code.shape != (img.shape[0], self.code_dim):
                raise ValueError(f"HomographyTransformer: code must be (N, {self.code_dim}), got {tuple(code.shape)}")
            x = torch.cat([img, code.to(img.dtype)[:, :, None, None].expand(-1, -1, *img.shape[2:])], dim=1)
        elif code is not None:
            raise ValueError("HomographyTransformer: got a code but the module was built with code_dim=0")
        # Matrix math in float32 (float64 for float64 images) even when the network runs in half precision.
        p = self.params(self.features(x)).to(torch.float64 if img.dtype == torch.float64 else torch.float32)
        if self.bound is not None:
            p = self.bound * torch.tanh(p / self.bound)
        return homography_from_params(p)

    def forward(self, img: torch.Tensor, code: torch.Tensor | None = None):
        H = self.localize(img, code)
        warped = homography_warp(img, H, self.out_size, self.padding_mode, self.align_corners)
        return warped, H

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, code_dim={self.code_dim}, out_size={self.out_size}, "
                f"padding_mode={self.padding_mode!r}, align_corners={self.align_corners}, bound={self.bound}")
