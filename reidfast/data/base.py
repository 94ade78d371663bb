"""The dataset record every reader returns, the errors readers raise, and the folder helpers they share."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# A person mask kept beside its image is ``<image stem>_mask.png`` (see reidfast.data.masks): not an image of the set.
MASK_SIBLING_SUFFIX = "_mask"


class Sample(NamedTuple):
    """One image: its path, its identity and its 0-based camera index."""

    path: str
    pid: int
    camid: int


class DatasetNotFoundError(FileNotFoundError):
    """The expected dataset folder (or one of its split folders) does not exist."""


class DatasetFormatError(ValueError):
    """The folder exists but its contents do not follow the dataset's published layout or naming."""


@dataclass
class ReidDataset:
    """train / query / gallery lists of :class:`Sample`.

    Train pids are relabelled to 0..num_train_pids-1 (what a classifier needs); query and gallery keep the
    dataset's own pids, so the Market-1501 gallery labels -1 (junk) and 0 (distractor) survive for the
    evaluation protocol. Camera ids are 0-based everywhere.
    """

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    # Optional side data some datasets carry (the synthetic one has both).
    keypoints_csv: Path | None = None
    masks_dir: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_cameras(self) -> int:
        cams = {s.camid for split in (self.train, self.query, self.gallery) for s in split}
        return max(cams) + 1 if cams else 0

    def summary(self) -> str:
        def row(split_name: str, samples: Sequence[Sample]) -> str:
            pids = {s.pid for s in samples}
            cams = {s.camid for s in samples}
            return f"  {split_name:<8} {len(pids):>6} ids {len(samples):>7} images {len(cams):>3} cameras"

        lines = [f"{self.name} at {self.root}", row("train", self.train), row("query", self.query),
                 row("gallery", self.gallery)]
        if self.info.get("trained_on"):  # a train split from elsewhere (SA-GAN's adapted source) says so
            lines[1] += f"  (from {self.info['trained_on']})"
        return "\n".join(lines)


def relabel_train(samples: Iterable[Sample]) -> list[Sample]:
    """Map train pids to 0..K-1 in ascending order of the original pid (stable across runs and machines)."""
    samples = list(samples)
    mapping = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, mapping[s.pid], s.camid) for s in samples]


def list_entries(folder: Path, limit: int = 20) -> str:
    """A short listing of what a folder holds, for error messages."""
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    names = sorted(os.listdir(folder))
    if not names:
        return f"{folder} is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{folder} holds: {shown}"


def find_dataset_dir(root: str | os.PathLike, candidates: Sequence[str], required: Sequence[str],
                     dataset: str) -> Path:
    """Return the first of root/candidate that holds every name in `required`.

    `candidates` are paths relative to root ("" is root itself), so a reader accepts both the dataset folder and
    the parent layouts other libraries use. The error names every folder tried and lists what root holds.
    """
    return find_dataset_layout(root, {"": (candidates, required)}, dataset)[1]


# (candidate folders relative to the data root, the names a dataset folder of this layout holds)
Layout = tuple[Sequence[str], Sequence[str]]


def find_dataset_layout(root: str | os.PathLike, layouts: Mapping[str, Layout], dataset: str) -> tuple[str, Path]:
    """(name, folder) of the first layout, in order, of which a root/candidate folder holds every required name:
    :func:`find_dataset_dir` for a dataset published in several layouts (MSMT17's V1 and V2 folders).

    None found: one error naming what each layout's folder holds, every folder tried once, what root holds and the
    likely fix. A layout named "" is not named in the message.
    """
    if root is None:
        raise DatasetNotFoundError(f"{dataset}: no data root given (pass --data-root DIR)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{dataset}: data root {root} is not a folder ({list_entries(root)})")
    for name, (candidates, required) in layouts.items():
        for rel in candidates:
            folder = root / rel if rel else root
            if all((folder / item).exists() for item in required):
                return name, folder
    holding = " or ".join(", ".join(required) + (f" ({name})" if name else "")
                          for name, (_, required) in layouts.items())
    tried = ", ".join(str(root / rel) if rel else str(root)
                      for rel in dict.fromkeys(rel for candidates, _ in layouts.values() for rel in candidates))
    raise DatasetNotFoundError(f"{dataset}: expected a folder holding {holding}; tried {tried}. {list_entries(root)}. "
                               + _what_to_do(root, list(layouts.values())))


ARCHIVE_ENDINGS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def _what_to_do(root: Path, layouts: Sequence[Layout]) -> str:
    """The likely mistake behind a data root in which no candidate of any layout holds the dataset, and its fix."""
    flag = "the data root (--data-root, or SA-GAN's --source-root / --target-root)"
    archives = sorted(p.name for p in root.iterdir() if p.name.lower().endswith(ARCHIVE_ENDINGS)
                      and p.is_file())
    if archives:
        return f"{archives[0]} is an archive that has not been extracted: extract it and give as {flag} the folder " \
               f"it makes (or its parent)"
    for _, required in layouts:
        inside = next((p for p in (root, *root.parents) if p.name in required
                       and all((p.parent / name).exists() for name in required)), None)
        if inside is not None:
            return f"{root} is inside the dataset folder: give as {flag} {inside.parent} (the folder holding " \
                   f"{', '.join(required)}) or a folder above it"
    # the folder holding most of a layout's names (max keeps the first on a tie): with several layouts, a folder
    # holding only the names they share would otherwise be reported as an incomplete copy of the wrong one
    present = lambda folder, required: [name for name in required if (folder / name).exists()]
    folder, required = max(((root / rel if rel else root, required) for candidates, required in layouts
                            for rel in candidates), key=lambda pair: len(present(*pair)))
    have = present(folder, required)
    if have:
        missing = [name for name in required if name not in have]
        return f"{folder} holds {', '.join(have)} but not {', '.join(missing)}: the dataset is incomplete " \
               f"(an interrupted download or extraction?)"
    return f"Give as {flag} the dataset folder itself or a folder above it in one of the layouts tried"


def image_files(folder: Path, dataset: str, split: str) -> list[Path]:
    """Image files of a split folder, sorted by name; other files (Thumbs.db, readme) and the person masks kept
    beside the images (``<stem>_mask.png``, SA-GAN's sibling layout) are ignored."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{dataset}: {split} folder {folder} is missing ({list_entries(folder.parent)})")
    mask_ending = MASK_SIBLING_SUFFIX + ".png"
    named = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.lower().endswith(mask_ending)]
    broken = sorted(p.name for p in named if p.is_symlink() and not p.exists())
    if broken:  # skipping them would change the split silently
        shown = ", ".join(broken[:5]) + (f" ... ({len(broken) - 5} more)" if len(broken) > 5 else "")
        raise DatasetFormatError(f"{dataset}: {len(broken)} image(s) in {split} folder {folder} are symbolic links to "
                                 f"files that do not exist: {shown} (e.g. {os.readlink(folder / broken[0])})")
    files = sorted(p for p in named if p.is_file())
    if not files:
        raise DatasetFormatError(
            f"{dataset}: {split} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            f"{list_entries(folder)}"
        )
    return files
