"""The synthetic dataset as a registered dataset: generated on first use into the user cache, then read.

Generation itself lives in :mod:`reidfast.data.synthetic` (also the command line tool); it is imported lazily so
``python -m reidfast.data.synthetic`` does not find its own module already imported by the package.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .base import ReidDataset
from .datasets import parse_market_name, read_market_style
from .registry import default_cache_dir, register_dataset

log = logging.getLogger(__name__)

def generate_synthetic(out: str | os.PathLike, **params) -> dict:
    """Write a synthetic dataset into `out`; see :func:`reidfast.data.synthetic.generate`."""
    from .synthetic import generate
    return generate(out, **params)


def cached_dataset_dir(ids: int = 200, cameras: int = 6, domain: str = "a", seed: int = 0, height: int = 128,
                       width: int = 64, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached copy for these parameters lives (the name encodes every parameter and the format)."""
    from .synthetic import FORMAT_VERSION
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "synthetic" / f"market-v{FORMAT_VERSION}-ids{ids}-cam{cameras}-{domain}-seed{seed}-{height}x{width}"


@register_dataset("synthetic", "synthetic-market")
def read_synthetic(root=None, ids: int = 200, cameras: int = 6, domain: str = "a", seed: int = 0,
                   height: int = 128, width: int = 64, strict: bool = True) -> ReidDataset:
    """The synthetic dataset at `root`, generated there first if `root` does not exist or is empty.

    Without a root it lives in the user cache and is generated on first use.
    """
    from .synthetic import generate_atomically
    params = dict(ids=ids, cameras=cameras, domain=domain, seed=seed, height=height, width=width)
    if root is None:
        folder = cached_dataset_dir(**params)
        if not folder.exists():
            log.info("generating the synthetic dataset into %s (once)", folder)
        generate_atomically(folder, **params)
    else:
        folder = Path(root)
        if not folder.exists() or not any(folder.iterdir()):
            generate_atomically(folder, **params)
    meta = folder / "synthetic.json"
    info = json.loads(meta.read_text()) if meta.exists() else {}
    # an existing folder names its own domain (the `domain` argument only says what to generate)
    dataset = read_market_style(folder, "synthetic", parse_market_name, "0002_c1s1_000451_03.jpg", 9, strict,
                                name=f"synthetic-{info.get('domain', domain)}")
    dataset.keypoints_csv = folder / "annotations.csv"
    dataset.masks_dir = folder / "masks"
    dataset.info = info
    return dataset


