"""The result of `rank_eval`: per-query ranks and AP, and the summary numbers a re-id paper reports.

Kept apart from the op so the reference, the kernels' wrapper and the evaluation CLI build the same object.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from ._args import as_int

AP_MODES = ("torchreid", "market")
METRICS = ("euclidean", "cosine")
# The result's `metric` for a distmat ranked without a label: rank_eval cannot tell how its distances were made.
UNNAMED_DISTMAT = "a given distance matrix (not named)"
TIE_RULE = "stable: equal distances are ordered by gallery index"


@dataclasses.dataclass(frozen=True)
class RankEvalResult:
    """What `reidfast.ops.rank_eval` returns. Per-query tensors are on the device of the inputs.

    cmc: (max_rank,) float64 on the CPU (a summary, like mAP: reading Rank-k never waits on a GPU), cmc[r] =
      fraction of valid queries whose first true match is at rank <= r (0-based).
    mAP: mean of `ap` over the valid queries (NaN when no query is valid).
    mINP: mean inverse negative penalty over the valid queries: matches / (rank of the last one + 1), as defined in
      the re-id survey 'Deep Learning for Person Re-identification' (TPAMI 2021).
    ap, inp: (Q,) float64, 0 for invalid queries.
    first_hit: (Q,) int64, 0-based rank of the first true match after junk removal, -1 when the query has none.
    num_matches: (Q,) int64, true matches per query after junk removal.
    valid: (Q,) bool, the query has at least one true match. num_valid: their number.
    ap_mode, metric, max_rank, tie_rule: the convention that produced the numbers, for reports (metric: what was
      ranked, see `rank_eval`; max_rank: the CMC's length, clipped to the gallery size).
    gallery_size: G, the gallery items each query ranked (None where unknown).
    """

    cmc: torch.Tensor
    mAP: float
    mINP: float
    ap: torch.Tensor
    inp: torch.Tensor
    first_hit: torch.Tensor
    num_matches: torch.Tensor
    valid: torch.Tensor
    num_valid: int
    ap_mode: str
    metric: str
    max_rank: int
    tie_rule: str = TIE_RULE
    gallery_size: int | None = None

    def rank(self, k: int) -> float:
        """CMC at Rank-k (1-based, as papers write it). Past the end of a gallery of G items the CMC is flat (every
        first match lies within G ranks): Rank-k for k > G is Rank-G. NaN where it was not computed: k < 1, or k
        beyond a max_rank that stopped short of the gallery's end."""
        k_int = as_int(k)
        if k_int is None:
            raise TypeError(f"RankEvalResult.rank: k must be an int (a 1-based rank), got {type(k).__name__} {k!r}")
        k = k_int
        if k < 1 or self.cmc.numel() == 0:
            return math.nan
        if k <= self.cmc.numel():
            return float(self.cmc[k - 1])
        return float(self.cmc[-1]) if self.gallery_size is not None and self.cmc.numel() >= self.gallery_size \
            else math.nan

    def convention(self) -> str:
        """One line naming how the numbers were computed, to print beside them."""
        ap = {"torchreid": "AP = mean precision at each true match (torchreid / fast-reid)",
              "market": "AP = trapezoid rule of the official Market-1501 code, gallery label -1 is junk"}[self.ap_mode]
        return f"{ap}; ties: {self.tie_rule}; junk: same id and same camera; distance: {self.metric}"


# What the kernels write for rows they could not finish (csrc/include/reidfast/rank_math.h).
NAN_ROW = -1  # num_matches: the row has a NaN distance
UNFINISHED_ROW = -2  # first_hit: more true matches than the CUDA kernel's shared memory holds; redone by the reference

# The summary vector after its max_rank cumulative CMC counts (rank_math.h SummaryTail).
VALID_QUERIES, AP_SUM, INP_SUM, NAN_ROWS, UNFINISHED_ROWS = range(5)
SUMMARY_TAIL = 5


def summary_on_device(ap, inp, first_hit, num_matches, max_rank) -> torch.Tensor:
    """What the summary needs, as one float64 vector on the per-query outputs' device, to cross to the host in one
    transfer: [valid queries with first hit at rank <= r for r < max_rank] + [valid queries, sum AP, sum INP, NaN
    rows, unfinished rows]. The plain-torch twin of the `rank_summary` op, which the kernels' wrapper calls.

    No step waits on the device (a Market-scale evaluation otherwise spends more time waiting on small transfers
    than ranking).
    """
    valid = num_matches > 0
    # cumulative[r] = valid queries whose first hit is at rank <= r, by binary search in the sorted first hits
    # (invalid and unfinished queries sort last, never counted): no device-side maximum to wait for, as bincount
    # would, and deterministic, as atomic counting would not be.
    hits = torch.where(valid & (first_hit >= 0), first_hit, max_rank).sort().values
    cumulative = torch.searchsorted(hits, torch.arange(max_rank, device=hits.device), right=True)
    zero = torch.zeros((), dtype=ap.dtype, device=ap.device)
    tail = torch.stack([valid.sum(dtype=torch.float64), torch.where(valid, ap, zero).sum(),
                        torch.where(valid, inp, zero).sum(), (num_matches == NAN_ROW).sum(dtype=torch.float64),
                        (first_hit == UNFINISHED_ROW).sum(dtype=torch.float64)])
    return torch.cat([cumulative.double(), tail.double()])


def result_from_summary(summary, ap, inp, first_hit, num_matches, max_rank, ap_mode, metric,
                        valid=None, gallery_size=None) -> RankEvalResult:
    """The result, from `summary_on_device`'s vector once on the CPU and the per-query outputs (valid: num_matches > 0,
    if the caller queued it already)."""
    # The divisions happen on the CPU: CUDA divides by a scalar through its reciprocal, which would make the same
    # counts differ in the last bit between devices.
    cumulative, tail = summary[:max_rank], summary[max_rank:].tolist()
    num_valid, ap_sum, inp_sum = int(tail[VALID_QUERIES]), tail[AP_SUM], tail[INP_SUM]
    if num_valid == 0:
        warnings.warn("rank_eval: no query has a true match in the gallery; CMC, mAP and mINP are NaN", stacklevel=3)
        cmc = torch.full((max_rank,), math.nan, dtype=torch.float64)
        m_ap = m_inp = math.nan
    else:
        cmc = cumulative / num_valid
        m_ap = ap_sum / num_valid
        m_inp = inp_sum / num_valid
    return RankEvalResult(
        cmc=cmc, mAP=m_ap, mINP=m_inp, ap=ap, inp=inp, first_hit=first_hit, num_matches=num_matches,
        valid=num_matches > 0 if valid is None else valid, num_valid=num_valid, ap_mode=ap_mode, metric=metric,
        max_rank=max_rank, gallery_size=gallery_size,
    )


def summarize(ap, inp, first_hit, num_matches, max_rank, ap_mode, metric, gallery_size=None) -> RankEvalResult:
    """Builds the result from per-query outputs: CMC from the first hits, mAP and mINP over the valid queries."""
    summary = summary_on_device(ap, inp, first_hit, num_matches, max_rank).cpu()
    return result_from_summary(summary, ap, inp, first_hit, num_matches, max_rank, ap_mode, metric,
                               gallery_size=gallery_size)
