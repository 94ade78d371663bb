"""reidfast's fused ops. Each has a reference twin in `reidfast.ops.reference` that defines its semantics.

Backends: `set_backend("auto"|"cuda"|"triton"|"cpu"|"reference")`, `use_backend(...)` for a block, or the
environment variable REIDFAST_BACKEND; `explain_backend(op, device)` says what "auto" would refuse and why.
"""
from ._backend import BACKENDS, get_backend, set_backend, use_backend
from ._backend import explain as explain_backend
from ._backend import resolve as resolve_backend
from .adain import adain
from .rank_eval import rank_eval
from .rank_result import RankEvalResult

__all__ = [
    "BACKENDS",
    "RankEvalResult",
    "adain",
    "explain_backend",
    "get_backend",
    "rank_eval",
    "resolve_backend",
    "set_backend",
    "use_backend",
]
