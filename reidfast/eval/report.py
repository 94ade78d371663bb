"""The evaluation table: Rank-1/5/10/20, mAP and mINP, with the convention that produced them."""
from __future__ import annotations

from ..ops.rank_result import RankEvalResult

RANKS = (1, 5, 10, 20)


def metrics_dict(result: RankEvalResult) -> dict:
    """Numbers in percent (as papers print them), plus the counts and the convention."""
    out = {f"rank{k}": 100 * result.rank(k) for k in RANKS}
    out.update(mAP=100 * result.mAP, mINP=100 * result.mINP, num_valid=result.num_valid,
               num_queries=int(result.valid.numel()), ap_mode=result.ap_mode, metric=result.metric,
               tie_rule=result.tie_rule)
    return out


def format_table(result: RankEvalResult, title: str = "") -> str:
    m = metrics_dict(result)
    head = " | ".join(f"Rank-{k:<2}" for k in RANKS) + " | mAP     | mINP"
    vals = " | ".join(f"{m[f'rank{k}']:7.2f}" for k in RANKS) + f" | {m['mAP']:7.2f} | {m['mINP']:7.2f}"
    lines = [title] if title else []
    lines += [head, vals,
              f"valid queries: {m['num_valid']} of {m['num_queries']} (queries without a true match are skipped)",
              f"convention: {result.convention()}"]
    return "\n".join(lines)
