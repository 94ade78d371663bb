"""Readers for the public re-id datasets in their published layouts.

Every reader accepts the dataset folder itself or the parent layouts torchreid uses (e.g.
``root/market1501/Market-1501-v15.09.15``) and returns a :class:`ReidDataset`.

Malformed file names: an image whose name does not follow the dataset's naming raises
:class:`DatasetFormatError` listing the offending names of every split at once (silently dropping images would
change the evaluation protocol); ``strict=False`` (``--skip-misnamed`` on the command line) skips them with a
logged warning instead.
Files that are not images (``Thumbs.db``, readme files) and person masks kept beside the images
(``<image stem>_mask.png``) are always ignored.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .base import (DatasetFormatError, DatasetNotFoundError, ReidDataset, Sample, find_dataset_dir,
                   find_dataset_layout, image_files, list_entries, relabel_train)
from .registry import register_dataset

log = logging.getLogger(__name__)

# name -> (pid, 1-based camera) or None when the name does not follow the naming.
NameParser = Callable[[str], "tuple[int, int] | None"]

_MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_DUKE_NAME = re.compile(r"^(\d+)_c(\d+)_f(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
# CUHK03-NP uses Market-style "<pid>_c<cam>_<index>.png"; only the pid/camera prefix is relied on.
_CUHK03NP_NAME = re.compile(r"^(\d+)_c([12])(?:_[^.]*)?\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _regex_parser(pattern: re.Pattern) -> NameParser:
    def parse(name: str):
        m = pattern.match(name)
        return (int(m.group(1)), int(m.group(2))) if m else None

    return parse


parse_market_name = _regex_parser(_MARKET_NAME)
parse_duke_name = _regex_parser(_DUKE_NAME)
parse_cuhk03np_name = _regex_parser(_CUHK03NP_NAME)


def _reject_or_skip(bad: dict[Path, list[str]], dataset: str, naming: str, strict: bool) -> None:
    """Misnamed images (or list lines) of every split of a dataset (split folder or list file -> names), in one
    error: reported split by split, a user would fix one folder, rerun and meet the next."""
    bad = {where: names for where, names in bad.items() if names}
    if not bad:
        return
    shown = lambda names: ", ".join(names[:5]) + (f" ... ({len(names) - 5} more)" if len(names) > 5 else "")
    total = sum(len(names) for names in bad.values())
    if len(bad) == 1:
        (where, names), = bad.items()
        message = f"{dataset}: {total} image(s) in {where} do not follow the naming {naming}: {shown(names)}"
    else:
        listing = "; ".join(f"{len(names)} in {where}: {shown(names)}" for where, names in bad.items())
        message = f"{dataset}: {total} image(s) in {len(bad)} splits do not follow the naming {naming}: {listing}"
    if strict:
        raise DatasetFormatError(message + " (--skip-misnamed, or strict=False in get_dataset, skips them with a "
                                           "warning)")
    log.warning("%s; skipped", message)


def parse_split_folder(folder: Path, dataset: str, split: str, parse: NameParser,
                       num_cameras: int) -> tuple[list[Sample], list[str]]:
    """Samples of one Market-style split folder (pid and camera come from each file's name), and the names of the
    files that do not follow the naming, for :func:`_reject_or_skip`."""
    samples, bad = [], []
    for path in image_files(folder, dataset, split):
        parsed = parse(path.name)
        if parsed is None or not 1 <= parsed[1] <= num_cameras:
            bad.append(path.name)
            continue
        pid, cam = parsed
        samples.append(Sample(str(path), pid, cam - 1))
    return samples, bad


def read_market_style(folder: Path, dataset: str, parse: NameParser, naming: str, num_cameras: int,
                      strict: bool = True, name: str | None = None) -> ReidDataset:
    """The three folders bounding_box_train / query / bounding_box_test, as Market-1501 lays them out.

    Train images labelled -1 (junk) or 0 (distractor) are not identities and are left out of train; Market-1501's
    own train folder has none. Query and gallery keep every label.
    """
    splits = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    parsed = {split: parse_split_folder(folder / sub, dataset, split, parse, num_cameras)
              for split, sub in splits.items()}
    _reject_or_skip({folder / splits[split]: bad for split, (_, bad) in parsed.items()}, dataset,
                    naming + f" with cameras 1..{num_cameras}", strict)
    for split, (samples, _) in parsed.items():
        if not samples:
            raise DatasetFormatError(f"{dataset}: {split} folder {folder / splits[split]} holds no usable images")
    train = [s for s in parsed["train"][0] if s.pid > 0]
    if not train:
        raise DatasetFormatError(f"{dataset}: {folder / 'bounding_box_train'} holds no identity (pid > 0) images")
    return ReidDataset(name or dataset, folder, relabel_train(train), parsed["query"][0], parsed["gallery"][0])


_MARKET_SPLITS = ("bounding_box_train", "bounding_box_test", "query")


@register_dataset("market1501", "market", "market-1501")
def read_market1501(root, strict: bool = True) -> ReidDataset:
    """Market-1501: names ``0002_c1s1_000451_03.jpg`` (pid, camera 1-6, sequence, frame, box).

    Gallery label -1 is junk and 0 a distractor; both are kept with those labels for the evaluation protocol.
    """
    folder = find_dataset_dir(root, ["", "Market-1501-v15.09.15", "Market-1501", "market1501",
                                     "market1501/Market-1501-v15.09.15"], _MARKET_SPLITS, "market1501")
    return read_market_style(folder, "market1501", parse_market_name, "0002_c1s1_000451_03.jpg", 6, strict)


@register_dataset("dukemtmc", "dukemtmc-reid", "duke", "dukemtmcreid")
def read_dukemtmc(root, strict: bool = True) -> ReidDataset:
    """DukeMTMC-reID: names ``0001_c2_f0046182.jpg`` (pid, camera 1-8, frame)."""
    folder = find_dataset_dir(root, ["", "DukeMTMC-reID", "dukemtmc-reid", "dukemtmc-reid/DukeMTMC-reID"],
                              _MARKET_SPLITS, "dukemtmc")
    return read_market_style(folder, "dukemtmc", parse_duke_name, "0001_c2_f0046182.jpg", 8, strict)


@register_dataset("cuhk03", "cuhk03-np", "cuhk03np")
def read_cuhk03np(root, variant: str | None = None, strict: bool = True) -> ReidDataset:
    """CUHK03 under the new protocol (CUHK03-NP: 767 train / 700 test ids), ``detected`` or ``labeled`` boxes.

    Layout: ``cuhk03-np/{detected,labeled}/{bounding_box_train,bounding_box_test,query}`` with names
    ``<pid>_c<1|2>_<index>.png``. `root` may be the variant folder, the cuhk03-np folder or its parent. `variant`
    None: the variant folder `root` names (``--data-root .../cuhk03-np/labeled`` reads the labeled boxes), else
    detected.
    """
    if variant is None:
        variant = Path(root).name if root is not None and Path(root).name in ("detected", "labeled") else "detected"
    if variant not in ("detected", "labeled"):
        raise ValueError(f"cuhk03: variant must be 'detected' or 'labeled', got {variant!r}")
    candidates = [f"{base}/{variant}".lstrip("/") for base in ("", "cuhk03-np", "CUHK03-NP", "cuhk03/cuhk03-np",
                                                                 "cuhk03-np/cuhk03-np")]
    root_path = Path(root) if root is not None else None
    if root_path is not None and root_path.name == variant:
        candidates.insert(0, "")
    folder = find_dataset_dir(root, candidates, _MARKET_SPLITS, f"cuhk03 ({variant})")
    return read_market_style(folder, "cuhk03", parse_cuhk03np_name, "0001_c1_1.png", 2, strict,
                             name=f"cuhk03-np-{variant}")


_MSMT_DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


_MSMT_NAMING = "'<pid>/<pid>_<idx>_<cam 1-15>_<...>.jpg <pid>'"


def _parse_msmt_list(list_file: Path, image_dir: Path) -> tuple[list[Sample], list[str]]:
    """Lines ``<pid folder>/<pid>_<index>_<camera>_<date+time>_<frame>_<n>.jpg <pid>`` (camera is the third field)
    as samples, and the lines that do not parse, for :func:`_reject_or_skip`."""
    if not list_file.is_file():
        raise DatasetNotFoundError(f"msmt17: list file {list_file} is missing ({list_entries(list_file.parent)})")
    samples, bad = [], []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            rel, pid = fields[0], int(fields[1])
            cam = int(Path(rel).name.split("_")[2])
            if len(fields) != 2 or not 1 <= cam <= 15:
                raise ValueError
        except (ValueError, IndexError):
            bad.append(f"line {number}: {line.strip()!r}")
            continue
        samples.append(Sample(str(image_dir / rel), pid, cam - 1))
    return samples, bad


@register_dataset("msmt17", "msmt")
def read_msmt17(root, version: str | None = None, use_val: bool = False, strict: bool = True) -> ReidDataset:
    """MSMT17 V1 (``train``/``test``) or V2 (``mask_train_v2``/``mask_test_v2``) with its list files.

    Train is ``list_train.txt`` only; ``use_val=True`` adds ``list_val.txt`` (same identities) as torchreid's
    combine-all does. With ``version=None`` the first of MSMT17_V1, MSMT17_V2 found is used.
    """
    versions = [version.upper()] if version else ["V1", "V2"]
    for v in versions:
        if v not in _MSMT_DIRS:
            raise ValueError(f"msmt17: version must be 'V1' or 'V2', got {version!r}")
    layouts = {v: (["", f"MSMT17_{v}", f"msmt17/MSMT17_{v}", "MSMT17", "msmt17"],
                   [*_MSMT_DIRS[v], "list_train.txt", "list_query.txt", "list_gallery.txt"]) for v in versions}
    v, folder = find_dataset_layout(root, layouts, "msmt17")
    train_dir, test_dir = _MSMT_DIRS[v]
    lists = {"list_train.txt": train_dir, **({"list_val.txt": train_dir} if use_val else {}),
             "list_query.txt": test_dir, "list_gallery.txt": test_dir}
    parsed = {name: _parse_msmt_list(folder / name, folder / images) for name, images in lists.items()}
    _reject_or_skip({folder / name: bad for name, (_, bad) in parsed.items()}, "msmt17", _MSMT_NAMING, strict)
    samples = {name: found for name, (found, _) in parsed.items()}
    for name, found in samples.items():
        if not found:
            raise DatasetFormatError(f"msmt17: list file {folder / name} holds no samples")
        if not Path(found[0].path).is_file():
            raise DatasetNotFoundError(f"msmt17: {folder / name} names {found[0].path}, which does not exist")
    train = samples["list_train.txt"] + samples.get("list_val.txt", [])
    return ReidDataset(f"msmt17-{v.lower()}", folder, relabel_train(train), samples["list_query.txt"],
                       samples["list_gallery.txt"], info={"version": v})


_PRID_NAME = re.compile(r"^person_(\d{4})\.png$")
PRID_SHARED_IDS = 200  # persons 1..200 appear in both cameras; the rest of cam_b are gallery distractors


@register_dataset("prid", "prid2011", "prid-2011")
def read_prid2011(root, split_seed: int = 0, num_train_ids: int = 100, strict: bool = True) -> ReidDataset:
    """PRID2011 single-shot: ``single_shot/cam_a/person_0001.png`` and ``single_shot/cam_b/...``.

    The 200 identities seen by both cameras are split at random (``split_seed``) into ``num_train_ids`` train
    and the rest test identities. Train holds both views of train ids; query is cam_a of test ids; gallery is
    cam_b of test ids plus every cam_b person beyond the shared 200 (distractors, as the usual protocol has it).
    """
    folder = find_dataset_dir(root, ["", "single_shot", "prid_2011/single_shot", "prid2011/prid_2011/single_shot",
                                     "prid2011/single_shot"], ["cam_a", "cam_b"], "prid2011")
    cams, bad = {}, {}
    for cam_index, cam in enumerate(("cam_a", "cam_b")):
        by_pid, misnamed = {}, []
        for path in image_files(folder / cam, "prid2011", cam):
            m = _PRID_NAME.match(path.name)
            if m is None:
                misnamed.append(path.name)
            else:
                by_pid[int(m.group(1))] = Sample(str(path), int(m.group(1)), cam_index)
        cams[cam], bad[folder / cam] = by_pid, misnamed
    _reject_or_skip(bad, "prid2011", "person_0001.png", strict)
    shared = sorted(p for p in cams["cam_a"] if p in cams["cam_b"] and p <= PRID_SHARED_IDS)
    if len(shared) < 2 or not 0 < num_train_ids < len(shared):
        raise DatasetFormatError(
            f"prid2011: {folder} has {len(shared)} identities in both cameras (ids <= {PRID_SHARED_IDS}); "
            f"need more than num_train_ids={num_train_ids} and at least one test id"
        )
    order = np.random.default_rng(split_seed).permutation(len(shared))
    train_ids = sorted(shared[i] for i in order[:num_train_ids])
    test_ids = sorted(shared[i] for i in order[num_train_ids:])
    train = [cams[c][p] for p in train_ids for c in ("cam_a", "cam_b")]
    query = [cams["cam_a"][p] for p in test_ids]
    gallery = [cams["cam_b"][p] for p in test_ids]
    gallery += [s for p, s in sorted(cams["cam_b"].items()) if p > PRID_SHARED_IDS]
    return ReidDataset("prid2011", folder, relabel_train(train), query, gallery,
                       info={"split_seed": split_seed, "train_ids": train_ids})
