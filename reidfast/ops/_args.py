"""Reading the non-tensor arguments of the ops and of the modules built on them (reidfast.nn)."""
from __future__ import annotations

import operator

import torch


def as_int(v):
    """v as a Python int when it is an integer other than a bool (Python's, numpy's, a 0-d tensor's), else None.
    Callers raise their own error, naming the argument."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and (v.dim() != 0 or v.dtype == torch.bool)):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None
