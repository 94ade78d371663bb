"""What every generation command shares: reading user images at a run's size, and writing image files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from ..data import DatasetFormatError, decode_image, normalize


def load_images(paths: Sequence[str], size: tuple[int, int], device: torch.device, argument: str,
                resize_filter: str = "bilinear") -> torch.Tensor:
    """(N, 3, H, W) ImageNet-normalized images read from `paths` and resized to `size` (the run's (H, W)) with
    `resize_filter` (the method's). `argument` names the command-line flag in errors."""
    if not paths:
        raise ValueError(f"{argument}: give at least one image file")
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{argument}: {path} is not a file")
        try:
            image, _ = decode_image(path, size, resize_filter)
        except DatasetFormatError as exc:  # decode_image's error names the file and the reason
            raise ValueError(f"{argument}: {exc}") from exc
        images.append(image)
    return normalize(torch.stack(images).to(device))


def output_stems(paths: Sequence[str]) -> list[str]:
    """A distinct name stem per input file, for outputs named after their inputs: the file's stem, with its position
    in `paths` appended where stems collide (img1.jpg and other/img1.png give img1_0 and img1_1). Compared
    case-insensitively, since some file systems are."""
    stems = [Path(p).stem for p in paths]
    counts = Counter(s.casefold() for s in stems)
    names = [s if counts[s.casefold()] == 1 else f"{s}_{i}" for i, s in enumerate(stems)]
    if len({n.casefold() for n in names}) < len(names):  # a suffixed name met another input's own (a, x/a, a_1)
        names = [f"{s}_{i}" for i, s in enumerate(stems)]  # distinct: the text after the last "_" is the position
    return names
