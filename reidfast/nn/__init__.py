"""Modules built on reidfast's ops."""
from .adain import AdaIN2d, AdaINResBlock

__all__ = ["AdaIN2d", "AdaINResBlock"]
