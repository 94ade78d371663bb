"""DG-Net's networks, networks only, no losses ('Joint Discriminative and Generative Learning for Person
Re-identification', CVPR 2019).

- :class:`StructureEncoder` (Es): the channel mean of the normalized image -> structure code s (128 x H/4 x W/4).
- :class:`Decoder` (G): s and the AdaIN parameters -> an image in ImageNet-normalized space (no tanh).
- :class:`AdaINParams`: the MLPs that turn the 8192-d appearance code into every AdaIN weight and bias (ResBlock
  i's from the code's i-th 2048-d slice).
- :class:`MultiScaleDiscriminator` (D): PatchGAN at 3 scales, LSGAN outputs.
- :class:`AppearanceEncoder` (Ea): ResNet-50 (last stride 1), primary and fine-grained ClassBlock heads on global
  max pooling, and the appearance code (4 horizontal parts by adaptive max pooling, concatenated).

``width`` multiplies every channel count of Es, G, the MLPs and D (1.0 is the paper's); ``backbone_width`` is
the ResNet-50 base width (64 is ResNet-50 proper). Reduced widths exist for the CPU preset and tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import AdaINResBlock, PaddedConv2d, PenaltyConv2d
from ..ops import reflection_pad2d
from .backbone import resnet50
from .baseline import ClassBlock
from .init import init_weights
from .width import scaled_channels

NEGATIVE_SLOPE = 0.2
PARTS = 4  # horizontal stripes of the appearance code


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)


class DilatedConv2d(PaddedConv2d):
    """The ASPP's dilated convolution with the published encoder's reflect padding where the map allows it (a
    reflection needs a pad smaller than each side) and zero padding on smaller maps (the CPU preset's 16x8 at rate 9).
    The same parameters and state dict as nn.Conv2d; the padding is chosen by the input's size."""

    def _padded(self, input: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        pad_h, pad_w = self.padding
        if pad_h < input.shape[-2] and pad_w < input.shape[-1]:
            return reflection_pad2d(input, (pad_w, pad_w, pad_h, pad_h)), (0, 0)
        # zeros as a pad of their own, not the convolution's: the same numbers, and the same rounding as the
        # CPU preset's measured runs (the preset's GAN training amplifies a last-bit difference into points of mAP)
        return F.pad(input, (pad_w, pad_w, pad_h, pad_h)), (0, 0)


def _conv_block(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, norm: bool = True,
                conv: type[nn.Conv2d] = PaddedConv2d, act: bool = True) -> nn.Sequential:
    """conv -> instance norm (optional) -> LeakyReLU(0.2) (optional), reflect padding (dilated convs:
    DilatedConv2d, which falls back to zeros on maps too small to reflect). conv: the convolution class (D's:
    PenaltyConv2d, for its R1 penalty)."""
    padding = dilation * (kernel - 1) // 2
    if dilation > 1:
        layers = [DilatedConv2d(cin, cout, kernel, stride, padding, dilation=dilation)]
    else:
        layers = [conv(cin, cout, kernel, stride, padding, padding_mode="reflect" if padding else "zeros")]
    if norm:
        layers.append(nn.InstanceNorm2d(cout))
    if act:
        layers.append(_lrelu())
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """conv3x3 -> [IN] -> LReLU -> conv3x3 -> [IN] -> + x (no activation after the add)."""

    def __init__(self, dim: int, norm: bool = True, conv: type[nn.Conv2d] = PaddedConv2d):
        super().__init__()
        self.body = nn.Sequential(
            conv(dim, dim, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(dim) if norm else nn.Identity(), _lrelu(),
            conv(dim, dim, 3, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(dim) if norm else nn.Identity())

    def forward(self, x):
        return x + self.body(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch and three branches of 1x1 -> LReLU -> dilated 3x3 (rates 3,
    6, 9; reflect padding where the map allows, see DilatedConv2d), each of dim/2 channels with instance norm,
    concatenated (2 * dim channels). As in the published block, each branch ends in its instance norm without
    activation."""

    RATES = (3, 6, 9)

    def __init__(self, dim: int):
        super().__init__()
        part = max(1, dim // 2)
        self.branches = nn.ModuleList([_conv_block(dim, part, 1, act=False)])
        for rate in self.RATES:
            self.branches.append(nn.Sequential(_conv_block(dim, part, 1),
                                               _conv_block(part, part, 3, dilation=rate, act=False)))
        self.out_channels = part * (1 + len(self.RATES))

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class StructureEncoder(nn.Module):
    """Es: gray input (the channel mean of the normalized image), convs 1-16-32-32-64 (the 1st and 4th with
    stride 2, as in the published encoder), 4 IN ResBlocks, ASPP, 1x1 conv + instance norm to the 128-channel
    structure code (H/4 x W/4), with no activation (the published ASPP's fusion layer)."""

    def __init__(self, width: float = 1.0, code_channels: int = 128, res_blocks: int = 4):
        super().__init__()
        c16, c32, c64 = (scaled_channels(c, width) for c in (16, 32, 64))
        self.code_channels = scaled_channels(code_channels, width)
        self.stem = nn.Sequential(
            _conv_block(1, c16, 3, stride=2), _conv_block(c16, c32, 3),
            _conv_block(c32, c32, 3), _conv_block(c32, c64, 3, stride=2))
        self.res = nn.Sequential(*[ResBlock(c64) for _ in range(res_blocks)])
        self.aspp = ASPP(c64)
        self.project = _conv_block(self.aspp.out_channels, self.code_channels, 1, act=False)

    @staticmethod
    def gray(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1, keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) normalized, or (N, 1, H, W) already gray -> s (N, 128, H/4, W/4)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"StructureEncoder: images must be (N, 3 or 1, H, W), got {tuple(images.shape)}")
        x = self.gray(images) if images.shape[1] == 3 else images
        return self.project(self.aspp(self.res(self.stem(x))))


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of each sample with a per-channel affine, as the published decoder (MUNIT's) has
    it: y = (x - mean) / (std + eps) * weight + bias, std the unbiased standard deviation (eps outside the root,
    not F.layer_norm's sqrt(biased var + eps)), statistics in float32 for half inputs, weight initialized
    uniform in [0, 1) and bias at 0."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels).uniform_())
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        # Not F.layer_norm (another formula, and its CUDA kernels give each row to one thread block: here a row is
        # a whole sample, C*H*W of 0.5M-1M at 256x128, so a batch of 8 kept 8 blocks busy, 1.15 ms a call on an
        # H100 in the eager reference profile of DG-Net, about 40 GB/s). var_mean splits long rows over the device.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        var, mean = torch.var_mean(xf.flatten(1), dim=1, correction=1)
        # The floor only matters for a constant sample (x - mean = 0 there), whose sqrt would give a NaN gradient.
        std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        y = (xf - mean.view(-1, 1, 1, 1)) / (std + self.eps).view(-1, 1, 1, 1)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Decoder(nn.Module):
    """G: 4 AdaIN ResBlocks (conv -> AdaIN -> LReLU(0.2) -> conv -> AdaIN -> + x, via ``reidfast.ops.adain``),
    then twice (nearest x2 -> 5x5 conv -> layer norm -> LReLU), then two 3x3 conv + LReLU and a 1x1 conv to 3
    channels. No tanh: images live in ImageNet-normalized space. The AdaIN parameters are forward arguments."""

    def __init__(self, width: float = 1.0, code_channels: int = 128, res_blocks: int = 4):
        super().__init__()
        dim = scaled_channels(code_channels, width)
        self.dim = dim
        self.blocks = nn.ModuleList([AdaINResBlock(dim, activation="lrelu") for _ in range(res_blocks)])
        up = []
        for _ in range(2):
            half = max(1, dim // 2)  # at least one channel at the narrowest test widths
            up += [nn.Upsample(scale_factor=2, mode="nearest"),
                   PaddedConv2d(dim, half, 5, padding=2, padding_mode="reflect"), LayerNorm2d(half), _lrelu()]
            dim = half
        self.up = nn.Sequential(*up)
        self.out = nn.Sequential(_conv_block(dim, dim, 3, norm=False), _conv_block(dim, dim, 3, norm=False),
                                 nn.Conv2d(dim, 3, 1))

    @property
    def style_sizes(self) -> list[int]:
        """Style parameters per block, (N, 4 * dim) laid out [weight1, bias1, weight2, bias2]."""
        return [b.num_style_params for b in self.blocks]

    def forward(self, structure: torch.Tensor, styles) -> torch.Tensor:
        if len(styles) != len(self.blocks):
            raise ValueError(f"Decoder: needs {len(self.blocks)} style tensors (one per AdaIN ResBlock), got "
                             f"{len(styles)}")
        x = structure
        for block, style in zip(self.blocks, styles):
            x = block(x, style)
        return self.out(self.up(x))


class MLP(nn.Module):
    """Linear layers with LeakyReLU(0.2) between them; the last output is raw."""

    def __init__(self, sizes):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_lrelu())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class AdaINParams(nn.Module):
    """The appearance code (N, 8192) -> per ResBlock the style tensor (N, 4 * dim) [w1, b1, w2, b2].

    The code is cut into ``blocks`` consecutive slices of code_features / blocks (2048 of the 8192: the code is
    the (N, 2048, 4, 1) part pooling flattened, so a slice is 512 channels over the 4 parts). ResBlock i reads
    slice i only: one MLP gives both its AdaIN weights and one both its biases (2048 -> 512 -> 512 -> 2 * dim,
    with dim = 128: the published 2048-512-512-256 MLPs). Raw outputs: no 1 + gamma offset.
    """

    def __init__(self, code_features: int, dim: int, blocks: int = 4, width: float = 1.0, hidden: int = 512):
        super().__init__()
        if code_features % blocks:
            raise ValueError(f"AdaINParams: code_features ({code_features}) must be a multiple of blocks ({blocks})")
        h = scaled_channels(hidden, width)
        self.dim, self.code_features = dim, code_features
        part = code_features // blocks
        self.part_features = part
        self.weights = nn.ModuleList([MLP([part, h, h, 2 * dim]) for _ in range(blocks)])
        self.biases = nn.ModuleList([MLP([part, h, h, 2 * dim]) for _ in range(blocks)])

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        if code.dim() != 2 or code.shape[1] != self.code_features:
            raise ValueError(f"AdaINParams: code must be (N, {self.code_features}), got {tuple(code.shape)}")
        styles = []
        for part, mlp_w, mlp_b in zip(code.split(self.part_features, dim=1), self.weights, self.biases):
            w1, w2 = mlp_w(part).split(self.dim, dim=1)
            b1, b2 = mlp_b(part).split(self.dim, dim=1)
            styles.append(torch.cat([w1, b1, w2, b2], dim=1))
        return styles


class Generator(nn.Module):
    """Es + the AdaIN MLPs + G: the generator-side networks (one optimizer), initialized as the published
    configuration (init_weights "kaiming"). ``forward(s, f)`` decodes; ``encoder`` is Es (a module of its own, so
    that each can be wrapped or compiled separately)."""

    def __init__(self, code_features: int, width: float = 1.0):
        super().__init__()
        self.encoder = StructureEncoder(width)
        self.decoder = Decoder(width)
        self.mlp = AdaINParams(code_features, self.decoder.dim, len(self.decoder.blocks), width)
        init_weights(self, "kaiming")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        return self.decoder(structure, self.mlp(appearance))

    def forward(self, structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        return self.decode(structure, appearance)


class PatchDiscriminator(nn.Module):
    """One scale: 1x1-32, 3x3-32, s2 3x3-32, 3x3-32, s2 3x3-64, 4 ResBlocks of 64 (no norm), 1x1 to 1. Its
    convolutions are PenaltyConv2d: the R1 penalty differentiates its input gradient."""

    def __init__(self, width: float = 1.0, res_blocks: int = 4):
        super().__init__()
        c32, c64 = scaled_channels(32, width), scaled_channels(64, width)
        conv = PenaltyConv2d
        self.net = nn.Sequential(
            _conv_block(3, c32, 1, norm=False, conv=conv), _conv_block(c32, c32, 3, norm=False, conv=conv),
            _conv_block(c32, c32, 3, stride=2, norm=False, conv=conv), _conv_block(c32, c32, 3, norm=False, conv=conv),
            _conv_block(c32, c64, 3, stride=2, norm=False, conv=conv),
            *[ResBlock(c64, norm=False, conv=conv) for _ in range(res_blocks)], conv(c64, 1, 1))

    def forward(self, x):
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """D at 3 scales (full, 1/2, 1/4 by 3x3 average pooling, stride 2); returns one score map per scale. Each
    scale's network is initialized as the published configuration (init_weights "gaussian")."""

    def __init__(self, width: float = 1.0, scales: int = 3):
        super().__init__()
        self.scales = nn.ModuleList([init_weights(PatchDiscriminator(width), "gaussian") for _ in range(scales)])

    @staticmethod
    def downsample(images: torch.Tensor) -> torch.Tensor:
        """One scale down: the input of scale i is the image downsampled i times."""
        return F.avg_pool2d(images, 3, stride=2, padding=1, count_include_pad=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, d in enumerate(self.scales):
            if i:
                images = self.downsample(images)
            outputs.append(d(images))
        return outputs


class AppearanceEncoder(nn.Module):
    """Ea: ResNet-50 with last stride 1 -> feature map (N, C, h, w).

    - appearance code: adaptive max pooling to 4 horizontal parts, (N, 4 * C) (8192-d for ResNet-50);
    - primary and fine-grained ClassBlocks (Linear C-512, BN, dropout 0.5 / 0.75, Linear to K) on global max
      pooling. ``forward`` gives (code, primary logits, fine logits); :meth:`features` the test feature.
    """

    def __init__(self, num_classes: int, backbone_width: int = 64, pretrained="auto", log=print,
                 dropout_primary: float = 0.5, dropout_fine: float = 0.75, bottleneck: int = 512):
        super().__init__()
        self.backbone = resnet50(last_stride=1, width=backbone_width, pretrained=pretrained, log=log)
        channels = self.backbone.out_channels
        self.code_features = PARTS * channels
        self.primary = ClassBlock(channels, num_classes, bottleneck, dropout_primary)
        self.fine = ClassBlock(channels, num_classes, bottleneck, dropout_fine)

    @staticmethod
    def code_of(feature_map: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(feature_map, (PARTS, 1)).flatten(1)

    def appearance(self, images: torch.Tensor) -> torch.Tensor:
        return self.code_of(self.backbone(images))

    def forward(self, images: torch.Tensor):
        fmap = self.backbone(images)
        pooled = fmap.amax(dim=(2, 3))
        return self.code_of(fmap), self.primary(pooled)[0], self.fine(pooled)[0]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Test feature, as the published test script computes it: per head the 512-d bottleneck of the image
        and of its flip, each L2-normalized, summed and L2-normalized again; the fine half weighted by 0.5;
        concatenated (1024-d)."""
        # one backbone call for both views (evaluation runs in eval mode: no batch statistics are shared)
        pooled = self.backbone(torch.cat([images, images.flip(3)])).amax(dim=(2, 3))
        prim = F.normalize(sum(F.normalize(self.primary.embed(pooled), dim=1).chunk(2)), dim=1)
        fine = F.normalize(sum(F.normalize(self.fine.embed(pooled), dim=1).chunk(2)), dim=1)
        return torch.cat([prim, 0.5 * fine], dim=1)


def parameter_counts(modules: dict[str, nn.Module]) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
