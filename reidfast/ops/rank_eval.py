"""`rank_eval`: CMC, mAP and mINP of re-id retrieval under the Market-1501 protocol, batched over queries.

The protocol (junk, ties, invalid queries, both AP conventions) is defined once, in `reference.rank_eval`.
The kernels never sort a row: the rank of the k-th true match is the number of kept gallery items ordered before
it, which they count (csrc/include/reidfast/rank_math.h). From features, distances are made one tile of queries at
a time by GEMM, so the full Q x G matrix is never held.
"""
from __future__ import annotations

import contextlib
import math

import torch

from . import _backend, _extension, reference
from ._args import as_int
from ._registration import register_rank_ops
from .rank_result import (AP_MODES, METRICS, NAN_ROW, NAN_ROWS, UNFINISHED_ROW, UNFINISHED_ROWS, UNNAMED_DISTMAT,
                          RankEvalResult, result_from_summary)

PRECISIONS = ("strict", "fast")

# Bytes of the distance tile made from features at a time, per device type: bounds memory at MSMT17
# scale. On a GPU a tile of 1 GB (MSMT17: 3,267 queries, 4 tiles) gives the ranking kernel several waves of query
# blocks (at 256 MB, 816 blocks fill less than one wave of an H100) and pays the per-tile work (the gallery's
# grouping by id, launches) 4 times instead of 15.
DEFAULT_TILE_BYTES = {"cuda": 1 << 30, "cpu": 1 << 28}

# An extension built before this op existed leaves only the reference.
_HAS_KERNELS = _extension.has_cpu_kernels() and hasattr(torch.ops.reidfast, "rank_summary")
_backend.register_op("rank_eval", ("cuda", "cpu", "reference") if _HAS_KERNELS else ("reference",))
if _HAS_KERNELS:
    register_rank_ops("reidfast::rank_queries", "reidfast::rank_summary")
    # looked up once, not per tile
    _rank_queries_op = torch.ops.reidfast.rank_queries.default
    _rank_summary_op = torch.ops.reidfast.rank_summary.default


def _as_tensor(x, name: str, who: str = "rank_eval") -> torch.Tensor:
    """torch tensors as they are; numpy, cupy and other DLPack / CUDA-array-interface arrays without a copy."""
    if isinstance(x, torch.Tensor):
        return x
    if x is None:
        raise TypeError(f"{who}: {name} is required")
    if hasattr(x, "__cuda_array_interface__") or type(x).__module__.startswith("cupy"):
        return torch.from_dlpack(x) if hasattr(x, "__dlpack__") else torch.as_tensor(x, device="cuda")
    if type(x).__module__ == "numpy":
        import numpy as np

        if x.dtype.kind not in "biufc":  # strings, objects, dates: torch's own error would not name the argument
            raise TypeError(f"{who}: {name} must hold numbers, got a numpy array of dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x)) if x.flags.writeable else torch.as_tensor(x)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{who}: {name} must be a torch tensor, numpy or cupy array, got {type(x).__name__}") from exc


def _labels(x, name: str) -> torch.Tensor:
    """Checked, as int64, where they are: host labels go to the device packed into one copy (_int32_labels)."""
    t = _as_tensor(x, name)
    if t.dim() != 1:
        raise ValueError(f"rank_eval: {name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"rank_eval: {name} must hold integers, got {t.dtype}")
    return t.to(torch.int64)


def _check_sizes(labels: dict[str, torch.Tensor], num_q: int, num_g: int, distmat) -> None:
    """The ids give the query and gallery counts; the cameras and the distances or features must agree with them."""
    counts = {"q": labels["q_pids"].numel(), "g": labels["g_pids"].numel()}
    for side in ("q", "g"):
        if labels[f"{side}_camids"].numel() != counts[side]:
            raise ValueError(f"rank_eval: {side}_camids has {labels[f'{side}_camids'].numel()} entries but "
                             f"{side}_pids has {counts[side]}")
    if distmat is not None and (num_q, num_g) != (counts["q"], counts["g"]):
        raise ValueError(f"rank_eval: distmat has shape {tuple(distmat.shape)} but there are {counts['q']} queries "
                         f"(q_pids) and {counts['g']} gallery items (g_pids)")
    for rows, side, features, what in ((num_q, "q", "query_features", "queries"),
                                       (num_g, "g", "gallery_features", "gallery items")):
        if distmat is None and rows != counts[side]:
            raise ValueError(f"rank_eval: {features} has {rows} rows but there are {counts[side]} {what} "
                             f"({side}_pids)")


def _floating_2d(x, name: str, who: str = "rank_eval") -> torch.Tensor:
    t = _as_tensor(x, name, who)
    if t.dim() != 2:
        raise ValueError(f"{who}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{who}: {name} must be floating point, got {t.dtype}")
    # Ranks are not differentiable: detached, no output requires grad on any backend (the reference's never did)
    # and the kernels' ops, which have no autograd, are not called on tensors that require grad.
    t = t.detach()
    # The kernels work in float32 or float64; half-precision inputs are widened.
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def feature_pair(query_features, gallery_features, who: str = "rank_eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery features as rank_eval (and re-ranking, `who`) takes them: 2-D floating point of one
    dimension > 0, on one device, detached, in one dtype (float32 or float64), at least one row each. Finiteness is
    checked where the distances are made."""
    if query_features is None or gallery_features is None:
        missing = "query_features" if query_features is None else "gallery_features"
        raise ValueError(f"{who}: {missing} is missing (features need both query and gallery)")
    query_features = _floating_2d(query_features, "query_features", who)
    gallery_features = _floating_2d(gallery_features, "gallery_features", who)
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"{who}: query_features have dimension {query_features.shape[1]} but "
                         f"gallery_features have {gallery_features.shape[1]}")
    if query_features.shape[1] == 0:  # every distance would be equal: a ranking of nothing
        raise ValueError(f"{who}: the features have dimension 0 (shapes "
                         f"{tuple(query_features.shape)} and {tuple(gallery_features.shape)})")
    if query_features.device != gallery_features.device:
        raise ValueError(f"{who}: query_features are on {query_features.device} but gallery_features are "
                         f"on {gallery_features.device}")
    if query_features.shape[0] == 0 or gallery_features.shape[0] == 0:
        raise ValueError(f"{who}: needs at least one query and one gallery item, got Q={query_features.shape[0]}, "
                         f"G={gallery_features.shape[0]}")
    if query_features.dtype != gallery_features.dtype:
        wide = torch.promote_types(query_features.dtype, gallery_features.dtype)
        query_features, gallery_features = query_features.to(wide), gallery_features.to(wide)
    return query_features, gallery_features


@contextlib.contextmanager
def _matmul_precision(precision: str):
    """strict: IEEE fp32 GEMM (no TF32) whatever the global setting; fast: TF32 allowed (the reference backend's
    fast mode, and the kernels' where torch has no bf16-to-fp32 GEMM)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if precision == "strict" else "high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _TiledDistance:
    """Distance rows of queries [start, stop) against the whole gallery: one GEMM per tile, with the gallery term
    added by the GEMM itself, so no other pass goes over the tile.

    cosine: 1 - q.g over L2-normalized rows, as `reference.pairwise_distance`.
    euclidean: |g|^2 - 2 q.g, the squared L2 distance less the query's |q|^2. That term is the same along a query's
    row, so the row's order, which is all that is ranked, is the full distance's; adding it would cost a pass over
    the tile, as no GEMM epilogue adds a per-row term. (Only near ties at the last bit can order differently from a
    full-distance evaluation, as they do between any two GEMMs.)

    strict: an fp32 addmm whose bias vector (the gallery term) cuBLAS adds in its epilogue.
    fast on CUDA: see `_bf16_operands` (made by a Triton kernel where Triton is installed).
    """

    def __init__(self, query_features, gallery_features, metric, fast: bool):
        self.num_g = gallery_features.shape[0]
        self.bf16 = (fast and query_features.is_cuda and query_features.dtype == torch.float32
                     and _has_bf16_gemm(query_features.device))
        fused = _triton_operands() if self.bf16 else None
        if fused is not None:
            self._fused_bf16_operands(fused, query_features, gallery_features, metric)
            return
        if metric == "cosine":  # F.normalize's rule, with the norms kept for the check below
            q_norm, g_norm = (torch.linalg.vector_norm(x, dim=1) for x in (query_features, gallery_features))
            self.q = query_features / q_norm.clamp_min(1e-12)[:, None]
            gallery = gallery_features / g_norm.clamp_min(1e-12)[:, None]
            self.bias, self.alpha = gallery.new_ones(gallery.shape[0]), -1
            self._sizes = lambda: (q_norm, g_norm)
        else:
            self.q, gallery = query_features, gallery_features
            self.bias, self.alpha = (gallery * gallery).sum(1), -2
            self._sizes = lambda: ((query_features * query_features).sum(1), self.bias)
        if self.bf16:
            self.q, self.gt = _bf16_operands(self.q, gallery, self.alpha, self.bias)
        else:
            self.gt = gallery.t()

    def largest_sizes(self) -> torch.Tensor:
        """The largest row size on the query and the gallery side, (2,) float64 on the device, checked with the
        summary: not finite when a feature is not (NaN propagates through amax) or a size overflows. An infinite
        feature would otherwise rank as if nearest or farthest, silently. Queued on demand: `_rank_with_kernels`
        asks after the first tile's GEMM, which does not need it."""
        q_size, g_size = self._sizes()
        return torch.stack([q_size.amax(), g_size.amax()]).double()

    def _fused_bf16_operands(self, fused, query_features, gallery_features, metric):
        """Fast mode's operands by the Triton kernel (one pass over each side's features; the same layout as
        _bf16_operands, the gallery term from the kernel's own float32 row sums)."""
        num_q, dim = query_features.shape
        k, g_pad = _bf16_layout(dim, self.num_g)
        cosine = metric == "cosine"
        self.q, q_sumsq = fused.operand_rows(query_features.contiguous(), num_q, k, -1 if cosine else -2,
                                             normalize=cosine, bias_columns=False)
        g_op, g_sumsq = fused.operand_rows(gallery_features.contiguous(), g_pad, k, 1, normalize=cosine,
                                           bias_columns=True)
        self.gt = g_op.t()
        # the sizes the check reads: norms for cosine, squared norms for euclidean, as the plain path's
        self._sizes = (lambda: (q_sumsq.sqrt(), g_sumsq.sqrt())) if cosine else (lambda: (q_sumsq, g_sumsq))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        q = self.q[start:stop]
        if self.bf16:  # padded rows: the ranking op reads the view without a copy
            return torch.mm(q, self.gt, out_dtype=torch.float32)[:, :self.num_g]
        return torch.addmm(self.bias, q, self.gt, alpha=self.alpha)


def _triton_operands():
    """Fast mode makes its operands in one kernel per side where Triton is installed (ops/triton/rank_operands.py,
    imported on first use, as the other Triton kernels); else by _bf16_operands. Only CUDA tensors come here."""
    if not _backend._TRITON_FOUND:
        return None
    from .triton import rank_operands
    return rank_operands

# Row lengths of the fast mode's GEMM operands and output are padded to this many elements (32 bytes in fp32):
# an odd gallery size made every output row misaligned, and cuBLAS then fell back to a kernel for 1-element
# alignment several times slower than its tensor-core kernels (measured on an H100: 42.6 ms of 51 for MSMT17).
_BF16_ALIGN = 8


def _bf16_layout(dim: int, num_g: int) -> tuple[int, int]:
    """(K, G_pad): the operands' row length (the features and the three gallery-term columns) and the gallery's row
    count, each rounded up to a multiple of _BF16_ALIGN."""
    return -(-(dim + 3) // _BF16_ALIGN) * _BF16_ALIGN, -(-num_g // _BF16_ALIGN) * _BF16_ALIGN


def _bf16_operands(q: torch.Tensor, gallery: torch.Tensor, alpha: int, bias: torch.Tensor):
    """The fast mode's GEMM operands, bf16: (Q, K) query rows and the (K, G_pad) gallery side, whose product in
    fp32 accumulation is alpha * q.g + bias for the first G columns.

    The gallery term rides in the GEMM as three extra columns: bias = b1 + b2 + b3 split into bf16 parts (each the
    bf16 rounding of what the parts before it leave), against ones on the query side, so it keeps about 24 bits, as
    an fp32 addition would; torch's bf16-to-fp32 addmm instead copies the bias into every row of the output before
    the GEMM (2.3 ms of a 51 ms MSMT17 evaluation on an H100). alpha (-1 or -2) scales exactly in bf16, so it goes
    into the query side. K and G_pad are padded with zeros to multiples of _BF16_ALIGN; the padded gallery rows
    are never ranked (`rows` slices them off).
    """
    num_q, dim = q.shape
    num_g = gallery.shape[0]
    k, g_pad = _bf16_layout(dim, num_g)
    # Written in place, each region once (few launches: at Market scale the host's launches take about as long as
    # the GEMM): products and casts store straight into the operands, no fp32 temporaries.
    q_op = q.new_empty(num_q, k, dtype=torch.bfloat16)
    torch.mul(q, alpha, out=q_op[:, :dim])
    q_op[:, dim:dim + 3].fill_(1)
    g_op = gallery.new_empty(g_pad, k, dtype=torch.bfloat16)
    g_op[:num_g, :dim].copy_(gallery)
    for padding in (q_op[:, dim + 3:], g_op[:num_g, dim + 3:], g_op[num_g:]):
        if padding.numel():
            padding.zero_()
    # bias = b1 + b2 + b3: each column the bf16 rounding of what the columns before it leave (the subtraction
    # upcasts the bf16 column exactly)
    rest = bias.float()
    for c in range(dim, dim + 3):
        column = g_op[:num_g, c]
        column.copy_(rest)
        if c < dim + 2:
            rest = rest - column
    return q_op, g_op.t()


_BF16_GEMM: dict = {}


def _has_bf16_gemm(device: torch.device) -> bool:
    """Whether this torch multiplies bf16 matrices into fp32 on CUDA (torch.mm's out_dtype); without it fast mode
    stays on TF32. Probed once per device; the checks that refuse a combination are on the host, so a probe never
    waits on the GPU."""
    if device.index not in _BF16_GEMM:
        a = torch.zeros(8, 8, dtype=torch.bfloat16, device=device)
        try:
            torch.mm(a, a, out_dtype=torch.float32)
            _BF16_GEMM[device.index] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _BF16_GEMM[device.index] = False
    return _BF16_GEMM[device.index]


def rank_eval(
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    distmat=None,
    query_features=None,
    gallery_features=None,
    metric: str | None = None,
    max_rank: int = 50,
    ap_mode: str = "torchreid",
    precision: str = "strict",
    tile_size: int | None = None,
    distmat_label: str | None = None,
) -> RankEvalResult:
    """CMC, mAP and mINP of re-id retrieval (Market-1501 protocol, see `reidfast.ops.reference.rank_eval`).

    q_pids, q_camids: (Q,) integer ids and cameras of the queries; g_pids, g_camids: (G,) of the gallery.
    Give either distmat (Q, G), smaller = nearer, or query_features (Q, D) and gallery_features (G, D) with
      metric "euclidean" (the default: squared L2, |q|^2 + |g|^2 - 2 q.g as torchreid) or "cosine" (1 - cosine
      similarity). The kernels rank euclidean rows on |g|^2 - 2 q.g: the query's own |q|^2 changes no order in its
      row.
      The result's `metric` says what was ranked: the features' metric; for a distmat, `distmat_label` (what its
      distances are, e.g. "cosine, k-reciprocal re-ranked"), else `metric` if the caller names the distmat's
      metric, else UNNAMED_DISTMAT: rank_eval cannot know how a distmat was made.
      Inputs may be torch tensors, numpy arrays or cupy arrays (taken without a copy through DLPack); results are
      torch tensors on the device of the distances / features.
    max_rank: length of the CMC curve, clipped to the gallery size.
    ap_mode: "torchreid" (mean precision at each true match) or "market" (the official Market-1501 trapezoid AP,
      gallery label -1 is junk).
    precision: "strict" computes feature distances with IEEE fp32 GEMMs (no TF32, whatever the global setting);
      "fast", on CUDA, multiplies the features rounded to bf16 on tensor cores, accumulating in fp32 (TF32 where
      the installed torch has no bf16-to-fp32 GEMM), several times faster; rounding moves near-tied items and so
      mAP by a small amount (about 0.01 points on clustered 512-d and 2048-d features, emulated on the CPU). On the
      CPU both are fp32. Distances are fp32 in both.
    tile_size: queries per distance tile when working from features (default: a 1 GB tile on a GPU, 256 MB on the
      CPU). The full Q x G distance matrix is never held at once.
    Returns a `RankEvalResult` (cmc, mAP, mINP, per-query ap, inp, first_hit, num_matches, valid, num_valid and the
    convention used). Outputs never require grad. Raises ValueError/TypeError naming the bad argument; NaN distances
    raise ValueError.
    """
    if ap_mode not in AP_MODES:
        raise ValueError(f"rank_eval: ap_mode must be one of {AP_MODES}, got {ap_mode!r}")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"rank_eval: metric must be one of {METRICS}, got {metric!r}")
    if distmat_label is not None and (not isinstance(distmat_label, str) or not distmat_label.strip()):
        raise ValueError(f"rank_eval: distmat_label must be a non-empty string, got {distmat_label!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"rank_eval: precision must be one of {PRECISIONS}, got {precision!r}")
    count = as_int(max_rank)
    if count is None or count < 1:
        raise ValueError(f"rank_eval: max_rank must be an integer >= 1, got {max_rank!r}")
    max_rank = count
    if tile_size is not None:
        count = as_int(tile_size)
        if count is None or count < 1:
            raise ValueError(f"rank_eval: tile_size must be an integer >= 1 or None, got {tile_size!r}")
        tile_size = count
    have_features = query_features is not None or gallery_features is not None
    if (distmat is None) == (not have_features):
        raise ValueError("rank_eval: give either distmat or (query_features and gallery_features), not "
                         + ("both" if distmat is not None else "neither"))

    if distmat_label is not None and distmat is None:
        raise ValueError("rank_eval: distmat_label describes a distmat; distances from features are labelled by "
                         "metric")

    if distmat is not None:
        distmat = _floating_2d(distmat, "distmat")
        num_q, num_g = distmat.shape
        device = distmat.device
        # from here on `metric` is only the result's label: a distmat is ranked as given
        metric = distmat_label or metric or UNNAMED_DISTMAT
    else:
        metric = metric or "euclidean"
        query_features, gallery_features = feature_pair(query_features, gallery_features)
        num_q, num_g = query_features.shape[0], gallery_features.shape[0]
        device = query_features.device
    if num_q == 0 or num_g == 0:
        raise ValueError(f"rank_eval: needs at least one query and one gallery item, got Q={num_q}, G={num_g}")
    labels = {"q_pids": _labels(q_pids, "q_pids"), "q_camids": _labels(q_camids, "q_camids"),
              "g_pids": _labels(g_pids, "g_pids"), "g_camids": _labels(g_camids, "g_camids")}
    _check_sizes(labels, num_q, num_g, distmat)
    max_rank = min(int(max_rank), num_g)

    backend = _backend.resolve("rank_eval", device)
    with _matmul_precision(precision):
        if backend == "reference":
            q_pids, q_camids, g_pids, g_camids = (t.to(device) for t in labels.values())
            return reference.rank_eval(q_pids, g_pids, q_camids, g_camids, distmat, query_features,
                                       gallery_features, metric, max_rank, ap_mode)
        return _rank_with_kernels(labels, distmat, query_features, gallery_features, metric, max_rank, ap_mode,
                                  tile_size, device, precision)


def _int32_labels(labels: dict[str, torch.Tensor], device: torch.device):
    """The labels on `device` as int32, which the kernels read (half the bytes per gallery item of every query's
    pass), and, for labels already on the device, a function that queues their check.

    Labels on the host (numpy arrays, lists) are range-checked there and cross in one copy from pinned memory, which
    does not wait for the device; the function is then None. Labels already on the device are checked there: the
    function queues how many fall outside int32 as a (1,) float64 count, checked later with the summary in the
    evaluation's one synchronization. Out-of-range labels wrap meanwhile; the kernels only compare labels, and their
    results are then discarded.
    """
    on_host = all(t.device.type == "cpu" for t in labels.values())
    packed = torch.cat([t if on_host else t.to(device) for t in labels.values()])
    count_wrapped = None
    if on_host:
        _refuse_labels_beyond_int32(labels, packed)
        narrow = packed.to(torch.int32)
        if device.type == "cuda":
            narrow = narrow.pin_memory().to(device, non_blocking=True)
    else:
        narrow = packed.to(torch.int32)
        count_wrapped = lambda: (narrow != packed).sum(dtype=torch.float64).view(1)  # noqa: E731
    return list(narrow.split([t.numel() for t in labels.values()])), count_wrapped


def _refuse_labels_beyond_int32(labels: dict[str, torch.Tensor], packed: torch.Tensor | None = None) -> None:
    """Raises, naming them, if any labels fall outside int32 (on the device, this waits for it). packed: all of them
    in one tensor, if the caller has it, to check at once (the usual case, nothing out of range)."""
    if packed is not None:
        low, high = packed.aminmax()
        if int(low) >= -(2**31) and int(high) < 2**31:
            return
    bad = [name for name, t in labels.items() if int(t.min()) < -(2**31) or int(t.max()) >= 2**31]
    if bad:
        raise ValueError(f"rank_eval: {', '.join(bad)} must fit in int32 for the kernels")


def _rank_with_kernels(labels, distmat, query_features, gallery_features, metric, max_rank, ap_mode, tile_size,
                       device, precision) -> RankEvalResult:
    """torch.ops.reidfast.rank_queries tile by tile, then rank_summary; one synchronization on a GPU.

    Everything up to the summary is queued without waiting on the device; the checks (labels in int32 range, finite
    features, NaN rows, rows the CUDA kernel left unfinished) cross to the host with the summary, in one transfer.
    Few launches in all: at Market scale the ranking kernel takes a fraction of a millisecond, about as long as a
    few dozen small ops take to queue.
    """
    num_q = labels["q_pids"].numel()
    tiles = None
    if distmat is not None:
        step = num_q if tile_size is None else tile_size  # the matrix is already held: tiles only if asked
        rows = lambda a, b: distmat[a:b]  # noqa: E731
    else:
        tiles = _TiledDistance(query_features, gallery_features, metric, fast=precision == "fast")
        row_bytes = labels["g_pids"].numel() * (8 if tiles.q.dtype == torch.float64 else 4)  # float64 rows
        step = tile_size or max(1, DEFAULT_TILE_BYTES.get(device.type, DEFAULT_TILE_BYTES["cpu"]) // row_bytes)
        rows = tiles.rows
    # Queued in the order the GPU needs them: the first tile's GEMM, the labels, the first ranking kernel, and only
    # then the checks (label range, feature sizes), which nothing waits for until the summary. At Market scale the
    # host takes about as long to queue one small op as the GPU takes to run it, so every op queued ahead of the
    # GEMM or the ranking kernel without being needed by it is GPU time spent idle.
    first_tile = rows(0, min(step, num_q))
    (qp, qc, gp, gc), count_wrapped = _int32_labels(labels, device)
    checks = {}  # name -> float64 device values, cross to the host with the summary
    parts = []
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        tile = first_tile if start == 0 else rows(start, stop)
        parts.append(_rank_queries_op(tile, qp[start:stop], qc[start:stop], gp, gc, ap_mode))
        if start == 0:
            if count_wrapped is not None:
                checks["labels"] = count_wrapped()
            if tiles is not None:
                checks["largest_feature_sizes"] = tiles.largest_sizes()
    ap, inp, first_hit, num_matches = (torch.cat(t) if len(parts) > 1 else t[0] for t in zip(*parts))

    summary = _rank_summary_op(ap, inp, first_hit, num_matches, max_rank)
    valid = num_matches > 0  # queued before the wait, not after it
    host = (torch.cat([*checks.values(), summary]) if checks else summary).cpu()
    values, offset = {}, 0
    for name, value in checks.items():
        values[name], offset = host[offset:offset + value.numel()].tolist(), offset + value.numel()
    summary = host[offset:]
    if "labels" in values and values["labels"][0]:
        _refuse_labels_beyond_int32(labels)
    sizes = values.get("largest_feature_sizes", [])
    if not all(math.isfinite(v) for v in sizes):
        _raise_if_not_finite(sizes, query_features, gallery_features)
    tail = summary[max_rank:].tolist()
    if tail[NAN_ROWS]:
        nan_rows = (num_matches == NAN_ROW).nonzero()
        raise ValueError(f"rank_eval: the distance row of query {int(nan_rows[0])} contains NaN "
                         f"({nan_rows.numel()} such queries)")
    if tail[UNFINISHED_ROWS]:
        unfinished = (first_hit == UNFINISHED_ROW).nonzero().flatten()
        _redo_with_reference(unfinished, (ap, inp, first_hit, num_matches), labels, distmat, query_features,
                             gallery_features, metric, ap_mode)
        summary = _rank_summary_op(ap, inp, first_hit, num_matches, max_rank).cpu()
        valid = num_matches > 0
    return result_from_summary(summary, ap, inp, first_hit, num_matches, max_rank, ap_mode, metric, valid,
                               gallery_size=labels["g_pids"].numel())


def _raise_if_not_finite(largest_sizes, query_features, gallery_features) -> None:
    """The error for features whose largest row size is not finite: a non-finite value, or else a size beyond the
    dtype's range."""
    reference.check_features_finite(query_features, gallery_features)
    for size, name, features in zip(largest_sizes, ("query_features", "gallery_features"),
                                    (query_features, gallery_features)):
        if not math.isfinite(size):
            raise ValueError(f"rank_eval: {name} have norms beyond {features.dtype}'s range: scale them down")


def _redo_with_reference(idx, outputs, labels, distmat, query_features, gallery_features, metric, ap_mode):
    """Rows the CUDA kernel left unfinished (too many true matches for its shared memory), by the reference."""
    device = idx.device
    q_pids, q_camids, g_pids, g_camids = (labels[name].to(device) for name in ("q_pids", "q_camids", "g_pids",
                                                                               "g_camids"))
    dist = distmat[idx] if distmat is not None else reference.pairwise_distance(
        query_features[idx], gallery_features, metric)
    sub = reference.rank_eval(q_pids[idx], g_pids, q_camids[idx], g_camids, dist, max_rank=1, ap_mode=ap_mode)
    for out, fresh in zip(outputs, (sub.ap, sub.inp, sub.first_hit, sub.num_matches)):
        out[idx] = fresh
