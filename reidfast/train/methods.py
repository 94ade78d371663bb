"""Method name -> trainer class. Methods whose trainers are not built yet say which issue builds them."""
from __future__ import annotations

import importlib

METHODS = {"baseline": ("reidfast.train.baseline", "Baseline"), "dgnet": ("reidfast.train.dgnet", "DGNet"),
           "fdgan": ("reidfast.train.fdgan", "FDGAN")}
NOT_BUILT = {
    "sagan": "SA-GAN's trainer is not built yet (tracked in its own method issue)",
}
ALL_METHODS = tuple(METHODS) + tuple(NOT_BUILT)


class MethodNotBuilt(NotImplementedError):
    pass


def get_method(name: str):
    if name in NOT_BUILT:
        raise MethodNotBuilt(NOT_BUILT[name])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)
