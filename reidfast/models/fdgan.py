"""FD-GAN's networks, networks only, no losses ('FD-GAN: Pose-guided Feature Distilling GAN for Robust Person
Re-identification', NeurIPS 2018).

- :class:`ImageEncoder` (E): ResNet-50, global average pooling -> the visual feature (2048-d at width 64), the
  test-time feature.
- :class:`DifferenceHead`: the Siamese head, (f1 - f2)^2 -> BatchNorm1d -> Linear. V is one with 2 outputs
  (different / same); D_id's is one with a single logit.
- :class:`Verifier` (V): the 2-way head on two features.
- :class:`PoseEncoder` + :class:`PoseGenerator` (G): 18-channel pose map -> 128-d pose feature; visual feature,
  pose feature and 256-d N(0, I) noise concatenated -> transposed-conv upsampling -> 3 x H x W image.
- :class:`IdentityDiscriminator` (D_id): its own ResNet-50 and a :class:`DifferenceHead` with one logit.
- :class:`PoseDiscriminator` (D_pd): PatchGAN (4x4 convs 64-128-256-512-1) on image + pose map (21 channels).

Image range. The re-id networks (E, D_id) read ImageNet-normalized images, as everywhere in reidfast. G ends in
tanh, and its output y in [-1, 1] is the image in *generator range*: pixel value in [0, 1] = (y + 1) / 2.
:func:`to_generator_range` and :func:`from_generator_range` convert between the two (both affine, so gradients
pass); the reconstruction losses and D_pd work in generator range, D_id gets G's output converted to
ImageNet-normalized range, so every network sees one consistent scale.

Siamese calls as one batched pass. E, D_id and D_pd use :class:`reidfast.nn.SplitBatchNorm2d` (a drop-in
BatchNorm2d with the same parameters and state dict): under :func:`reidfast.nn.batchnorm_groups` ``(module, g)``, a
batch made of g equal groups is normalized group by group with each group's own statistics, and the running
statistics are updated once per group in order, exactly as g separate calls of the module would. The convolutions
run once on the whole batch.
``width`` / ``gan_width`` scale the channel counts for CPU runs (64 / 1.0 are the paper's networks).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.transforms import denormalize, normalize
from ..nn.batch_norm import split_batchnorm
from .backbone import resnet50
from .init import init_weights
from .width import scaled_channels

POSE_CHANNELS = 18
POSE_FEATURE = 128
NOISE_FEATURE = 256
DOWNSAMPLING = 32  # G's and the pose encoder's 5 stride-2 stages: image sides must be multiples of 32


def to_generator_range(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized images -> generator range [-1, 1] (2 * pixel - 1)."""
    return denormalize(images, clamp=False) * 2 - 1


def from_generator_range(images: torch.Tensor) -> torch.Tensor:
    """Generator range [-1, 1] -> ImageNet-normalized images (what E and D_id read)."""
    return normalize((images + 1) * 0.5)


def set_batchnorm_eval(module: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics used and left unchanged; affine parameters still train):
    the frozen statistics of stages II and III."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class ImageEncoder(nn.Module):
    """E: ResNet-50 -> global average pooling -> (B, 32 * width) visual feature (2048-d for ResNet-50)."""

    def __init__(self, width: int = 64, pretrained="auto", log=print):
        super().__init__()
        self.backbone = split_batchnorm(resnet50(last_stride=2, width=width, pretrained=pretrained, log=log))
        self.out_features = self.backbone.out_channels

    def forward(self, images):
        return self.backbone(images).mean((2, 3))


class DifferenceHead(nn.Module):
    """(f1 - f2)^2 -> BatchNorm1d -> Linear(features, outputs): the Siamese heads of V and D_id."""

    def __init__(self, features: int, outputs: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(features)
        self.fc = nn.Linear(features, outputs)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, f1, f2):
        return self.fc(self.bn((f1 - f2).square()))


class Verifier(DifferenceHead):
    """V: logits (B, 2) of (different, same) for two visual features."""

    def __init__(self, features: int):
        super().__init__(features, 2)

    def same_probability(self, f1, f2):
        return self(f1, f2).float().softmax(1)[:, 1]


class IdentityDiscriminator(nn.Module):
    """D_id: a ResNet-50 of its own on both images and a one-logit difference head ("same person, both real").

    ``features(images)`` is the ResNet-50 pooled feature, ``head(f1, f2)`` the logit, ``forward(x1, x2)`` both.
    :meth:`init_from` copies a stage-I E and V into it (the head's logit = V's same-minus-different logit).
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.backbone = split_batchnorm(resnet50(last_stride=2, width=width, pretrained="none", log=lambda m: None))
        self.head = DifferenceHead(self.backbone.out_channels, 1)

    def features(self, images):
        return self.backbone(images).mean((2, 3))

    def forward(self, x1, x2):
        return self.head(self.features(x1), self.features(x2)).squeeze(1)

    @torch.no_grad()
    def init_from(self, encoder: ImageEncoder, verifier: Verifier) -> None:
        self.backbone.load_state_dict(encoder.backbone.state_dict())
        self.head.bn.load_state_dict(verifier.bn.state_dict())
        self.head.fc.weight.copy_(verifier.fc.weight[1:2] - verifier.fc.weight[0:1])
        self.head.fc.bias.copy_(verifier.fc.bias[1:2] - verifier.fc.bias[0:1])


def _down(cin: int, cout: int, norm: bool = True, bias: bool | None = None) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm if bias is None else bias)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _check_size(height: int, width: int, who: str) -> None:
    if height % DOWNSAMPLING or width % DOWNSAMPLING or height < DOWNSAMPLING or width < DOWNSAMPLING:
        raise ValueError(f"{who}: image height and width must be positive multiples of {DOWNSAMPLING} "
                         f"(5 stride-2 stages), got {height}x{width}")


class PoseEncoder(nn.Module):
    """18-channel pose map (B, 18, H, W) -> (B, 128): 5 conv(4x4, stride 2)-BN-LeakyReLU blocks
    (64-128-256-512-512 channels at gan_width 1; the first without BN, and without bias as the published encoder)
    to H/32 x W/32, then a conv over that whole map to 128-d (a fully connected layer) and BN: the published
    encoder's pose feature, with no activation of its own (the generator's ReLU on the whole code follows)."""

    def __init__(self, height: int, width: int, gan_width: float = 1.0):
        super().__init__()
        _check_size(height, width, "PoseEncoder")
        channels = [scaled_channels(c, gan_width) for c in (64, 128, 256, 512, 512)]
        layers, cin = [], POSE_CHANNELS
        for i, c in enumerate(channels):
            layers += _down(cin, c, norm=i > 0, bias=False)  # no norm on the first block (pix2pix convention)
            cin = c
        # The conv over the whole H/32 x W/32 map is the fully connected layer it is written as (see PoseGenerator).
        cells = (height // DOWNSAMPLING) * (width // DOWNSAMPLING)
        layers += [nn.Flatten(), nn.Linear(cin * cells, POSE_FEATURE, bias=False), nn.BatchNorm1d(POSE_FEATURE)]
        self.net = nn.Sequential(*layers)

    def forward(self, pose):
        return self.net(pose)


class PoseGenerator(nn.Module):
    """G: ``forward(visual (B, C), pose map (B, 18, H, W), noise (B, 256))`` -> (B, 3, H, W) in generator range.

    ReLU([visual, pose feature, noise]) (C + 128 + 256; the published decoder rectifies the code it starts from,
    the noise's and the pose feature's negative halves included) -> fully connected layer to H/32 x W/32 (512 ch)
    -> 5 transposed conv(4x4, stride 2) blocks (512-256-128-64 ch, BN, dropout 0.2, ReLU) -> 3 channels (no bias),
    tanh.
    """

    def __init__(self, visual_features: int, height: int = 256, width: int = 128, gan_width: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        _check_size(height, width, "PoseGenerator")
        self.height, self.width = height, width
        self.pose_encoder = PoseEncoder(height, width, gan_width)
        channels = [scaled_channels(c, gan_width) for c in (512, 512, 256, 128, 64)]
        cin = visual_features + POSE_FEATURE + NOISE_FEATURE
        # The transposed conv from the 1x1 code to the H/32 x W/32 map (and the pose encoder's conv over the whole
        # map) is a fully connected layer, and is written as one: as a conv with a 1x1 side its memory format is
        # ambiguous, and under torch.compile with channels_last on CUDA its backward returned the weight gradient
        # in another layout than the compiled graph had planned for (an assertion error in the first step).
        map_size = (height // DOWNSAMPLING, width // DOWNSAMPLING)
        layers = [nn.Linear(cin, channels[0] * map_size[0] * map_size[1], bias=False),
                  nn.Unflatten(1, (channels[0], *map_size)),
                  nn.BatchNorm2d(channels[0]), nn.Dropout(dropout), nn.ReLU(inplace=True)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.Dropout(dropout), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, stride=2, padding=1, bias=False), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        init_weights(self, "gaussian", zero_bias=False, batchnorm=True)

    def forward(self, visual, pose, noise):
        code = torch.cat([visual.reshape(visual.shape[0], -1), self.pose_encoder(pose).to(visual.dtype),
                          noise.reshape(noise.shape[0], -1).to(visual.dtype)], dim=1)
        return self.decoder(torch.relu(code))


class PoseDiscriminator(nn.Module):
    """D_pd: PatchGAN on [image in generator range, pose map] (21 channels) -> (B, 1, h, w) patch logits.

    4x4 convs 64-128-256-512-1: stride 2, 2, 2, then 1, 1 (the 70x70 PatchGAN), BatchNorm from the second on.
    """

    def __init__(self, gan_width: float = 1.0):
        super().__init__()
        c = [scaled_channels(x, gan_width) for x in (64, 128, 256, 512)]
        layers = _down(3 + POSE_CHANNELS, c[0], norm=False) + _down(c[0], c[1]) + _down(c[1], c[2])
        layers += [nn.Conv2d(c[2], c[3], 4, stride=1, padding=1, bias=False), nn.BatchNorm2d(c[3]),
                   nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c[3], 1, 4, stride=1, padding=1)]
        self.net = split_batchnorm(nn.Sequential(*layers))
        init_weights(self, "gaussian", zero_bias=False, batchnorm=True)

    def forward(self, images, pose):
        return self.net(torch.cat([images, pose.to(images.dtype)], dim=1))
