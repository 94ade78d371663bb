"""Binary person masks stored as PNG files, for methods that need the foreground (SA-GAN).

Two places are searched for the mask of an image, in this order:

1. a parallel folder: ``<masks_dir>/<the image's path under the dataset folder, suffix .png>``, e.g.
   ``<masks_dir>/bounding_box_train/<stem>.png`` for Market-1501 (the synthetic dataset's ``masks/`` layout) and
   ``<masks_dir>/train/0000/<stem>.png`` for MSMT17, whose images lie in identity folders. Without the dataset
   folder (`root`), or for an image outside it, the image's own folder name stands for the path:
   ``<masks_dir>/<split>/<stem>.png``, the same place for datasets with flat split folders;
2. next to the image: ``<stem><suffix>.png`` in the image's folder (default suffix ``_mask``).

A mask's foreground is every pixel above 127, or above 0 when the file only holds 0/1 values.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .base import MASK_SIBLING_SUFFIX, ReidDataset

log = logging.getLogger(__name__)


class MaskNotFoundError(FileNotFoundError):
    """No mask file exists for an image (and the reader was asked to fail rather than fall back)."""


class MaskReader:
    """Find and decode the mask of an image.

    `root` is the dataset folder the images' paths are taken under in `masks_dir` (the module docstring);
    :meth:`for_dataset` sets it. ``missing="error"`` raises :class:`MaskNotFoundError` naming the paths tried;
    ``missing="ones"`` returns an all-ones mask (the whole box is foreground) and logs a warning the first time it
    happens.
    """

    def __init__(self, masks_dir: str | os.PathLike | None = None, sibling_suffix: str = MASK_SIBLING_SUFFIX,
                 missing: str = "error", root: str | os.PathLike | None = None):
        if missing not in ("error", "ones"):
            raise ValueError(f"MaskReader: missing must be 'error' or 'ones', got {missing!r}")
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.root = Path(root) if root is not None else None
        self.sibling_suffix = sibling_suffix
        self.missing = missing
        self._warned = False

    @classmethod
    def for_dataset(cls, dataset: ReidDataset, masks_dir: str | os.PathLike | None = None,
                    missing: str = "error") -> MaskReader:
        """The reader of a dataset's masks: the parallel folder is `masks_dir`, else the dataset's own masks folder
        (the synthetic dataset's ``masks/``), with the images' paths taken under the dataset's folder."""
        return cls(masks_dir if masks_dir else dataset.masks_dir, missing=missing, root=dataset.root)

    def relative_path(self, image_path: str | os.PathLike) -> Path:
        """Where an image's mask lies under `masks_dir`: its path under `root`, with the suffix ``.png``."""
        image_path = Path(image_path)
        if self.root is not None and image_path.is_relative_to(self.root):
            return image_path.relative_to(self.root).with_suffix(".png")
        return Path(image_path.parent.name, image_path.name).with_suffix(".png")

    def candidates(self, image_path: str | os.PathLike) -> list[Path]:
        image_path = Path(image_path)
        found = []
        if self.masks_dir is not None:
            found.append(self.masks_dir / self.relative_path(image_path))
        found.append(image_path.with_name(image_path.stem + self.sibling_suffix + ".png"))
        return found

    def find(self, image_path: str | os.PathLike) -> Path | None:
        return next((p for p in self.candidates(image_path) if p.is_file()), None)

    def read(self, image_path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 mask in {0, 1}; `size` (height, width) resizes it (nearest neighbour)."""
        path = self.find(image_path)
        if path is None:
            tried = ", ".join(str(p) for p in self.candidates(image_path))
            if self.missing == "error":
                raise MaskNotFoundError(f"no mask for {image_path}; looked for {tried} "
                                        f"(use missing='ones' to treat the whole box as foreground)")
            if not self._warned:
                log.warning("no mask for %s (looked for %s); using all-ones masks where masks are missing",
                            image_path, tried)
                self._warned = True
            if size is None:
                with Image.open(image_path) as img:
                    size = (img.height, img.width)
            return np.ones(size, np.uint8)
        return decode_mask(path, size)


def decode_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint8 mask in {0, 1} of one mask file (the foreground rule in the module docstring); `size`
    (height, width) resizes it (nearest neighbour)."""
    with Image.open(path) as img:
        mask = img.convert("L")
        if size is not None and (mask.height, mask.width) != tuple(size):
            mask = mask.resize((size[1], size[0]), Image.NEAREST)
        values = np.asarray(mask)
    threshold = 127 if values.max(initial=0) > 1 else 0
    return (values > threshold).astype(np.uint8)
