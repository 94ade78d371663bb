"""Sample image grids as PNG, for the generative methods' progress pictures."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import denormalize


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, normalized: bool = True,
                    padding: int = 2) -> Path:
    """Write a (N, 3, H, W) batch as one PNG grid, `nrow` images per row.

    `normalized` images (ImageNet mean/std, what the networks see) are mapped back first; otherwise the values
    must already be in [0, 1]. Rows of a generative method's grid are usually [inputs, outputs, ...].
    """
    images = images.detach().float().cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_image_grid: expected (N, 1|3, H, W), got {tuple(images.shape)}")
    images = denormalize(images) if normalized else images.clamp(0, 1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = torch.ones(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(-1) if c == 1 else array).save(path)
    return path
