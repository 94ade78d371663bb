"""Loads the compiled extension reidfast._C (which registers torch.ops.reidfast.*) and reports what it holds."""
from __future__ import annotations

import importlib

_C = None
LOAD_ERROR: str | None = None
try:
    _C = importlib.import_module("reidfast._C")
except ImportError as exc:  # a source checkout that was never built, or a torch ABI mismatch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


def cuda_archs() -> str:
    return getattr(_C, "cuda_archs", "") if _C is not None else ""


def built_against() -> str:
    """The torch version the extension was compiled against ("" for builds older than this field)."""
    return getattr(_C, "torch_version", "") if _C is not None else ""


def sources_hash() -> str:
    """The digest of the C++/CUDA sources the extension was built from (setup.py's sources_hash)."""
    return getattr(_C, "sources_hash", "") if _C is not None else ""


def why_not_built() -> str:
    return (
        f"reidfast._C did not load ({LOAD_ERROR}); build it with `pip install --no-build-isolation -e .`"
        if _C is None
        else ""
    )
