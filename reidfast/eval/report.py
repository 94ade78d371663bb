"""The evaluation table: Rank-1/5/10/20, mAP and mINP, with the convention that produced them."""
from __future__ import annotations

import math

from ..ops.rank_result import RankEvalResult

RANKS = (1, 5, 10, 20)


def metrics_dict(result: RankEvalResult) -> dict:
    """Numbers as fractions in [0, 1], as rank_eval and a run's metrics.json give them under the same keys (the table
    prints percent), plus the counts and the convention. Rank-k follows `RankEvalResult.rank`: flat past the
    gallery's end, NaN past a max_rank short of it."""
    out = {f"rank{k}": result.rank(k) for k in RANKS}
    out.update(mAP=result.mAP, mINP=result.mINP, num_valid=result.num_valid,
               num_queries=int(result.valid.numel()), ap_mode=result.ap_mode, metric=result.metric,
               tie_rule=result.tie_rule)
    return out


def _cell(value: float) -> str:
    # NaN: not computed (Rank-k past a CMC that --max-rank cut short of the gallery's end) or undefined (no valid
    # query)
    return f"{100 * value:7.2f}" if math.isfinite(value) else f"{'n/a':>7}"


def format_table(result: RankEvalResult, title: str = "") -> str:
    m = metrics_dict(result)
    head = " | ".join(f"Rank-{k:<2}" for k in RANKS) + " | mAP     | mINP"
    vals = " | ".join(_cell(m[f"rank{k}"]) for k in RANKS) + f" | {_cell(m['mAP'])} | {_cell(m['mINP'])}"
    lines = [title] if title else []
    lines += [head, vals,
              f"valid queries: {m['num_valid']} of {m['num_queries']} (queries without a true match are skipped)",
              f"convention: {result.convention()}"]
    return "\n".join(lines)
