"""Reading saved re-id features: .npz, .pt/.pth and the pytorch_result.mat that DG-Net's tools write.

Accepted keys (the first present wins; labels are flattened, so (1, N) arrays from .mat files work):
  query features    query_f, query_feat, query_features, qf
  gallery features  gallery_f, gallery_feat, gallery_features, gf
  query ids         query_label, query_labels, query_pids, q_pids
  gallery ids       gallery_label, gallery_labels, gallery_pids, g_pids
  query cameras     query_cam, query_cams, query_camids, q_camids
  gallery cameras   gallery_cam, gallery_cams, gallery_camids, g_camids
.mat files are Level 5 MAT-files (scipy.io.savemat, MATLAB -v7), read by reidfast.eval.matfile without scipy.
.pt/.pth files hold a dict of tensors or numpy arrays, read with torch.load(weights_only=True): nothing but
tensors, numpy arrays and plain containers is unpickled.
Features are real numbers (integers are converted to float32); ids and cameras are whole numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import re
import zipfile

import numpy as np
import torch

from .matfile import read_mat

KEYS = {
    "query_f": ("query_f", "query_feat", "query_features", "qf"),
    "gallery_f": ("gallery_f", "gallery_feat", "gallery_features", "gf"),
    "query_label": ("query_label", "query_labels", "query_pids", "q_pids"),
    "gallery_label": ("gallery_label", "gallery_labels", "gallery_pids", "g_pids"),
    "query_cam": ("query_cam", "query_cams", "query_camids", "q_camids"),
    "gallery_cam": ("gallery_cam", "gallery_cams", "gallery_camids", "g_camids"),
}


class FeatureFileError(ValueError):
    """A feature file that is missing, unreadable, lacks a key or holds labels whose count does not match the
    features; the message names the file."""


@dataclasses.dataclass
class SavedFeatures:
    query_f: torch.Tensor
    gallery_f: torch.Tensor
    query_label: torch.Tensor
    gallery_label: torch.Tensor
    query_cam: torch.Tensor
    gallery_cam: torch.Tensor


FEATURE_FILE_TYPES = (".npz", ".pt", ".pth", ".mat")


def _numpy_safe_globals() -> list:
    """What torch.load(weights_only=True) must be allowed to unpickle numpy arrays: the array, the reconstruct
    function (under the module names numpy 2 and numpy 1 write), np.dtype and the dtype classes of numbers and
    strings (numpy >= 1.25 pickles those). None of them runs arbitrary code; the object dtype is not among them, so an
    array of Python objects stays refused."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSU"} - {np.dtype}
    return [np.ndarray, np.dtype, *sorted(dtype_classes, key=str),
            (_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct")]


def _torch_load(path: str):
    safe = getattr(torch.serialization, "safe_globals", None)
    with safe(_numpy_safe_globals()) if safe is not None else contextlib.nullcontext():
        return torch.load(path, map_location="cpu", weights_only=True)


def _reason(exc: BaseException) -> str:
    """A library's message as one plain line: the first, without terminal colour codes (torch's weights_only
    message has them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _read_mapping(path: str) -> dict:
    if os.path.isdir(path):
        raise FeatureFileError(f"{path}: is a directory, not a feature file (.npz, .pt/.pth or .mat)")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FEATURE_FILE_TYPES:
        found = f"type {ext!r}" if ext else "no file type (extension)"
        raise FeatureFileError(f"{path}: unknown feature file type: {found}; use .npz, .pt/.pth or .mat")
    if not os.path.exists(path):
        raise FeatureFileError(f"{path}: no such file")
    # numpy.savez writes a zip archive; anything else would reach numpy's pickle reader, whose message says
    # nothing useful about a wrong file
    if ext == ".npz" and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            begins_as_zip = f.read(4) == b"PK\x03\x04"
        raise FeatureFileError(f"{path}: " + ("is a truncated or damaged .npz archive" if begins_as_zip else
                                              "is not a .npz archive (the zip of .npy arrays numpy.savez writes)"))
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if ext == ".mat":
            with open(path, "rb") as f:
                return read_mat(f.read())
        data = _torch_load(path)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: name it, say what the file should hold
        found = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(exc))
        what = f"an object of {found.group(1) or found.group(2)}" if found else "a Python object"
        raise FeatureFileError(f"{path}: holds {what}, which is not loaded (only tensors and numpy arrays are): save a "
                               f"dict of tensors or numpy arrays") from exc
    except Exception as exc:  # truncated, pickled object arrays, a zip of something else: "cannot be read"
        if ext in (".pt", ".pth") and not zipfile.is_zipfile(path):  # torch.save's zip, nor its legacy pickle
            raise FeatureFileError(f"{path}: is not a file torch.save writes ({_reason(exc)})") from exc
        raise FeatureFileError(f"{path}: cannot be read as a {ext} feature file ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise FeatureFileError(f"{path}: expected a dict of tensors/arrays, got {type(data).__name__}")
    return data


def _pick(data: dict, name: str, path: str) -> tuple[str, object]:
    """(the key found, its value)."""
    for key in KEYS[name]:
        if key in data:
            return key, data[key]
    raise FeatureFileError(f"{path}: none of the keys {', '.join(KEYS[name])} found "
                           f"(has: {', '.join(sorted(data))})")


def _as_tensor(value, path: str, key: str) -> torch.Tensor:
    """A tensor of real numbers, or an error naming the file and key."""
    if not isinstance(value, torch.Tensor):
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":  # strings, objects, dates
            raise FeatureFileError(f"{path}: {key} must hold numbers, got an array of {array.dtype}")
        value = torch.as_tensor(array)
    if value.is_complex():  # a cast would drop the imaginary part silently
        raise FeatureFileError(f"{path}: {key} must hold real numbers, got {value.dtype}")
    return value


def load_features(path: str) -> SavedFeatures:
    """Query/gallery features, ids and cameras from a saved file (see the module docstring for the keys)."""
    data = _read_mapping(path)
    out = {}
    for name in KEYS:
        key, picked = _pick(data, name, path)
        value = _as_tensor(picked, path, key)
        if name.endswith("_f"):
            if value.dim() != 2:
                raise FeatureFileError(f"{path}: {key} must be 2-D (N, D), got shape {tuple(value.shape)}")
            out[name] = value if value.is_floating_point() else value.float()
        else:
            if value.dtype == torch.bool:
                raise FeatureFileError(f"{path}: {key} must hold whole numbers (ids or camera numbers), got bool")
            flat = value.reshape(-1)
            # MATLAB saves ids and cameras as doubles: whole numbers convert, anything else would be truncated
            fractional = flat[flat != flat.round()] if flat.is_floating_point() else flat[:0]
            if fractional.numel():
                raise FeatureFileError(f"{path}: {key} must hold whole numbers (ids or camera numbers), got "
                                       f"{fractional[0].item()}")
            out[name] = flat.long()
    for side in ("query", "gallery"):
        rows = out[f"{side}_f"].shape[0]
        for name in (f"{side}_label", f"{side}_cam"):
            if out[name].numel() != rows:
                raise FeatureFileError(f"{path}: {name} has {out[name].numel()} entries but {side}_f has {rows} rows")
    return SavedFeatures(**out)
