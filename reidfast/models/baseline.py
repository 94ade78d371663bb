"""The ID-classification re-id baseline: ResNet-50, global average pooling, ClassBlock head.

ClassBlock is the head of the widely used PyTorch re-id baseline: Linear(2048 -> 512), BatchNorm1d, Dropout,
Linear(512 -> num_classes). The 512-d output of the BatchNorm is the test-time feature. With ``bottleneck=0`` it is
IDE's head instead: Dropout, then the last FC straight from the pooled feature to the identities.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import ResNet50, resnet50


class ClassBlock(nn.Module):
    def __init__(self, in_features: int, num_classes: int, bottleneck: int = 512, dropout: float = 0.5):
        super().__init__()
        if bottleneck < 0:
            raise ValueError(f"ClassBlock: bottleneck must be >= 0 (0: none), got {bottleneck}")
        # (the modules are made and initialized in this order whatever the bottleneck: the random draws, and with
        # them every run of the 512-d head, stay those of the head before the option existed)
        self.embed = (nn.Sequential(nn.Linear(in_features, bottleneck), nn.BatchNorm1d(bottleneck)) if bottleneck
                      else nn.Identity())  # IDE: the pooled feature itself
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(bottleneck or in_features, num_classes)
        if bottleneck:  # the published initialisation: kaiming for the embedding, N(1, 0.02) BN scale
            nn.init.kaiming_normal_(self.embed[0].weight, a=0, mode="fan_out")
            nn.init.zeros_(self.embed[0].bias)
            nn.init.normal_(self.embed[1].weight, 1.0, 0.02)
            nn.init.zeros_(self.embed[1].bias)
        nn.init.normal_(self.classifier.weight, std=0.001)  # small classifier weights, as published
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        feature = self.embed(x)
        return self.classifier(self.dropout(feature)), feature


class ReidBaseline(nn.Module):
    """``forward(images)`` gives (logits, feature); :meth:`features` the test-time feature only."""

    def __init__(self, num_classes: int, last_stride: int = 2, width: int = 64, bottleneck: int = 512,
                 dropout: float = 0.5, pretrained="auto", log=print, backbone: ResNet50 | None = None):
        super().__init__()
        self.backbone = backbone if backbone is not None else resnet50(last_stride, width, pretrained, log=log)
        self.head = ClassBlock(self.backbone.out_channels, num_classes, bottleneck, dropout)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).mean((2, 3))

    def forward(self, images):
        return self.head(self.pooled(images))

    def features(self, images):
        return self.head.embed(self.pooled(images))
