"""Modules built on reidfast's ops."""
from .adain import AdaIN2d, AdaINResBlock
from .conv import PenaltyConv2d
from .homography import HomographyTransformer

__all__ = ["AdaIN2d", "AdaINResBlock", "HomographyTransformer", "PenaltyConv2d"]
