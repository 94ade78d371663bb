"""ResNet-50 in torchvision's ImageNet layout (parameter names match, so its state dict loads by key).

Re-id changes only two things: no classifier (``fc``), and an optional last stride of 1 (layer4 keeps the
resolution of layer3, doubling the final feature map, as most re-id baselines do). ``width`` scales every
channel count (64 is ResNet-50 proper; smaller widths exist for quick CPU runs and tests and cannot load
ImageNet weights).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
from torch import nn

BLOCKS = (3, 4, 6, 3)  # ResNet-50
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision's v1.5 does), 1x1 expand, plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet50(nn.Module):
    """ResNet-50 trunk: ``forward(x)`` gives the layer4 feature map (B, 32 * width, H/32 or H/16, ...)."""

    def __init__(self, last_stride: int = 2, width: int = 64):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet50: last_stride must be 1 or 2, got {last_stride}")
        if width < 1:
            raise ValueError(f"ResNet50: width must be >= 1, got {width}")
        self.width, self.last_stride = width, last_stride
        self.pretrained_from = None  # the weights file it was initialised from, if any
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        for i, (blocks, stride) in enumerate(zip(BLOCKS, (1, 2, 2, last_stride))):
            channels = width * 2 ** i
            layer = [Bottleneck(in_channels, channels, stride)]
            layer += [Bottleneck(channels * EXPANSION, channels) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            in_channels = channels * EXPANSION
        self.out_channels = in_channels
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init of the last BN of each block is not used: torchvision's default does not do it either

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# torchvision's original ImageNet weights of ResNet-50 (IMAGENET1K_V1, under its current and its older file name):
# the ones the published DG-Net, FD-GAN and re-id baselines start from. Its IMAGENET1K_V2 weights (another training
# recipe, 80.9% instead of 76.1% top-1) give other re-id results.
RESNET50_V1_FILES = ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth")


def hub_cache_resnet50() -> Path | None:
    """The torchvision ResNet-50 weights in the torch hub cache, if a download left them there: the original (V1)
    weights when present, else the newest other file."""
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser() / "hub" / "checkpoints"
    found = sorted(glob.glob(str(hub / "resnet50-*.pth")), key=os.path.getmtime, reverse=True)
    found.sort(key=lambda path: Path(path).name not in RESNET50_V1_FILES)  # stable: V1 first, then newest first
    return Path(found[0]) if found else None


def load_imagenet_weights(model: ResNet50, path: str | os.PathLike) -> None:
    """Load a torchvision ``resnet50`` state dict (its ``fc`` is dropped). Any other mismatch is an error."""
    path = Path(path).expanduser()
    if model.width != 64:
        raise ValueError(f"--pretrained needs the full ResNet-50 (width 64); this model has width {model.width}")
    if not path.is_file():  # a ValueError: the training CLI's one-line error for a mistyped path
        raise ValueError(f"--pretrained {path}: no such file (a torchvision resnet50 .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"pretrained weights {path} could not be read: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained weights {path} do not fit ResNet-50: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def resnet50(last_stride: int = 2, width: int = 64, pretrained: str | os.PathLike | None = "auto",
             log=print) -> ResNet50:
    """ResNet-50 with ImageNet weights from `pretrained` (a path), or with "auto" from the torch hub cache if
    a file is there (never downloaded); None, "none" or a reduced width trains from scratch. Says which."""
    model = ResNet50(last_stride=last_stride, width=width)
    if pretrained in (None, "none", ""):
        log(f"backbone: ResNet-50 (width {width}) from scratch (no pretrained weights requested)")
        return model
    if pretrained == "auto":
        if width != 64:
            log(f"backbone: ResNet-50 at reduced width {width}: trained from scratch (ImageNet weights need width 64)")
            return model
        cached = hub_cache_resnet50()
        if cached is None:
            log("backbone: no ResNet-50 ImageNet weights in the torch hub cache (~/.cache/torch/hub/checkpoints); "
                "training from scratch. Pass --pretrained PATH to a torchvision resnet50 .pth to start from ImageNet.")
            return model
        pretrained = cached
    load_imagenet_weights(model, pretrained)
    model.pretrained_from = str(pretrained)
    log(f"backbone: ResNet-50 initialised from ImageNet weights {pretrained}")
    return model
