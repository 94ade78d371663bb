"""Reading saved re-id features: .npz, .pt/.pth and the pytorch_result.mat that DG-Net's tools write.

Accepted keys (the first present wins; labels are flattened, so (1, N) arrays from .mat files work):
  query features    query_f, query_feat, query_features, qf
  gallery features  gallery_f, gallery_feat, gallery_features, gf
  query ids         query_label, query_labels, query_pids, q_pids
  gallery ids       gallery_label, gallery_labels, gallery_pids, g_pids
  query cameras     query_cam, query_cams, query_camids, q_camids
  gallery cameras   gallery_cam, gallery_cams, gallery_camids, g_camids
.mat files are Level 5 MAT-files (scipy.io.savemat, MATLAB -v7), read by reidfast.eval.matfile without scipy.
"""
from __future__ import annotations

import dataclasses
import os

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


def _read_mapping(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".pt", ".pth", ".mat"):
        raise FeatureFileError(f"{path}: unknown feature file type {ext!r}; use .npz, .pt/.pth or .mat")
    if not os.path.isfile(path):
        raise FeatureFileError(f"{path}: no such file")
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if ext == ".mat":
            with open(path, "rb") as f:
                return read_mat(f.read())
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a zip, pickled objects, truncated: all "cannot be read" to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FeatureFileError(f"{path}: cannot be read as a {ext} feature file ({reason})") from exc
    if not isinstance(data, dict):
        raise FeatureFileError(f"{path}: expected a dict of tensors/arrays, got {type(data).__name__}")
    return data


def _pick(data: dict, name: str, path: str):
    for key in KEYS[name]:
        if key in data:
            return data[key]
    raise FeatureFileError(f"{path}: none of the keys {', '.join(KEYS[name])} found "
                           f"(has: {', '.join(sorted(data))})")


def load_features(path: str) -> SavedFeatures:
    """Query/gallery features, ids and cameras from a saved file (see the module docstring for the keys)."""
    data = _read_mapping(path)
    out = {}
    for name in KEYS:
        picked = _pick(data, name, path)
        value = picked if isinstance(picked, torch.Tensor) else torch.as_tensor(np.asarray(picked))
        if name.endswith("_f"):
            if value.dim() != 2:
                raise FeatureFileError(f"{path}: {name} must be 2-D (N, D), got shape {tuple(value.shape)}")
            out[name] = value if value.is_floating_point() else value.float()
        else:
            flat = value.reshape(-1)
            # MATLAB saves ids and cameras as doubles: whole numbers convert, anything else would be truncated
            fractional = flat[flat != flat.round()] if flat.is_floating_point() else flat[:0]
            if fractional.numel():
                raise FeatureFileError(f"{path}: {name} must hold whole numbers (ids or camera numbers), got "
                                       f"{fractional[0].item()}")
            out[name] = flat.long()
    for side in ("query", "gallery"):
        rows = out[f"{side}_f"].shape[0]
        for name in (f"{side}_label", f"{side}_cam"):
            if out[name].numel() != rows:
                raise FeatureFileError(f"{path}: {name} has {out[name].numel()} entries but {side}_f has {rows} rows")
    return SavedFeatures(**out)
