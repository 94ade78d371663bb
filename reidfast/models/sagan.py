"""SA-GAN's networks, networks only, no losses ('Spatial-Aware GAN for Unsupervised Person Re-identification').

- :class:`SpatialTransformer` (S1: X -> Y, S2: Y -> X): the localization network sees the image with its binary
  human mask concatenated and a random spatial code z ~ N(0, I), predicts a homography T and warps image and mask
  with it (``reidfast.ops.homography_warp`` through :class:`reidfast.nn.HomographyTransformer`). Several codes
  give several geometries of one image. Each homography parameter is bounded (``bound`` tanh(raw / bound),
  0.3 by default: rotations, shears, scale changes and perspective terms of up to 30%), so that the adversarial
  game cannot fold or collapse the warp. Points outside the source image take the nearest border pixel
  (``padding_mode="border"``), as a wider detection box would show background rather than a flat colour.
- :class:`ResnetGenerator` (G1: X -> Y, G2: Y -> X): the CycleGAN-style ResNet generator (c7s1, two stride-2
  downsamplings, residual blocks, two transposed-convolution upsamplings, c7s1) with instance normalization.
  It predicts a change of the input (x + f(x), the last convolution starting at zero), so that, like the spatial
  transformers, a fresh generator is the identity.
- :class:`Critic` (D1, D2): a PatchGAN critic with no normalization layer (it is trained with the Wasserstein
  objective and a gradient penalty, which per-sample gradients of a batch-normalized critic would break); the
  score of an image is the mean over its patches.
- :class:`TransformCritic` (D_T): an MLP critic on homographies (the 8 free entries of H / H[2, 2]).
- :class:`SiaNet`: a small Siamese embedding network (4 stride-2 convolutions, global pooling, a linear layer) for
  the contrastive loss.

Every network here is batch-independent (no batch normalization), so several inputs can go through one call
without changing any result. Images are in the loop's ImageNet-normalized space.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import HomographyTransformer, PaddedConv2d, PenaltyConv2d


def homography_vector(H: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) -> (N, 8): the free entries of H scaled so that H[2, 2] = 1 (what D_T sees)."""
    H = H / H[:, 2:3, 2:3]
    return H.flatten(1)[:, :8]


class SpatialTransformer(HomographyTransformer):
    """(image, mask, code) -> (warped image, warped mask, T). The localization network sees [image, mask] and the
    code; the warp moves image and mask together (zeros outside the source image)."""

    def __init__(self, image_channels: int = 3, code_dim: int = 8, hidden: int = 32, bound: float | None = 0.3,
                 padding_mode: str = "border"):
        super().__init__(in_channels=image_channels + 1, code_dim=code_dim, hidden=hidden, bound=bound,
                         padding_mode=padding_mode)
        self.image_channels = image_channels

    def predict(self, image: torch.Tensor, mask: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.localize(torch.cat([image, mask.to(image.dtype)], 1), code)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, code: torch.Tensor):
        warped, T = super().forward(torch.cat([image, mask.to(image.dtype)], 1), code)
        return warped[:, :self.image_channels], warped[:, self.image_channels:], T


class _Residual(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            PaddedConv2d(dim, dim, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(dim), nn.ReLU(inplace=True),
            PaddedConv2d(dim, dim, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: c7s1-ngf, d2ngf, d4ngf, `blocks` x R4ngf, u2ngf, ungf, c7s1-3; output x + f(x)."""

    def __init__(self, channels: int = 3, ngf: int = 64, blocks: int = 9):
        super().__init__()
        if ngf < 1 or blocks < 0:
            raise ValueError(f"ResnetGenerator: need ngf >= 1 and blocks >= 0, got {ngf}, {blocks}")
        layers = [PaddedConv2d(channels, ngf, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(ngf),
                  nn.ReLU(inplace=True)]
        for i in range(2):
            layers += [nn.Conv2d(ngf * 2 ** i, ngf * 2 ** (i + 1), 3, stride=2, padding=1),
                       nn.InstanceNorm2d(ngf * 2 ** (i + 1)), nn.ReLU(inplace=True)]
        layers += [_Residual(ngf * 4) for _ in range(blocks)]
        for i in (2, 1):
            layers += [nn.ConvTranspose2d(ngf * 2 ** i, ngf * 2 ** (i - 1), 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * 2 ** (i - 1)), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out = PaddedConv2d(ngf, channels, 7, padding=3, padding_mode="reflect")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"ResnetGenerator: height and width must be multiples of 4, got {tuple(x.shape[-2:])}")
        return x + self.out(self.body(x))


class Critic(nn.Module):
    """PatchGAN critic (C64-C128-C256-C512 at ndf = 64, then a 1-channel convolution), no normalization; forward
    gives one score per image (the mean of the patch scores). Its convolutions are PenaltyConv2d: the gradient
    penalty differentiates its input gradient."""

    def __init__(self, channels: int = 3, ndf: int = 64, layers: int = 3):
        super().__init__()
        conv = PenaltyConv2d
        seq, dim = [conv(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)], ndf
        for i in range(1, layers):
            seq += [conv(dim, ndf * 2 ** i, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            dim = ndf * 2 ** i
        seq += [conv(dim, dim * 2, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), conv(dim * 2, 1, 3, 1, 1)]
        self.body = nn.Sequential(*seq)

    def forward(self, x):
        return self.body(x).mean((1, 2, 3))


class TransformCritic(nn.Module):
    """D_T: an MLP critic on homographies, (N, 3, 3) -> (N,) scores."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, H):
        return self.body(homography_vector(H).to(self.body[0].weight.dtype)).squeeze(1)


class SiaNet(nn.Module):
    """The Siamese embedding network of the contrastive loss: (N, 3, H, W) -> (N, dim)."""

    def __init__(self, channels: int = 3, width: int = 64, dim: int = 128):
        super().__init__()
        seq, cin = [], channels
        for i in range(4):
            cout = width * 2 ** min(i, 2)
            seq += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*seq, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(cin, dim)

    def forward(self, x):
        return self.embed(self.features(x))
