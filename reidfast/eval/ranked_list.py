"""A picture of ranked lists: each row a query and its top-k gallery images, green border for a true match,
red for a wrong one. The order is the evaluation's: its distances, ties by gallery index, and its junk (same
identity and camera; also label -1 under the market AP mode) left out, as rank_eval's protocol does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data import Sample
from ..ops.reference import junk_mask
from .features import labels

GREEN, RED, QUERY = (40, 180, 60), (220, 40, 40), (60, 60, 60)


def ranked_gallery(distances: torch.Tensor, query: Sample, gallery: Sequence[Sample], top: int,
                   ap_mode: str = "market") -> list[int]:
    """Gallery indices best first by a query's row of distances (G,), junk removed, ties by gallery index."""
    order = np.argsort(distances.double().numpy(), kind="stable")
    g_pids, g_camids = labels(gallery)
    junk = junk_mask(query.pid, query.camid, g_pids, g_camids, ap_mode)
    return order[~junk[order]][:top].tolist()


def save_ranked_lists(path: str | os.PathLike, distances: torch.Tensor, query: Sequence[Sample],
                      gallery: Sequence[Sample], query_indices: Sequence[int], ap_mode: str = "market", top: int = 10,
                      size: tuple[int, int] = (128, 64), border: int = 3) -> Path:
    """One row per query in `query_indices`, whose rows of the evaluated distances are `distances`
    (len(query_indices), G): the query (grey border), a gap, then its top-`top` gallery images."""
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
        for col, gi in enumerate(ranked_gallery(distances[row], query[qi], gallery, top, ap_mode)):
            paste(gallery[gi], cell_w * (col + 1) + gap, y, GREEN if gallery[gi].pid == query[qi].pid else RED)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
