"""Channel widths of the GAN networks under a width multiplier (``--gan-width``: 1 is the paper's width)."""
from __future__ import annotations


def scaled_channels(channels: int, width: float) -> int:
    """`channels` times `width`, rounded, at least 1. A width that is not a positive number is a ValueError."""
    if not (isinstance(width, (int, float)) and width > 0 and width != float("inf")):
        raise ValueError(f"the width multiplier (--gan-width) must be a positive number, got {width!r}")
    return max(1, int(round(channels * width)))
