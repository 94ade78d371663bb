"""rank_eval: hand-computed protocol cases, every backend against the reference, the reference against a direct
per-query evaluator written here, input kinds, tiling, errors, and opcheck of the C++ op."""
import importlib
import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reidfast import ops
from reidfast.ops import reference
from reidfast.ops.rank_result import (NAN_ROW, NAN_ROWS, SUMMARY_TAIL, UNFINISHED_ROW, UNFINISHED_ROWS,
                                      UNNAMED_DISTMAT, summary_on_device)

from ..conftest import run_in_fresh_process

rank_eval_module = importlib.import_module("reidfast.ops.rank_eval")  # the module; ops.rank_eval is the function

HAS_KERNELS = rank_eval_module._HAS_KERNELS
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="reidfast._C not built with rank_queries")


def cpu_backends():
    return ["reference"] + (["cpu"] if HAS_KERNELS else [])


def evaluate(backend, *labels, **kw):
    with ops.use_backend(backend):
        return ops.rank_eval(*labels, **kw)


# --- A direct per-query evaluator: argsort each row, drop junk, walk the matches (official scripts' style) ---

def direct_per_query(distmat, q_pids, g_pids, q_camids, g_camids, ap_mode):
    """(ap, first_hit, inp) per query, NaN / -1 for queries without a match. Straight from the definitions."""
    out = []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        if ap_mode == "market":
            junk |= g_pids[order] == -1
        good = (g_pids[order] == q_pids[i])[~junk]
        rows_good = np.flatnonzero(good)
        if rows_good.size == 0:
            out.append((math.nan, -1, math.nan))
            continue
        ap = 0.0
        for i_match, r in enumerate(rows_good):
            precision = (i_match + 1) / (r + 1)
            if ap_mode == "market":
                old_precision = i_match / r if r != 0 else 1.0
                ap += (old_precision + precision) / 2 / rows_good.size
            else:
                ap += precision / rows_good.size
        out.append((ap, int(rows_good[0]), rows_good.size / (rows_good[-1] + 1)))
    return out


def random_protocol(num_q, num_g, num_ids, num_cams, seed, distance_levels=None, distractors=True):
    g = np.random.default_rng(seed)
    q_pids = g.integers(1, num_ids + 1, num_q)
    g_pids = g.integers(1, num_ids + 1, num_g)
    if distractors:
        g_pids[g.random(num_g) < 0.1] = 0
        g_pids[g.random(num_g) < 0.1] = -1
    q_cams = g.integers(0, num_cams, num_q)
    g_cams = g.integers(0, num_cams, num_g)
    if distance_levels:  # few distinct values: many exact ties
        dist = g.integers(0, distance_levels, (num_q, num_g)).astype(np.float32)
    else:
        dist = g.random((num_q, num_g), dtype=np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


# --- Hand-computed cases ---

@pytest.mark.parametrize("backend", cpu_backends())
def test_ties_are_broken_by_gallery_index(backend):
    # Order: item 2 (0.5), then the tie 0, 1, 3 by index. The only match (item 1) lands at rank 2.
    dist = torch.tensor([[1.0, 1.0, 0.5, 1.0]])
    r = evaluate(backend, [7], [3, 7, 3, 3], [0], [1, 1, 1, 1], distmat=dist, max_rank=4)
    assert r.first_hit.tolist() == [2]
    assert r.ap.tolist() == pytest.approx([1 / 3])
    assert r.cmc.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert r.inp.tolist() == pytest.approx([1 / 3])
    assert "gallery index" in r.tie_rule


@pytest.mark.parametrize("backend", cpu_backends())
def test_both_ap_conventions_by_hand(backend):
    # Kept order after sorting: 2 (non-match), 0 (match), 1 (non-match), 3 (match): ranks 1 and 3.
    dist = torch.tensor([[1.0, 1.0, 0.5, 1.0]])
    labels = ([1], [1, 2, 2, 1], [0], [1, 1, 1, 1])
    tr = evaluate(backend, *labels, distmat=dist, ap_mode="torchreid")
    mk = evaluate(backend, *labels, distmat=dist, ap_mode="market")
    assert tr.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    # market: k=1 at rank 1: (0/1 + 1/2)/2; k=2 at rank 3: (1/3 + 2/4)/2
    assert mk.mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 3 + 1 / 2) / 2) / 2)
    assert tr.mINP == pytest.approx(2 / 4)
    assert tr.ap_mode == "torchreid" and mk.ap_mode == "market"


@pytest.mark.parametrize("backend", cpu_backends())
def test_market_first_match_at_rank_zero(backend):
    # Matches at ranks 0 and 2: market AP = ((1 + 1)/2 + (1/2 + 2/3)/2) / 2, torchreid AP = (1 + 2/3) / 2.
    dist = torch.tensor([[0.1, 0.2, 0.3]])
    labels = ([5], [5, 6, 5], [0], [1, 1, 1])
    assert evaluate(backend, *labels, distmat=dist, ap_mode="market").mAP == pytest.approx(
        (1 + (1 / 2 + 2 / 3) / 2) / 2)
    assert evaluate(backend, *labels, distmat=dist).mAP == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("backend", cpu_backends())
def test_junk_and_invalid_queries(backend):
    # Query 0: its only same-id item shares its camera (junk): invalid. Query 1: order is non-match, junk, match;
    # the junk item does not count, so the match is at rank 1. Query 2: id absent from the gallery: invalid.
    dist = torch.tensor([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2], [0.3, 0.2, 0.1]])
    r = evaluate(backend, [1, 2, 9], [1, 2, 2], [0, 0, 0], [0, 0, 1], distmat=dist, max_rank=3)
    assert r.valid.tolist() == [False, True, False]
    assert r.num_valid == 1
    assert r.first_hit.tolist() == [-1, 1, -1]
    assert r.num_matches.tolist() == [0, 1, 0]
    assert r.ap.tolist() == [0.0, 0.5, 0.0]
    assert r.mAP == 0.5 and r.cmc.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("backend", cpu_backends())
def test_matches_ranked_last(backend):
    # 6 non-matches first, then the 2 matches: ranks 6 and 7.
    dist = torch.arange(8, dtype=torch.float32)[None]
    r = evaluate(backend, [1], [0, 2, 3, 4, 5, 6, 1, 1], [0], [1] * 8, distmat=dist, max_rank=10)
    assert r.first_hit.tolist() == [6]
    assert r.ap.tolist() == pytest.approx([(1 / 7 + 2 / 8) / 2])
    assert r.cmc.numel() == 8  # max_rank clipped to the gallery size
    assert r.cmc.tolist() == [0.0] * 6 + [1.0, 1.0]
    assert r.inp.tolist() == pytest.approx([2 / 8])


@pytest.mark.parametrize("backend", cpu_backends())
def test_distractor_labels(backend):
    # Gallery: 0 (distractor "0000"), -1 (junk in Market's files), then the match.
    dist = torch.tensor([[0.1, 0.2, 0.3]])
    labels = ([4], [0, -1, 4], [0], [1, 1, 1])
    tr = evaluate(backend, *labels, distmat=dist)
    mk = evaluate(backend, *labels, distmat=dist, ap_mode="market")
    assert tr.first_hit.tolist() == [2]  # -1 is an ordinary non-match for torchreid
    assert mk.first_hit.tolist() == [1]  # ... and junk for the official code; 0 stays a non-match in both
    assert tr.mAP == pytest.approx(1 / 3)
    assert mk.mAP == pytest.approx((0 / 1 + 1 / 2) / 2)  # match at rank 1: (precision before + at) / 2


@pytest.mark.parametrize("backend", cpu_backends())
def test_one_gallery_item(backend):
    r = evaluate(backend, [1, 2], [1], [0, 0], [1], distmat=torch.tensor([[3.0], [1.0]]), max_rank=50)
    assert r.cmc.tolist() == [1.0]
    assert r.valid.tolist() == [True, False]
    # past the gallery's end the CMC is flat: every first match lies within its G ranks
    assert r.mAP == 1.0 and r.rank(1) == 1.0 and r.rank(5) == 1.0


@pytest.mark.parametrize("backend", cpu_backends())
def test_no_valid_query_gives_nan_and_warns(backend):
    with pytest.warns(UserWarning, match="no query"):
        r = evaluate(backend, [1], [2, 3], [0], [0, 0], distmat=torch.zeros(1, 2))
    assert r.num_valid == 0 and math.isnan(r.mAP) and torch.isnan(r.cmc).all()


# --- The reference against the direct evaluator, and every backend against the reference ---

@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
@pytest.mark.parametrize("levels", [None, 4])
def test_reference_matches_direct_evaluator(ap_mode, levels):
    dist, qp, gp, qc, gc = random_protocol(40, 300, 25, 4, seed=1, distance_levels=levels)
    r = reference.rank_eval(*(torch.from_numpy(a) for a in (qp, gp, qc, gc)), torch.from_numpy(dist),
                            max_rank=20, ap_mode=ap_mode)
    want = direct_per_query(dist, qp, gp, qc, gc, ap_mode)
    valid = [not math.isnan(a) for a, _, _ in want]
    assert r.valid.tolist() == valid
    assert r.first_hit.tolist() == [f for _, f, _ in want]
    np.testing.assert_allclose(r.ap.numpy()[valid], [a for a, _, _ in want if not math.isnan(a)], rtol=1e-12)
    np.testing.assert_allclose(r.inp.numpy()[valid], [x for _, _, x in want if not math.isnan(x)], rtol=1e-12)
    hits = np.array([f for _, f, _ in want if f >= 0])
    np.testing.assert_allclose(r.cmc.numpy(), [(hits <= k).mean() for k in range(20)], rtol=1e-12)


def assert_same_result(got, want):
    assert torch.equal(got.first_hit.cpu(), want.first_hit.cpu())
    assert torch.equal(got.num_matches.cpu(), want.num_matches.cpu())
    assert torch.equal(got.valid.cpu(), want.valid.cpu())
    torch.testing.assert_close(got.ap.cpu(), want.ap.cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.inp.cpu(), want.inp.cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.cmc.cpu(), want.cmc.cpu(), rtol=0, atol=0)
    assert got.num_valid == want.num_valid
    assert got.mAP == pytest.approx(want.mAP, rel=1e-12)
    assert got.mINP == pytest.approx(want.mINP, rel=1e-12)


@needs_kernels
@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_matches_reference(ap_mode, levels, dtype):
    dist, qp, gp, qc, gc = random_protocol(64, 517, 30, 5, seed=2, distance_levels=levels)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    d = torch.from_numpy(dist).to(dtype)
    got = evaluate("cpu", *labels, distmat=d, ap_mode=ap_mode, max_rank=30)
    want = evaluate("reference", *labels, distmat=d, ap_mode=ap_mode, max_rank=30)
    assert_same_result(got, want)


# The regimes of the counting pass's distance buckets (csrc/include/reidfast/rank_math.h, MatchBuckets): rows with
# one match or all distances equal have no span to cut into buckets (binary search instead); about 450 matches a
# row put several matches in a bucket of the CUDA kernel's 1024-entry table; clustered distances (a narrow band
# near zero, matches far out) put most items in the first bucket.
BUCKET_REGIMES = {
    "one match": dict(num_q=64, num_g=1031, num_ids=500, num_cams=3),
    "one distance": dict(num_q=32, num_g=1031, num_ids=12, num_cams=3, distance_levels=1),
    "450 matches": dict(num_q=24, num_g=4099, num_ids=6, num_cams=6),
    "clustered": dict(num_q=48, num_g=2003, num_ids=20, num_cams=4),
}


def bucket_regime_protocol(regime):
    setting = dict(BUCKET_REGIMES[regime])
    dist, qp, gp, qc, gc = random_protocol(num_q=setting.pop("num_q"), num_g=setting.pop("num_g"), seed=31,
                                           **setting)
    if regime == "clustered":
        dist = dist ** 16  # two thirds of the distances below 1e-3 (some 0: ties), a few near 1
    return torch.from_numpy(dist), [torch.from_numpy(a) for a in (qp, gp, qc, gc)]


@needs_kernels
@pytest.mark.parametrize("count", ["buckets", "search"])
@pytest.mark.parametrize("regime", list(BUCKET_REGIMES))
def test_cpu_kernel_matches_reference_in_every_bucket_regime(regime, count, monkeypatch):
    monkeypatch.setenv("REIDFAST_RANK_COUNT", count)  # search: every row through the binary search
    d, labels = bucket_regime_protocol(regime)
    assert_same_result(evaluate("cpu", *labels, distmat=d), evaluate("reference", *labels, distmat=d))


def integer_features(num, dim, seed):
    # Small integers: every distance is exact in fp32, so tiles and backends must agree bit for bit.
    return torch.from_numpy(np.random.default_rng(seed).integers(-3, 4, (num, dim)).astype(np.float32))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_tiled_and_untiled_agree_with_distmat(backend, metric):
    _, qp, gp, qc, gc = random_protocol(37, 211, 12, 3, seed=3)
    qf, gf = integer_features(37, 8, 4), integer_features(211, 8, 5)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    from_dist = evaluate(backend, *labels, distmat=reference.pairwise_distance(qf, gf, metric), metric=metric)
    untiled = evaluate(backend, *labels, query_features=qf, gallery_features=gf, metric=metric)
    tiled = evaluate(backend, *labels, query_features=qf, gallery_features=gf, metric=metric, tile_size=5)
    if metric == "euclidean":
        assert_same_result(untiled, from_dist)
        assert_same_result(tiled, from_dist)
    else:  # normalized rows are not exact: allow an ulp-level reordering to move AP a little
        for r in (untiled, tiled):
            assert r.mAP == pytest.approx(from_dist.mAP, abs=1e-3)
            assert torch.equal(r.valid, from_dist.valid)


@needs_kernels
def test_distmat_tiles_agree():
    dist, qp, gp, qc, gc = random_protocol(50, 100, 10, 3, seed=6, distance_levels=5)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    d = torch.from_numpy(dist)
    assert_same_result(evaluate("cpu", *labels, distmat=d, tile_size=7), evaluate("reference", *labels, distmat=d))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_feature_tiles_hold_the_byte_budget(monkeypatch, dtype):
    # 10 rows' worth of float32 distances: float64 features (float64 distance rows) must get 5-row tiles
    num_q, num_g = 23, 40
    monkeypatch.setitem(rank_eval_module.DEFAULT_TILE_BYTES, "cpu", 10 * 4 * num_g)
    tile_rows = []
    real_op = rank_eval_module._rank_queries_op

    def spy(dist, *args):
        assert dist.dtype == dtype
        tile_rows.append(dist.shape[0])
        return real_op(dist, *args)

    monkeypatch.setattr(rank_eval_module, "_rank_queries_op", spy)
    _, qp, gp, qc, gc = random_protocol(num_q, num_g, 6, 3, seed=8)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    qf, gf = integer_features(num_q, 8, 9).to(dtype), integer_features(num_g, 8, 10).to(dtype)
    got = evaluate("cpu", *labels, query_features=qf, gallery_features=gf)
    rows = 10 if dtype == torch.float32 else 5
    assert tile_rows == [rows] * (num_q // rows) + [num_q % rows]
    assert_same_result(got, evaluate("reference", *labels, distmat=reference.pairwise_distance(qf, gf, "euclidean")))


def test_euclidean_is_torchreid_squared_l2():
    qf, gf = torch.randn(5, 16, dtype=torch.float64), torch.randn(7, 16, dtype=torch.float64)
    torch.testing.assert_close(reference.pairwise_distance(qf, gf, "euclidean"), torch.cdist(qf, gf) ** 2)
    cos = torch.nn.functional.cosine_similarity(qf[:, None], gf[None], dim=2)
    torch.testing.assert_close(reference.pairwise_distance(qf, gf, "cosine"), 1 - cos)


@pytest.mark.parametrize("backend", cpu_backends())
def test_numpy_and_non_contiguous_inputs(backend):
    dist, qp, gp, qc, gc = random_protocol(20, 60, 8, 3, seed=7)
    want = evaluate("reference", *(torch.from_numpy(a) for a in (qp, gp, qc, gc)), distmat=torch.from_numpy(dist))
    got = evaluate(backend, qp, gp, qc.astype(np.int32), gc.astype(np.int16), distmat=dist)
    assert_same_result(got, want)
    wide = np.zeros((60, 40), dtype=np.float32)
    wide[:, ::2] = dist.T  # a transposed, strided view holding the same matrix
    got = evaluate(backend, qp, gp, qc, gc, distmat=torch.from_numpy(wide)[:, ::2].t())
    assert_same_result(got, want)
    got = evaluate(backend, qp, gp, qc, gc, distmat=torch.from_numpy(dist).half())  # widened to float32
    assert got.num_valid == want.num_valid


@pytest.mark.parametrize("backend", cpu_backends())
def test_features_from_numpy(backend):
    _, qp, gp, qc, gc = random_protocol(9, 30, 5, 2, seed=8)
    qf, gf = integer_features(9, 6, 1), integer_features(30, 6, 2)
    want = evaluate("reference", *(torch.from_numpy(a) for a in (qp, gp, qc, gc)), query_features=qf,
                    gallery_features=gf)
    assert_same_result(evaluate(backend, qp, gp, qc, gc, query_features=qf.numpy(), gallery_features=gf.numpy()),
                       want)


@pytest.mark.gpu
def test_cupy_input_without_copy():
    # cupy is an optional input type: where it is installed, its arrays are read in place
    cupy = pytest.importorskip("cupy")
    dist, qp, gp, qc, gc = random_protocol(20, 60, 8, 3, seed=9)
    d = cupy.asarray(dist)
    got = ops.rank_eval(cupy.asarray(qp), cupy.asarray(gp), cupy.asarray(qc), cupy.asarray(gc), distmat=d)
    assert got.ap.device.type == "cuda"
    assert rank_eval_module._as_tensor(d, "distmat").data_ptr() == d.data.ptr  # shared, not copied
    want = reference.rank_eval(*(torch.from_numpy(a) for a in (qp, gp, qc, gc)), torch.from_numpy(dist))
    assert_same_result(got, want)


# --- Errors ---

LABELS = ([1, 2], [1, 2, 3], [0, 0], [1, 1, 1])


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(distmat=torch.zeros(2, 4)), ValueError,
     r"distmat has shape \(2, 4\) but there are 2 queries \(q_pids\) and 3 gallery items \(g_pids\)"),
    (dict(distmat=torch.zeros(3, 3)), ValueError, r"distmat has shape \(3, 3\) but there are 2 queries"),
    (dict(query_features=torch.zeros(3, 4), gallery_features=torch.zeros(3, 4)), ValueError,
     r"query_features has 3 rows but there are 2 queries \(q_pids\)"),
    (dict(query_features=torch.zeros(2, 4), gallery_features=torch.zeros(4, 4)), ValueError,
     r"gallery_features has 4 rows but there are 3 gallery items \(g_pids\)"),
    (dict(distmat=torch.zeros(2, 3, 1)), ValueError, "distmat must be 2-D"),
    (dict(distmat=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "distmat must be floating"),
    (dict(query_features=torch.zeros(2, 4), gallery_features=torch.zeros(3, 5)), ValueError, "dimension 4"),
    (dict(query_features=torch.zeros(2), gallery_features=torch.zeros(3, 5)), ValueError, "query_features must be 2-D"),
    (dict(query_features=torch.zeros(2, 4)), ValueError, "gallery_features is missing"),
    (dict(), ValueError, "neither"),
    (dict(distmat=torch.zeros(2, 3), query_features=torch.zeros(2, 4), gallery_features=torch.zeros(3, 4)),
     ValueError, "both"),
    (dict(distmat=torch.zeros(2, 3), ap_mode="cmc"), ValueError, "ap_mode"),
    (dict(distmat=torch.zeros(2, 3), metric="l1"), ValueError, "metric"),
    (dict(distmat=torch.zeros(2, 3), max_rank=0), ValueError, "max_rank"),
    (dict(distmat=torch.zeros(2, 3), precision="tf32"), ValueError, "precision"),
    (dict(distmat=torch.zeros(2, 3), tile_size=0), ValueError, "tile_size"),
    (dict(distmat=torch.zeros(2, 3), max_rank=True), ValueError, "max_rank must be an integer >= 1, got True"),
    (dict(distmat=torch.zeros(2, 3), max_rank=torch.tensor(True)), ValueError, "max_rank must be an integer"),
    (dict(distmat=torch.zeros(2, 3), tile_size=2.0), ValueError, "tile_size must be an integer >= 1 or None"),
    (dict(query_features=torch.zeros(2, 0), gallery_features=torch.zeros(3, 0)), ValueError, "dimension 0"),
    (dict(distmat=torch.zeros(0, 3)), ValueError, "at least one query"),
])
def test_errors(backend, kwargs, error, match):
    labels = LABELS
    if "distmat" in kwargs and kwargs["distmat"].dim() == 2 and kwargs["distmat"].shape[0] == 0:
        labels = ([], [1, 2, 3], [], [1, 1, 1])
    with pytest.raises(error, match=match):
        evaluate(backend, *labels, **kwargs)


@pytest.mark.parametrize("backend", cpu_backends())
def test_counts_are_the_integers_the_other_ops_take(backend):
    # max_rank and tile_size read as the warp's sizes are: numpy and 0-d tensor integers too
    dist = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
    want = evaluate(backend, *LABELS, distmat=dist, max_rank=2, tile_size=1)
    got = evaluate(backend, *LABELS, distmat=dist, max_rank=torch.tensor(2), tile_size=np.int64(1))
    torch.testing.assert_close(got.cmc, want.cmc)
    assert got.mAP == want.mAP and got.cmc.shape == (2,)


@pytest.mark.parametrize("backend", cpu_backends())
def test_a_transposed_distmat_is_named(backend):
    _, qp, gp, qc, gc = random_protocol(7, 23, 4, 2, seed=1)
    with pytest.raises(ValueError, match=r"distmat has shape \(23, 7\) but there are 7 queries \(q_pids\) and 23 "
                                         r"gallery items \(g_pids\)"):
        evaluate(backend, qp, gp, qc, gc, distmat=torch.rand(7, 23).t())


@pytest.mark.parametrize("backend", cpu_backends())
def test_cameras_must_match_the_ids(backend):
    with pytest.raises(ValueError, match="g_camids has 2 entries but g_pids has 3"):
        evaluate(backend, *LABELS[:3], [1, 1], distmat=torch.zeros(2, 3))


@pytest.mark.parametrize("backend", cpu_backends())
def test_labels_that_are_not_numbers_are_named(backend):
    with pytest.raises(TypeError, match="rank_eval: q_pids must hold numbers, got a numpy array of dtype <U1"):
        evaluate(backend, np.array(["a", "b"]), *LABELS[1:], distmat=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="gallery_features must hold numbers"):
        evaluate(backend, *LABELS, query_features=torch.zeros(2, 4), gallery_features=np.full((3, 4), "x"))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("source", ["features", "distmat"])
def test_outputs_never_require_grad(backend, source):
    # Ranks are not differentiable: no output may carry a graph, whatever the inputs require
    qf, gf = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4)
    inputs = (dict(query_features=qf, gallery_features=gf) if source == "features"
              else dict(distmat=reference.pairwise_distance(qf, gf, "euclidean")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when an op without autograd meets a tensor requiring grad
        r = evaluate(backend, [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [1] * 5, **inputs)
    for name in ("cmc", "ap", "inp", "first_hit", "num_matches", "valid"):
        assert not getattr(r, name).requires_grad, name


@pytest.mark.parametrize("backend", cpu_backends())
def test_the_result_says_what_was_ranked(backend):
    labels = ([1, 2], [1, 2, 1], [0, 0], [1, 1, 1])
    qf, gf = torch.randn(2, 4), torch.randn(3, 4)
    dist = reference.pairwise_distance(qf, gf, "cosine")
    assert evaluate(backend, *labels, query_features=qf, gallery_features=gf).metric == "euclidean"
    assert evaluate(backend, *labels, query_features=qf, gallery_features=gf, metric="cosine").metric == "cosine"
    # a distmat's distances are whatever made them: unnamed unless the caller says
    assert evaluate(backend, *labels, distmat=dist).metric == UNNAMED_DISTMAT
    assert evaluate(backend, *labels, distmat=dist, metric="cosine").metric == "cosine"
    named = evaluate(backend, *labels, distmat=dist, distmat_label="cosine, re-scored")
    assert named.metric == "cosine, re-scored" and named.convention().endswith("distance: cosine, re-scored")
    with pytest.raises(ValueError, match="distmat_label describes a distmat"):
        evaluate(backend, *labels, query_features=qf, gallery_features=gf, distmat_label="cosine")
    with pytest.raises(ValueError, match="distmat_label must be a non-empty string"):
        evaluate(backend, *labels, distmat=dist, distmat_label=" ")


@pytest.mark.parametrize("backend", cpu_backends())
def test_rank_past_the_end_of_the_cmc(backend):
    dist, qp, gp, qc, gc = random_protocol(20, 12, 4, 2, seed=2)
    whole = evaluate(backend, qp, gp, qc, gc, distmat=dist)
    assert whole.cmc.numel() == 12 and whole.rank(20) == whole.rank(12) == float(whole.cmc[-1])
    # a CMC cut short of the gallery's end by max_rank: the ranks past it were not computed
    cut = evaluate(backend, qp, gp, qc, gc, distmat=dist, max_rank=3)
    assert cut.rank(3) == whole.rank(3) and math.isnan(cut.rank(5)) and math.isnan(cut.rank(0))
    assert whole.rank(np.int64(3)) == whole.rank(torch.tensor(3)) == whole.rank(3)
    for bad in (1.5, "1", None):
        with pytest.raises(TypeError, match=r"RankEvalResult.rank: k must be an int \(a 1-based rank\), got"):
            whole.rank(bad)


@pytest.mark.parametrize("backend", cpu_backends())
def test_float_labels_and_2d_labels_are_rejected(backend):
    with pytest.raises(TypeError, match="q_pids must hold integers"):
        evaluate(backend, [1.0, 2.0], *LABELS[1:], distmat=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="g_camids must be 1-D"):
        evaluate(backend, *LABELS[:3], [[1, 1, 1]], distmat=torch.zeros(2, 3))


@pytest.mark.parametrize("backend", cpu_backends())
def test_nan_distances_are_an_error(backend):
    dist = torch.zeros(2, 3)
    dist[1, 2] = math.nan
    with pytest.raises(ValueError, match="query 1 contains NaN"):
        evaluate(backend, *LABELS, distmat=dist)
    qf = torch.ones(2, 4)
    qf[0, 0] = math.nan
    with pytest.raises(ValueError, match="query_features must be finite, but row 0 holds a non-finite value"):
        evaluate(backend, *LABELS, query_features=qf, gallery_features=torch.ones(3, 4))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("side", ["query_features", "gallery_features"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_are_an_error(backend, metric, side, bad):
    # An infinite feature gives its rows infinite or NaN distances, which would rank silently: refused by name.
    features = {"query_features": torch.randn(3, 4), "gallery_features": torch.randn(5, 4)}
    features[side][1, 2] = bad
    with pytest.raises(ValueError, match=f"{side} must be finite, but row 1 holds a non-finite value"):
        evaluate(backend, [1, 2, 1], [1, 2, 1, 2, 3], [0, 0, 0], [1, 1, 1, 1, 1], metric=metric, **features)


@needs_kernels
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_beyond_the_dtype_range_are_an_error(metric):
    # Finite, but |g|^2 (euclidean) or |g| (cosine) overflows float32: no ranking could be trusted.
    gallery = torch.randn(5, 4)
    gallery[3] = 1e30
    with pytest.raises(ValueError, match="gallery_features have norms beyond torch.float32's range"):
        evaluate("cpu", [1, 2, 1], [1, 2, 1, 2, 3], [0, 0, 0], [1, 1, 1, 1, 1], metric=metric,
                 query_features=torch.randn(3, 4), gallery_features=gallery)


def test_infinite_distances_rank_last():
    dist = torch.tensor([[math.inf, 0.0, -math.inf]])
    for backend in cpu_backends():
        r = evaluate(backend, [1], [1, 2, 1], [0], [1, 1, 1], distmat=dist)
        assert r.first_hit.tolist() == [0] and r.ap.tolist() == pytest.approx([(1 + 2 / 3) / 2])


# --- The C++ op ---

@needs_kernels
@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
def test_opcheck_rank_queries(ap_mode):
    dist, qp, gp, qc, gc = random_protocol(6, 20, 4, 2, seed=10)
    args = (torch.from_numpy(dist),) + tuple(torch.from_numpy(a).int() for a in (qp, qc, gp, gc)) + (ap_mode,)
    torch.library.opcheck(torch.ops.reidfast.rank_queries.default, args)


@needs_kernels
def test_rank_queries_reads_padded_rows_in_place():
    # rank_eval's fast-mode feature tiles are views of GEMM outputs whose rows are padded: the op ranks them where
    # they are. NaN in the padding: a kernel reading past a row's end would flag the row.
    dist, qp, gp, qc, gc = random_protocol(7, 21, 4, 2, seed=21)
    labels = tuple(torch.from_numpy(a).int() for a in (qp, qc, gp, gc))
    padded = torch.full((7, 24), math.nan)
    padded[:, :21] = torch.from_numpy(dist)
    view = padded[:, :21]
    got = torch.ops.reidfast.rank_queries(view, *labels, "torchreid")
    want = torch.ops.reidfast.rank_queries(view.contiguous(), *labels, "torchreid")
    assert (got[3] > 0).any()  # rows with matches: the comparison covers the counting pass
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    torch.library.opcheck(torch.ops.reidfast.rank_queries.default, (view,) + labels + ("market",))


def test_fast_mode_operands_fold_the_gallery_term_into_the_gemm():
    # fast mode multiplies bf16 operands padded to aligned rows, the gallery term carried by three bf16 columns:
    # their product must be alpha * q.g + bias (q and g rounded to bf16, the bias to about fp32 precision).
    g = torch.Generator().manual_seed(5)
    q, gallery = torch.randn(5, 13, generator=g), 3 * torch.randn(11, 13, generator=g)
    bias = (gallery * gallery).sum(1)
    q_op, gt = rank_eval_module._bf16_operands(q, gallery, -2, bias)
    assert q_op.dtype == gt.dtype == torch.bfloat16
    assert q_op.shape == (5, 16) and gt.shape == (16, 16)  # 13 + 3 columns; 11 gallery rows padded to 16
    product = q_op.double() @ gt.double()
    want = -2 * q.bfloat16().double() @ gallery.bfloat16().double().t() + bias.double()
    torch.testing.assert_close(product[:, :11], want, rtol=0, atol=2.0 ** -22 * float(bias.max()))
    assert (product[:, :11] - want).abs().max() < (bias.double() - bias.bfloat16().double()).abs().max() / 100
    assert torch.equal(product[:, 11:], torch.zeros(5, 5, dtype=torch.float64))  # padded rows, never ranked


needs_triton_interpreter = pytest.mark.skipif(not ops._backend.TRITON_ON_CPU,
                                              reason=ops._backend.TRITON_ON_CPU_WHY_NOT)


@needs_triton_interpreter
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_fast_mode_operands_by_the_triton_kernel_match_the_plain_construction(metric):
    # The Triton kernel (ops/triton/rank_operands.py) that fast mode uses on CUDA, run by the interpreter, against
    # _bf16_operands: the same layout, bf16 columns equal but for the rounding of a division in cosine's
    # normalization, the gallery term from its own float32 row sums.
    g = torch.Generator().manual_seed(6)
    q, gallery = torch.randn(5, 1030, generator=g), 3 * torch.randn(11, 1030, generator=g)  # rows over one block
    gallery[4] = 0.0  # a zero row: cosine's clamp, and a zero gallery term
    q[0, :2] = torch.tensor([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8])  # x -2: exact ties between bf16 values (to even)
    fused = object.__new__(rank_eval_module._TiledDistance)
    fused.num_g = gallery.shape[0]
    fused._fused_bf16_operands(rank_eval_module._triton_operands(), q, gallery, metric)
    if metric == "cosine":
        qn, gn = (torch.nn.functional.normalize(x, dim=1) for x in (q, gallery))
        plain_q, plain_gt = rank_eval_module._bf16_operands(qn, gn, -1, torch.ones(11))
        sizes = [q.norm(dim=1).max(), gallery.norm(dim=1).max()]
    else:
        bias = (gallery * gallery).sum(1)
        plain_q, plain_gt = rank_eval_module._bf16_operands(q, gallery, -2, bias)
        sizes = [(q * q).sum(1).max(), bias.max()]
    assert fused.q.dtype == fused.gt.dtype == torch.bfloat16
    assert fused.q.shape == plain_q.shape == (5, 1040) and fused.gt.shape == plain_gt.shape == (1040, 16)
    torch.testing.assert_close(fused.largest_sizes(), torch.stack(sizes).double(), rtol=1e-6, atol=0)
    if metric == "cosine":  # x * (1 / |x|) against x / |x|: at most one bf16 step apart
        for got, want in ((fused.q, plain_q), (fused.gt, plain_gt)):
            step = want.float().abs() * 2.0 ** -7 + 1e-30
            assert ((got.float() - want.float()).abs() <= step).all()
            assert torch.equal(got[:, 1030:].float(), want[:, 1030:].float()) if got.shape[0] == 5 else True
        assert torch.equal(fused.gt[1030:].float(), plain_gt[1030:].float())  # bias columns 1, 0, 0 and padding
    else:
        assert torch.equal(fused.q, plain_q)
        assert torch.equal(fused.gt[:1030], plain_gt[:1030])
        assert torch.equal(fused.gt[1033:], plain_gt[1033:])  # padding columns and rows
        parts = fused.gt[1030:1033].double().sum(0)[:11]  # the three bias parts carry about 24 bits
        torch.testing.assert_close(parts, bias.double(), rtol=2.0 ** -21, atol=0)
    product = fused.q.double() @ fused.gt.double()
    assert torch.equal(product[:, 11:], torch.zeros(5, 5, dtype=torch.float64))  # padded rows, never ranked


@needs_triton_interpreter
def test_triton_operand_rows_rejects_what_it_cannot_lay_out():
    from reidfast.ops.triton import rank_operands
    with pytest.raises(ValueError, match="float32"):
        rank_operands.operand_rows(torch.zeros(3, 4, dtype=torch.float64), 3, 8, 1.0, False, True)
    with pytest.raises(ValueError, match="D \\+ 3"):
        rank_operands.operand_rows(torch.zeros(3, 6), 3, 8, 1.0, False, True)
    with pytest.raises(ValueError, match="M <="):
        rank_operands.operand_rows(torch.zeros(9, 4), 8, 8, 1.0, False, True)


def ranked_outputs(num_q, seed, max_first_hit):
    """rank_queries-like outputs: random ranks, AP and INP, invalid queries, and one NaN and one unfinished row
    flagged as the kernels flag them."""
    g = torch.Generator().manual_seed(seed)
    num_matches = torch.randint(0, 4, (num_q,), generator=g)
    valid = num_matches > 0
    first_hit = torch.where(valid, torch.randint(0, max_first_hit, (num_q,), generator=g), -1)
    ap = torch.where(valid, torch.rand(num_q, generator=g, dtype=torch.float64), 0.0)
    inp = torch.where(valid, torch.rand(num_q, generator=g, dtype=torch.float64), 0.0)
    num_matches[3], first_hit[3], ap[3], inp[3] = NAN_ROW, -1, 0.0, 0.0
    num_matches[5], first_hit[5], ap[5], inp[5] = 9, UNFINISHED_ROW, 0.0, 0.0
    return ap, inp, first_hit, num_matches


@needs_kernels
@pytest.mark.parametrize("max_rank", [1, 50, 3000])
def test_rank_summary_matches_its_reference(max_rank):
    outputs = ranked_outputs(700, seed=15, max_first_hit=4000)
    got = torch.ops.reidfast.rank_summary(*outputs, max_rank)
    want = summary_on_device(*outputs, max_rank)
    assert got.shape == (max_rank + SUMMARY_TAIL,) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)  # counts exactly; the sums up to their order
    assert got[max_rank + NAN_ROWS] == 1 and got[max_rank + UNFINISHED_ROWS] == 1
    assert got[max_rank - 1] < got[max_rank]  # valid queries with a first hit beyond max_rank are not counted


@needs_kernels
def test_opcheck_rank_summary():
    args = ranked_outputs(40, seed=16, max_first_hit=30) + (20,)
    torch.library.opcheck(torch.ops.reidfast.rank_summary.default, args)


@needs_kernels
def test_rank_summary_rejects_bad_arguments():
    ap, inp, first_hit, num_matches = ranked_outputs(10, seed=17, max_first_hit=5)
    with pytest.raises(ValueError, match="inp must have shape"):
        torch.ops.reidfast.rank_summary(ap, inp[:4], first_hit, num_matches, 5)
    with pytest.raises(TypeError, match="first_hit and num_matches must be int64"):
        torch.ops.reidfast.rank_summary(ap, inp, first_hit.int(), num_matches, 5)
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        torch.ops.reidfast.rank_summary(ap, inp, first_hit, num_matches, 0)


@needs_kernels
def test_op_rejects_bad_arguments_in_cpp():
    d = torch.zeros(2, 3)
    i2, i3 = torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="ap_mode"):
        torch.ops.reidfast.rank_queries(d, i2, i2, i3, i3, "bogus")
    with pytest.raises(TypeError, match="int32"):
        torch.ops.reidfast.rank_queries(d, i2.long(), i2, i3, i3, "market")


@needs_kernels
def test_a_misspelt_kernel_switch_is_an_error(monkeypatch):
    # REIDFAST_RANK_COUNT forces one of the counting passes for the benchmark's comparison: a value it does not know
    # must not silently time the default.
    dist, qp, gp, qc, gc = random_protocol(4, 30, 3, 2, seed=5)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    want = evaluate("reference", *labels, distmat=torch.from_numpy(dist))
    for empty_or_default in ("", "buckets"):
        monkeypatch.setenv("REIDFAST_RANK_COUNT", empty_or_default)
        assert_same_result(evaluate("cpu", *labels, distmat=torch.from_numpy(dist)), want)
    monkeypatch.setenv("REIDFAST_RANK_COUNT", "bucket")
    with pytest.raises(ValueError, match="REIDFAST_RANK_COUNT must be unset, 'buckets' or 'search', got 'bucket'"):
        evaluate("cpu", *labels, distmat=torch.from_numpy(dist))


@needs_kernels
def test_labels_beyond_int32_are_refused_by_name():
    # The kernels read int32 labels; an id that does not fit must not wrap around into another identity.
    dist = torch.rand(2, 3)
    with pytest.raises(ValueError, match="g_pids must fit in int32"):
        evaluate("cpu", [1, 2], [1, 2**31, 2], [0, 0], [1, 1, 1], distmat=dist)
    result = evaluate("cpu", [1, 2], [1, 2**31 - 1, 2], [0, 0], [1, 1, 1], distmat=dist)
    assert result.num_valid == 2


@pytest.mark.gpu
def test_cuda_labels_beyond_int32_are_refused_by_name():
    # Labels on the device are checked there, with the summary: the same error as for host labels.
    dist = torch.rand(2, 3, device="cuda")
    labels = [torch.tensor(x, device="cuda") for x in ([1, 2], [1, 2, 2], [0, 0], [1, 1, -(2**31) - 1])]
    with pytest.raises(ValueError, match="g_camids must fit in int32"):
        evaluate("cuda", *labels, distmat=dist)


@needs_kernels
def test_op_rejects_mismatched_lengths_in_cpp():
    # In a child process: on the GPU machine (torch 2.11) this C++ ValueError crashed the interpreter (adain's
    # shape check too); isolated, a crash fails this test instead of ending the whole run.
    code = (
        "import torch, reidfast.ops\n"
        "d = torch.zeros(2, 3); i2, i3 = torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)\n"
        "try:\n"
        "    torch.ops.reidfast.rank_queries(d, i2, i2, i2, i3, 'market')\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    out = run_in_fresh_process(code, timeout=120)
    assert out.returncode == 0, f"child exited with {out.returncode}: {out.stderr[-500:]}"
    assert "ValueError" in out.stdout and "g_pids must have shape (3)" in out.stdout


class _OpLog(TorchDispatchMode):
    """The ops an evaluation queues, in order, by name (aten.addmm, reidfast.rank_queries, ...)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(f"{func.namespace}.{func.__name__.split('.')[0]}")
        return func(*args, **(kwargs or {}))


def check_queue_order(device):
    """On a GPU every op queued ahead of the distance GEMM or the ranking kernel that they do not need leaves the
    device idle for its launch (at Market scale the launches take about as long as the ranking): the labels are
    packed after the first GEMM, and the checks (the labels' range, the features' sizes) come after the first
    ranking."""
    dist, qp, gp, qc, gc = random_protocol(6, 40, 5, 3, seed=3)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    g = torch.Generator().manual_seed(3)
    features = dict(query_features=torch.randn(6, 8, generator=g), gallery_features=torch.randn(40, 8, generator=g))
    backend = "cuda" if device == "cuda" else "cpu"
    for kw in (dict(distmat=torch.from_numpy(dist)), features):
        want = evaluate("reference", *labels, **kw)
        with _OpLog() as log:
            got = evaluate(backend, *(t.to(device) for t in labels), **{k: v.to(device) for k, v in kw.items()})
        assert_same_result(got, want)
        names = log.names
        ranking = names.index("reidfast.rank_queries")
        if device == "cuda":  # labels on the device: the count of labels that wrap in int32
            assert names.index("aten.ne") > ranking, names
        else:  # labels on the host: range-checked there, before they are packed
            assert names.index("aten.aminmax") < ranking, names
        if "query_features" in kw:
            gemm = names.index("aten.addmm")
            assert names.index("aten.cat") > gemm, names  # the labels packed into one tensor
            assert names.index("aten.amax") > ranking, names  # the largest feature sizes
            assert gemm < ranking


@needs_kernels
def test_the_first_gemm_and_ranking_are_queued_before_the_checks():
    check_queue_order("cpu")


def test_strict_precision_restores_the_global_setting():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        evaluate("reference", *LABELS, query_features=torch.ones(2, 4), gallery_features=torch.ones(3, 4))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def special_values_protocol():
    """Distances drawn from signed zeros (one distance: ties by index), negatives (euclidean feature rows are
    |g|^2 - 2 q.g), denormals and infinities."""
    values = torch.tensor([-math.inf, -2.5, -1e-40, -0.0, 0.0, 1e-40, 0.75, 3e38, math.inf])
    _, qp, gp, qc, gc = random_protocol(64, 1031, 12, 3, seed=22)
    g = torch.Generator().manual_seed(22)
    d = values[torch.randint(0, len(values), (64, 1031), generator=g)]
    return d, [torch.from_numpy(a) for a in (qp, gp, qc, gc)]


@needs_kernels
@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
def test_cpu_kernel_orders_signed_zeros_negatives_and_infinities(ap_mode):
    d, labels = special_values_protocol()
    assert_same_result(evaluate("cpu", *labels, distmat=d, ap_mode=ap_mode),
                       evaluate("reference", *labels, distmat=d.double(), ap_mode=ap_mode))


# --- CUDA ---

@pytest.mark.gpu
@pytest.mark.parametrize("groups", ["scan", "sort"])  # how blocks find their matches (csrc/cuda/rank.cu)
@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernel_matches_reference(ap_mode, levels, dtype, groups, monkeypatch):
    monkeypatch.setenv("REIDFAST_RANK_GROUPS", groups)
    dist, qp, gp, qc, gc = random_protocol(300, 4099, 60, 6, seed=11, distance_levels=levels)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    d = torch.from_numpy(dist).to(dtype)
    want = evaluate("reference", *labels, distmat=d, ap_mode=ap_mode)
    got = evaluate("cuda", *(t.cuda() for t in labels), distmat=d.cuda(), ap_mode=ap_mode)
    assert got.ap.device.type == "cuda" and got.cmc.device.type == "cpu"  # per query on the device; summary on host
    assert_same_result(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("groups", ["scan", "sort"])
@pytest.mark.parametrize("count", ["buckets", "search"])
@pytest.mark.parametrize("regime", list(BUCKET_REGIMES))
def test_cuda_kernel_matches_reference_in_every_bucket_regime(regime, count, groups, monkeypatch):
    monkeypatch.setenv("REIDFAST_RANK_COUNT", count)
    monkeypatch.setenv("REIDFAST_RANK_GROUPS", groups)
    d, labels = bucket_regime_protocol(regime)
    got = evaluate("cuda", *(t.cuda() for t in labels), distmat=d.cuda())
    assert_same_result(got, evaluate("reference", *labels, distmat=d))


@pytest.mark.gpu
@pytest.mark.parametrize("ap_mode", ["torchreid", "market"])
def test_cuda_kernel_orders_signed_zeros_negatives_and_infinities(ap_mode):
    d, labels = special_values_protocol()
    got = evaluate("cuda", *(t.cuda() for t in labels), distmat=d.cuda(), ap_mode=ap_mode)
    assert_same_result(got, evaluate("reference", *labels, distmat=d.double(), ap_mode=ap_mode))


@pytest.mark.gpu
@pytest.mark.parametrize("groups", ["scan", "sort"])
def test_cuda_many_matches_fall_back_to_the_reference(groups, monkeypatch):
    monkeypatch.setenv("REIDFAST_RANK_GROUPS", groups)
    # 3000 true matches per query: more than the kernel's shared-memory list holds.
    g = torch.Generator().manual_seed(0)
    dist = torch.rand(4, 5000, generator=g)
    qp, gp = torch.ones(4, dtype=torch.long), (torch.arange(5000) % 5 != 0).long()
    qc, gc = torch.zeros(4, dtype=torch.long), torch.ones(5000, dtype=torch.long)
    want = evaluate("reference", qp, gp, qc, gc, distmat=dist)
    got = evaluate("cuda", qp.cuda(), gp.cuda(), qc.cuda(), gc.cuda(), distmat=dist.cuda())
    assert int(want.num_matches[0]) == 4000
    assert_same_result(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_features_strict_and_fast(metric):
    # 2999 gallery items and 250-d features: fast mode pads both (rows of its GEMM operands and output).
    _, qp, gp, qc, gc = random_protocol(200, 2999, 50, 6, seed=12, distractors=False)
    # Features clustered by id (mAP far from 0 and 1), so a wrong distance or order shows in the numbers.
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(51, 250, generator=g)
    qf = centers[torch.from_numpy(qp)] + 3.0 * torch.randn(200, 250, generator=g)
    gf = centers[torch.from_numpy(gp)] + 3.0 * torch.randn(2999, 250, generator=g)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    want = evaluate("reference", *labels, query_features=qf.double(), gallery_features=gf.double(), metric=metric)
    assert 0.05 < want.mAP < 0.95
    cuda_labels = [t.cuda() for t in labels]
    strict = evaluate("cuda", *cuda_labels, query_features=qf.cuda(), gallery_features=gf.cuda(), metric=metric,
                      tile_size=64)
    fast = evaluate("cuda", *cuda_labels, query_features=qf.cuda(), gallery_features=gf.cuda(), metric=metric,
                    precision="fast")
    assert strict.mAP == pytest.approx(want.mAP, abs=1e-3)
    assert fast.mAP == pytest.approx(want.mAP, abs=2e-3)  # bf16 inputs: about 1e-4 when emulated on the CPU
    if hasattr(torch.ops.aten.mm, "dtype"):  # a torch with bf16-to-fp32 GEMMs: fast mode uses them
        assert rank_eval_module._has_bf16_gemm(qf.cuda().device)
        assert rank_eval_module._triton_operands() is not None  # their operands by the Triton kernel
    dist = torch.from_numpy(random_protocol(3, 4, 2, 2, seed=0)[0]).cuda()
    dist[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate("cuda", *[torch.tensor(x).cuda() for x in ([1, 2, 1], [1, 2, 1, 2], [0, 0, 0], [1, 1, 1, 1])],
                 distmat=dist)


@pytest.mark.gpu
@pytest.mark.parametrize("max_rank", [50, 5000])
def test_cuda_rank_summary_matches_its_reference(max_rank):
    # 5000 ranks: three chunks of the kernel's shared histogram, the last one partial.
    outputs = ranked_outputs(3001, seed=18, max_first_hit=6000)
    want = summary_on_device(*outputs, max_rank)
    cuda_outputs = [t.cuda() for t in outputs]
    got = torch.ops.reidfast.rank_summary(*cuda_outputs, max_rank)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=0)
    assert torch.equal(got, torch.ops.reidfast.rank_summary(*cuda_outputs, max_rank))  # a fixed summation order


@pytest.mark.gpu
def test_cuda_evaluation_waits_on_the_device_once():
    # At Market scale the ranking kernel takes a fraction of a millisecond: every host synchronization (a range
    # check, a .item(), a boolean mask) costs as much, and one before the kernel leaves the GPU idle while the host
    # queues the rest. The label range check, the unfinished-row flags and the summary cross in one transfer.
    # Labels already on the device are range-checked there; labels from the host (numpy) cross in one pinned copy.
    dist, qp, gp, qc, gc = random_protocol(50, 400, 20, 4, seed=13)
    d = torch.from_numpy(dist).float().cuda()
    for labels in ([torch.from_numpy(a).cuda() for a in (qp, gp, qc, gc)], [qp, gp, qc, gc]):
        evaluate("cuda", *labels, distmat=d)  # warm: first-call allocations
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                evaluate("cuda", *labels, distmat=d)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # (the first time a process turns the debug mode on, torch also warns that it is a prototype)
        syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
        assert len(syncs) == 1, [str(w.message) for w in caught]


@pytest.mark.gpu
def test_cuda_misspelt_grouping_switch_is_an_error(monkeypatch):
    dist, qp, gp, qc, gc = random_protocol(4, 30, 3, 2, seed=5)
    labels = [torch.from_numpy(a).cuda() for a in (qp, gp, qc, gc)]
    monkeypatch.setenv("REIDFAST_RANK_GROUPS", "sorted")
    with pytest.raises(ValueError, match="REIDFAST_RANK_GROUPS must be unset, 'sort' or 'scan', got 'sorted'"):
        evaluate("cuda", *labels, distmat=torch.from_numpy(dist).cuda())


@pytest.mark.gpu
def test_cuda_evaluation_queues_the_first_gemm_and_ranking_before_the_checks():
    check_queue_order("cuda")


@pytest.mark.gpu
def test_cuda_evaluation_runs_under_deterministic_algorithms():
    # Ranking has no floating-point atomics (integer counts per query, sorted counting for the CMC): deterministic
    # mode must not refuse it, and the numbers are the reference's.
    dist, qp, gp, qc, gc = random_protocol(40, 300, 15, 4, seed=14)
    labels = [torch.from_numpy(a) for a in (qp, gp, qc, gc)]
    d = torch.from_numpy(dist).float()
    want = evaluate("reference", *labels, distmat=d)
    torch.use_deterministic_algorithms(True)
    try:
        got = evaluate("cuda", *(t.cuda() for t in labels), distmat=d.cuda())
    finally:
        torch.use_deterministic_algorithms(False)
    assert_same_result(got, want)
