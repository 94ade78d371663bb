"""Channel widths of the GAN networks under a width multiplier (``--gan-width``: 1 is the paper's width)."""
from __future__ import annotations


def scaled_channels(channels: int, width: float) -> int:
    """`channels` times `width`, rounded, at least 1."""
    return max(1, int(round(channels * width)))
