"""A picture of ranked lists: each row a query and its top-k gallery images, green border for a true match,
red for a wrong one (junk gallery items, same identity and camera, are left out as the protocol does)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data import Sample

GREEN, RED, QUERY = (40, 180, 60), (220, 40, 40), (60, 60, 60)


def ranked_gallery(qf: torch.Tensor, gf: torch.Tensor, query: Sample, gallery: Sequence[Sample], index: int,
                   top: int) -> list[int]:
    """Gallery indices of query `index` best first (cosine on unit features), junk removed, ties by index."""
    scores = (gf @ qf[index]).numpy()
    order = np.argsort(-scores, kind="stable")
    keep = [g for g in order.tolist()
            if gallery[g].pid != -1 and not (gallery[g].pid == query.pid and gallery[g].camid == query.camid)]
    return keep[:top]


def save_ranked_lists(path: str | os.PathLike, qf, gf, query: Sequence[Sample], gallery: Sequence[Sample],
                      query_indices: Sequence[int], top: int = 10, size: tuple[int, int] = (128, 64),
                      border: int = 3) -> Path:
    """One row per query in `query_indices`: the query (grey border), a gap, then its top-`top` matches."""
    h, w = size
    cell_w, cell_h, gap = w + 2 * border + 4, h + 2 * border + 4, 12
    canvas = Image.new("RGB", (cell_w * (top + 1) + gap, cell_h * len(query_indices)), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(sample: Sample, x: int, y: int, colour) -> None:
        with Image.open(sample.path) as img:
            canvas.paste(img.convert("RGB").resize((w, h), Image.BILINEAR), (x + border + 2, y + border + 2))
        draw.rectangle([x + 2, y + 2, x + w + 2 * border + 1, y + h + 2 * border + 1], outline=colour, width=border)

    for row, qi in enumerate(query_indices):
        y = row * cell_h
        paste(query[qi], 0, y, QUERY)
        for col, gi in enumerate(ranked_gallery(qf, gf, query[qi], gallery, qi, top)):
            paste(gallery[gi], cell_w * (col + 1) + gap, y, GREEN if gallery[gi].pid == query[qi].pid else RED)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
