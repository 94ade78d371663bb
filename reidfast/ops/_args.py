"""Reading the non-tensor arguments of the ops and of the modules built on them (reidfast.nn)."""
from __future__ import annotations

import operator

import torch


def check_tensor(who: str, name: str, v, what: str = "a torch.Tensor") -> None:
    """A TypeError naming who's argument `name` unless v is a tensor (instead of an AttributeError from deep inside,
    for a numpy array or a list)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{who}: {name} must be {what}, got {type(v).__name__}")


def as_int(v):
    """v as a Python int when it is an integer other than a bool (Python's, numpy's, a 0-d tensor's), else None.
    Callers raise their own error, naming the argument."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and (v.dim() != 0 or v.dtype == torch.bool)):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None
