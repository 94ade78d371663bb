"""The per-query numpy evaluator that re-id codebases use (torchreid's Python evaluator style): argsort each row,
drop junk, cumulative sums for CMC and AP. A benchmark baseline only; the protocol is the torchreid convention."""
from __future__ import annotations

import numpy as np


def numpy_per_query(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """(cmc, mAP) with torchreid's AP, one query at a time."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap = [], []
    for i in range(num_q):
        order = np.argsort(distmat[i])  # numpy's default sort, as torchreid (ties in arbitrary order)
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        hits = (g_pids[order][keep] == q_pids[i]).astype(np.int32)
        if not hits.any():
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision_at = hits.cumsum() / np.arange(1, hits.size + 1)
        all_ap.append((precision_at * hits).sum() / hits.sum())
    return np.asarray(all_cmc, dtype=np.float64).mean(0), float(np.mean(all_ap))
