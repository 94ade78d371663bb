"""reidfast's fused ops. Each has a reference twin in `reidfast.ops.reference` that defines its semantics.

Backends: `set_backend("auto"|"cuda"|"triton"|"cpu"|"reference")`, `use_backend(...)` for a block, or the
environment variable REIDFAST_BACKEND; `explain_backend(op, device)` says what "auto" would refuse and why.
"""
from ._backend import BACKENDS, get_backend, set_backend, use_backend
from ._backend import explain as explain_backend
from ._backend import resolve as resolve_backend
from .adain import adain
from .conv2d import conv2d
from .rank_eval import rank_eval
from .rank_result import RankEvalResult
from .geometry import (
    compose_warps,
    homography_adjugate,
    homography_from_params,
    homography_inverse,
    normalization_matrix,
    normalized_to_pixel,
    pixel_to_normalized,
    warp_perspective,
)
from .homography import homography_warp
from .pad import reflection_pad2d

__all__ = [
    "BACKENDS",
    "RankEvalResult",
    "adain",
    "compose_warps",
    "conv2d",
    "explain_backend",
    "get_backend",
    "rank_eval",
    "reflection_pad2d",
    "homography_adjugate",
    "homography_from_params",
    "homography_inverse",
    "homography_warp",
    "normalization_matrix",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "resolve_backend",
    "set_backend",
    "use_backend",
    "warp_perspective",
]
