"""Benchmark cases for reidfast.ops.rank_eval at Market-1501 and MSMT17 scale from random features.

Baselines per row: the reference backend (sort-based, reidfast.ops.reference.rank_eval) and, where it runs in
reasonable time, the per-query numpy argsort loop of torchreid's Python evaluator (bench/rank_baselines.py).
Both take seconds, so they are timed with one run and no warm-up ("slow" timing); the reference at MSMT17 scale
is timed only from the distance matrix, and the numpy loop only at Market scale (the row says so in "note").
There is no torch.compile'd reference for a sort-based evaluation: ref_compiled_ms is null.
On the CPU only Market scale from a distance matrix runs by default (plus 512-d features without --quick);
REIDFAST_BENCH_RANK_MSMT_CPU=1 adds MSMT17 scale from a distance matrix.
"""
from __future__ import annotations

import os

import torch

from rank_baselines import numpy_per_query
from reidfast import ops
from timing import with_env

# (name, queries, gallery, test ids, cameras, fraction of gallery labelled 0 (distractors), and -1 (junk))
SCALES = {
    "market1501": (3368, 15913, 750, 6, 2798 / 15913, 3819 / 15913),
    "msmt17": (11659, 82161, 3060, 15, 0.0, 0.0),
}


def labels(scale, device, seed=0):
    """Ids and cameras drawn like the real test sets: every query id appears in the gallery, in several cameras."""
    num_q, num_g, num_ids, num_cams, frac_zero, frac_junk = SCALES[scale]
    g = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(1, num_ids + 1, (num_q,), generator=g)
    g_pids = torch.randint(1, num_ids + 1, (num_g,), generator=g)
    u = torch.rand(num_g, generator=g)
    g_pids[u < frac_zero] = 0
    g_pids[(u >= frac_zero) & (u < frac_zero + frac_junk)] = -1
    q_cams = torch.randint(0, num_cams, (num_q,), generator=g)
    g_cams = torch.randint(0, num_cams, (num_g,), generator=g)
    return [t.to(device) for t in (q_pids, g_pids, q_cams, g_cams)]


def _evaluate(backend, lab, **kw):
    def call():
        with ops.use_backend(backend):
            return ops.rank_eval(*lab, **kw)
    return call


def _counting_by_search(fn):
    """fn with the kernels' counting pass forced to the binary search (REIDFAST_RANK_COUNT=search, see
    csrc/include/reidfast/rank_checks.h): what the distance buckets replaced, timed in the same run."""
    return with_env(fn, "REIDFAST_RANK_COUNT", "search")


# The two ways the CUDA blocks find their query's matches (csrc/cuda/rank.cu, groups_by_scan; the default picks by
# Q x G), each forced in a row of its own: one of them is the default row's again, whichever the limit picks.
_GROUPS_NOTE = {"sort": "matches found in the gallery grouped by id (a sort and two searches, a dozen launches)",
                "scan": "matches found by every block reading all gallery ids"}


def _numpy_loop(lab, dist):
    arrays = [t.cpu().numpy() for t in lab]
    dist_np = dist.cpu().numpy()
    return lambda: numpy_per_query(dist_np, *arrays)


def cases(device: torch.device, quick: bool):
    backend = "cuda" if device.type == "cuda" else "cpu"
    plan = []  # (scale, input, dim, precision)
    if device.type == "cuda":
        for scale in ("market1501", "msmt17"):
            plan.append((scale, "distmat", 0, "strict"))
            for dim in (2048, 512):
                plan += [(scale, "features", dim, "strict"), (scale, "features", dim, "fast")]
    else:
        plan.append(("market1501", "distmat", 0, "strict"))
        if not quick:
            plan.append(("market1501", "features", 512, "strict"))
        if os.environ.get("REIDFAST_BENCH_RANK_MSMT_CPU") == "1":
            plan.append(("msmt17", "distmat", 0, "strict"))
    for scale, kind, dim, precision in plan:
        lab = labels(scale, device)
        num_q, num_g = SCALES[scale][:2]
        g = torch.Generator(device=device).manual_seed(1)
        notes = []
        if kind == "distmat":
            dist = torch.rand(num_q, num_g, device=device, generator=g)
            inputs = dict(distmat=dist)
            shape = [num_q, num_g]
        else:
            qf = torch.randn(num_q, dim, device=device, generator=g)
            gf = torch.randn(num_g, dim, device=device, generator=g)
            inputs = dict(query_features=qf, gallery_features=gf, precision=precision)
            shape = [num_q, num_g, dim]
            dist = None
        ours = _evaluate(backend, lab, **inputs)
        reference_ok = scale == "market1501" or kind == "distmat"
        ref = _evaluate("reference", lab, **inputs) if reference_ok else None
        if ref is None:
            notes.append("reference timed at Market scale and from the distance matrix only")
        baselines = {}
        if scale == "market1501" and kind == "distmat":
            baselines["numpy_loop"] = _numpy_loop(lab, dist)
        elif kind == "distmat":
            notes.append("numpy loop timed at Market scale only")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = ours()
        row_extra = {"scale": scale, "input": kind, "precision": precision, "mAP": round(100 * result.mAP, 4),
                     "rank1": round(100 * result.rank(1), 4)}
        if device.type == "cuda":  # bounded by the tiles: the inputs plus about one 1 GB distance tile
            row_extra["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if ref is not None:
            ref_result = ref()
            row_extra["ref_mAP"] = round(100 * ref_result.mAP, 4)
        # One distance-matrix read per query row, plus the labels (int32) from L2: the counting pass's bytes.
        nbytes = num_q * num_g * 4 if kind == "distmat" else None
        yield {
            "op": "rank_eval", "pass": f"{kind}" + (f"-{dim}d-{precision}" if dim else ""), "shape": shape,
            "dtype": "float32", "backend": backend, "fn": ours, "ref": ref, "ref_compiled": None,
            "baselines": baselines, "slow_baselines": True, "bytes": nbytes, "note": "; ".join(notes),
            **row_extra,
        }
        for groups in _GROUPS_NOTE if kind == "distmat" and device.type == "cuda" else ():
            regrouped = with_env(ours, "REIDFAST_RANK_GROUPS", groups)
            same = regrouped()
            assert same.mAP == result.mAP and torch.equal(same.first_hit, result.first_hit), \
                f"REIDFAST_RANK_GROUPS={groups} changed the result"
            yield {
                "op": "rank_eval", "pass": f"distmat-groups-by-{groups}", "shape": shape, "dtype": "float32",
                "backend": backend, "fn": regrouped, "ref": None, "ref_compiled": None, "baselines": {},
                "slow_baselines": True, "bytes": nbytes,
                "note": f"REIDFAST_RANK_GROUPS={groups}: " + _GROUPS_NOTE[groups], "scale": scale, "input": kind,
                "precision": precision, "mAP": row_extra["mAP"], "rank1": row_extra["rank1"],
            }
        if kind == "distmat":  # the same evaluation with the counting pass the buckets replaced
            searched = _counting_by_search(ours)
            same = searched()
            assert same.mAP == result.mAP and torch.equal(same.first_hit, result.first_hit), \
                "REIDFAST_RANK_COUNT=search changed the result"
            yield {
                "op": "rank_eval", "pass": "distmat-search-count", "shape": shape, "dtype": "float32",
                "backend": backend, "fn": searched, "ref": None, "ref_compiled": None, "baselines": {},
                "slow_baselines": True, "bytes": nbytes,
                "note": "REIDFAST_RANK_COUNT=search: every row's counting pass by binary search, as before the "
                        "distance buckets", "scale": scale, "input": kind, "precision": precision,
                "mAP": row_extra["mAP"], "rank1": row_extra["rank1"],
            }
