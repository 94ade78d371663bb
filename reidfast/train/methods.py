"""Method name -> trainer class (imported on first use, so `--help` of one method does not import the others)."""
from __future__ import annotations

import importlib

METHODS = {"baseline": ("reidfast.train.baseline", "Baseline"), "dgnet": ("reidfast.train.dgnet", "DGNet"),
           "fdgan": ("reidfast.train.fdgan", "FDGAN"), "sagan": ("reidfast.train.sagan", "SAGAN")}
ALL_METHODS = tuple(METHODS)


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)
