"""Modules built on reidfast's ops."""
from .adain import AdaIN2d, AdaINResBlock
from .homography import HomographyTransformer

__all__ = ["AdaIN2d", "AdaINResBlock", "HomographyTransformer"]
