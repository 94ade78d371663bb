"""Image datasets that decode in DataLoader worker processes and hand uint8 tensors to the device.

Decoding (PIL) and resizing happen in the workers; everything random (flip, crop, erasing) happens afterwards
on the device, on whole batches (:mod:`reidfast.data.transforms`), so the workers stay deterministic and cheap.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import DatasetFormatError, Sample
from .masks import MaskReader
from .pose import NUM_KEYPOINTS, scale_keypoints


# The resize filters a method may ask for (``Method.resize_filter``): torchreid resizes bilinearly, DG-Net's
# published pipeline (and the baseline it takes its teacher from) bicubically.
RESIZE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def decode_image(path: str | os.PathLike, size: tuple[int, int] | None = None,
                 resize_filter: str = "bilinear") -> tuple[torch.Tensor, tuple]:
    """(3, H, W) uint8 RGB tensor of an image file, resized to `size` = (height, width) if given, with
    `resize_filter` (a key of RESIZE_FILTERS).

    Also returns the file's own (height, width), which keypoints need to follow a resize. A file that is not a
    readable image (truncated download, wrong format) is a DatasetFormatError naming it.
    """
    try:
        with Image.open(path) as img:
            original = (img.height, img.width)
            img = img.convert("RGB")
            if size is not None and original != tuple(size):
                img = img.resize((size[1], size[0]), RESIZE_FILTERS[resize_filter])
            array = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for unreadable and truncated files
        raise DatasetFormatError(f"{path}: cannot be read as an image ({exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), original


# A path that is a file where a folder is needed (or the reverse), or not writable: a command line reports these
# as "error:" lines (e.g. an --out that names a file), not tracebacks.
PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def check_image_headers(samples, split: str, workers: int = 8) -> None:
    """Open every image of a split far enough to read its format and size (not its pixels), in threads: a file that
    is not an image (a stray text file, an empty download) is a DatasetFormatError now, naming it, instead of when
    the split is first read (a test split: after training). A file truncated inside its pixel data still shows
    only when decoded."""
    from concurrent.futures import ThreadPoolExecutor

    def unreadable(path: str) -> str | None:
        try:
            with Image.open(path) as img:
                img.size
        except (OSError, SyntaxError, ValueError) as exc:
            return f"{path} ({exc})"
        return None

    paths = [s.path for s in samples]
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        bad = [b for b in pool.map(unreadable, paths, chunksize=256) if b is not None]
    if bad:
        listed = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DatasetFormatError(f"{len(bad)} {split} image(s) cannot be read as images: {listed}")


def error_message(exc: BaseException) -> str:
    """An error's message for a command line's "error:" line. An error raised in a DataLoader worker reaches the
    main process with the worker's traceback in its message; its last line is the original message (e.g. a bad
    image file, named), which is what is returned then."""
    if isinstance(exc, PATH_ERRORS) and exc.filename:  # "[Errno 20] Not a directory: 'x'" -> which path, and why
        return f"{exc.filename}: {exc.strerror.lower() if exc.strerror else exc}"
    message = str(exc)
    if "Original Traceback" in message:
        lines = [line for line in message.splitlines() if line.strip()]
        return lines[-1].split(": ", 1)[-1] if lines else message
    return message


class ImageDataset(Dataset):
    """Items of a list of :class:`Sample`, as dicts of tensors.

    ``dataset[i]`` gives ``image`` (3, H, W) uint8, ``pid``, ``camid``, ``index`` (int64 scalars), plus
    ``keypoints`` (18, 2) float32 (x, y) in the returned image's pixels when `keypoints` (image name -> array)
    is given, and ``mask`` (1, H, W) uint8 in {0, 1} when a :class:`MaskReader` is given.
    ``dataset[(i, j, ...)]`` (what the pair samplers yield) stacks those items along a new first dimension.
    `size` = (height, width) resizes every image; without it all images must already share one size to batch.
    ``missing_keypoints="empty"`` gives all-missing keypoints to images the mapping lacks instead of an error.
    `resize_filter`: "bilinear" or "bicubic" (RESIZE_FILTERS).
    """

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int] | None = (128, 64),
                 keypoints: Mapping[str, np.ndarray] | None = None, masks: MaskReader | None = None,
                 missing_keypoints: str = "error", resize_filter: str = "bilinear"):
        if resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"ImageDataset: resize_filter must be one of {', '.join(RESIZE_FILTERS)}, "
                             f"got {resize_filter!r}")
        if missing_keypoints not in ("error", "empty"):
            raise ValueError(f"ImageDataset: missing_keypoints must be 'error' or 'empty', got {missing_keypoints!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"ImageDataset: size must be (height, width), got {size!r}")
        self.samples = list(samples)
        self.size = tuple(size) if size is not None else None
        self.keypoints = keypoints
        self.masks = masks
        self.missing_keypoints = missing_keypoints
        self.resize_filter = resize_filter

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int) -> dict:
        path, pid, camid = self.samples[index]
        image, (h0, w0) = decode_image(path, self.size, self.resize_filter)
        item = {"image": image, "pid": torch.tensor(pid), "camid": torch.tensor(camid), "index": torch.tensor(index)}
        height, width = image.shape[1:]
        if self.keypoints is not None:
            name = Path(path).name
            kp = self.keypoints.get(name)
            if kp is None:
                if self.missing_keypoints == "error":
                    raise KeyError(f"ImageDataset: no keypoints for {name} (pass missing_keypoints='empty' "
                                   f"to treat its keypoints as missing)")
                kp = np.full((NUM_KEYPOINTS, 2), -1.0, np.float32)
            kp = scale_keypoints(np.asarray(kp, np.float32), width / w0, height / h0)
            item["keypoints"] = torch.from_numpy(kp.astype(np.float32))
        if self.masks is not None:
            item["mask"] = torch.from_numpy(self.masks.read(path, (height, width))).unsqueeze(0)
        return item

    def __getitem__(self, index):
        if isinstance(index, (tuple, list)):
            items = [self._item(int(i)) for i in index]
            return {key: torch.stack([it[key] for it in items]) for key in items[0]}
        return self._item(int(index))


class DomainPairDataset(Dataset):
    """Two datasets read together: ``pair[(i, j)]`` is ``{"source": source[i], "target": target[j]}``.

    Pair it with :class:`reidfast.data.samplers.UnpairedDomainSampler`.
    """

    def __init__(self, source: Dataset, target: Dataset):
        self.source, self.target = source, target

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __getitem__(self, index):
        if not isinstance(index, (tuple, list)) or len(index) != 2:
            raise TypeError(f"DomainPairDataset: index must be a (source, target) pair, got {index!r}")
        return {"source": self.source[index[0]], "target": self.target[index[1]]}


def default_num_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, batch_size: int | None = None, *, shuffle: bool = False,
                sampler: Sampler | None = None, batch_sampler: Sampler | None = None, drop_last: bool = False,
                num_workers: int | None = None, pin_memory: bool | None = None, seed: int = 0,
                prefetch_factor: int | None = 4) -> DataLoader:
    """A DataLoader with the defaults this package wants: worker processes that stay alive between epochs,
    pinned memory whenever CUDA is available (so ``.to(device, non_blocking=True)`` overlaps the copy), and a
    seeded shuffle. Give either `batch_size` (with `shuffle` or a `sampler`) or a `batch_sampler`.
    """
    if batch_sampler is not None and (batch_size is not None or shuffle or sampler is not None or drop_last):
        raise ValueError("make_loader: batch_sampler excludes batch_size, shuffle, sampler and drop_last")
    if batch_sampler is None and batch_size is None:
        raise ValueError("make_loader: pass batch_size or batch_sampler")
    if shuffle and sampler is not None:
        raise ValueError("make_loader: shuffle and sampler exclude each other")
    num_workers = default_num_workers() if num_workers is None else num_workers
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=pin_memory,
                          **extra)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=pin_memory, generator=generator, **extra)
