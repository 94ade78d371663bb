"""reidfast.eval: feature files, the CLI table, and k-reciprocal re-ranking against a direct set-based version."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reidfast import ops
from reidfast.eval.__main__ import main
from reidfast.eval.io import FeatureFileError, load_features
from reidfast.eval.rerank import k_reciprocal_distance
from tests.eval.data.make_mat_fixtures import fixture_arrays

MAT_FIXTURES = Path(__file__).parent / "data"


def saved_arrays(seed=0, num_q=12, num_g=40, dim=8):
    g = np.random.default_rng(seed)
    ids_q, ids_g = g.integers(1, 6, num_q), g.integers(1, 6, num_g)
    centers = g.normal(size=(6, dim))
    return {
        "query_f": (centers[ids_q] + 0.5 * g.normal(size=(num_q, dim))).astype(np.float32),
        "gallery_f": (centers[ids_g] + 0.5 * g.normal(size=(num_g, dim))).astype(np.float32),
        "query_label": ids_q, "gallery_label": ids_g,
        "query_cam": g.integers(0, 3, num_q), "gallery_cam": g.integers(0, 3, num_g),
    }


def test_npz_and_pt_read_the_same(tmp_path):
    arrays = saved_arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    torch.save({k.replace("query_f", "qf"): torch.as_tensor(v) for k, v in arrays.items()}, tmp_path / "f.pt")
    a, b = load_features(str(tmp_path / "f.npz")), load_features(str(tmp_path / "f.pt"))
    for name in ("query_f", "gallery_f", "query_label", "gallery_cam"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.query_label.dtype == torch.int64


def test_mat_file_from_dg_nets_tools(capsys):
    # tests/eval/data/features.mat: written by scipy.io.savemat as DG-Net's test script does, labels and cameras as
    # (1, N) rows; read without scipy (reidfast.eval.matfile)
    path = str(MAT_FIXTURES / "features.mat")
    f = load_features(path)
    want = fixture_arrays()
    assert f.query_label.tolist() == want["query_label"][0].tolist()
    assert f.gallery_cam.tolist() == want["gallery_cam"][0].tolist()
    assert torch.equal(f.gallery_f, torch.from_numpy(want["gallery_f"]))
    assert main(["--features", path]) == 0
    assert "Rank-1" in capsys.readouterr().out


def test_labels_saved_as_doubles(tmp_path):
    # MATLAB's default class is double: whole-number ids and cameras are read as integers, others are refused
    arrays = saved_arrays()
    arrays["gallery_label"] = arrays["gallery_label"].astype(np.float64)
    np.savez(tmp_path / "f.npz", **arrays)
    assert load_features(str(tmp_path / "f.npz")).gallery_label.tolist() == saved_arrays()["gallery_label"].tolist()
    arrays["query_cam"] = arrays["query_cam"] + 0.5
    np.savez(tmp_path / "g.npz", **arrays)
    with pytest.raises(FeatureFileError, match="query_cam must hold whole numbers"):
        load_features(str(tmp_path / "g.npz"))


def test_missing_key_is_named(tmp_path):
    arrays = saved_arrays()
    del arrays["gallery_cam"]
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(FeatureFileError, match="gallery_cam"):
        load_features(str(tmp_path / "f.npz"))


def test_cli_prints_table_and_convention(tmp_path, capsys):
    arrays = saved_arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    assert main(["--features", str(tmp_path / "f.npz"), "--ap-mode", "market", "--json",
                 str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "Rank-1" in out and "mAP" in out and "mINP" in out
    assert "official Market-1501" in out and "gallery index" in out
    numbers = json.loads((tmp_path / "m.json").read_text())
    want = ops.rank_eval(arrays["query_label"], arrays["gallery_label"], arrays["query_cam"], arrays["gallery_cam"],
                         query_features=arrays["query_f"], gallery_features=arrays["gallery_f"], ap_mode="market")
    # the table in percent, the JSON in fractions (as rank_eval and metrics.json)
    assert f"{100 * want.mAP:.2f}" in out and f"{100 * want.rank(1):.2f}" in out
    assert numbers["mAP"] == pytest.approx(want.mAP)
    assert numbers["rank1"] == pytest.approx(want.rank(1))


def test_cli_rerank_runs(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    assert main(["--features", str(tmp_path / "f.npz"), "--rerank", "--k1", "6", "--k2", "3"]) == 0
    assert "re-ranking" in capsys.readouterr().out


def test_cli_rerank_uses_the_chosen_metric(tmp_path, capsys):
    arrays = saved_arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    labels = [arrays[k] for k in ("query_label", "gallery_label", "query_cam", "gallery_cam")]
    qf, gf = (torch.from_numpy(arrays[k]) for k in ("query_f", "gallery_f"))
    for metric in ("euclidean", "cosine"):
        summary = tmp_path / f"{metric}.json"
        assert main(["--features", str(tmp_path / "f.npz"), "--rerank", "--k1", "6", "--k2", "3", "--metric", metric,
                     "--json", str(summary)]) == 0
        want = ops.rank_eval(*labels, distmat=k_reciprocal_distance(qf, gf, k1=6, k2=3, metric=metric))
        assert json.loads(summary.read_text())["mAP"] == pytest.approx(want.mAP)  # a fraction, as in metrics.json


def test_cli_refuses_fast_precision_with_rescored_distances(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    err = _cli_error(["--features", str(tmp_path / "f.npz"), "--rerank", "--precision", "fast"], capsys)
    assert "--precision fast" in err and "--rerank" in err


def test_ranked_gallery_follows_the_protocol():
    from reidfast.data import Sample
    from reidfast.eval.ranked_list import ranked_gallery
    query = Sample("q.jpg", pid=1, camid=0)
    # (pid, camid, distance): a tie between items 1 and 2, junk (same pid and camera) nearest, a -1 distractor
    items = [(1, 0, 0.0), (2, 1, 0.5), (1, 1, 0.5), (-1, 2, 0.1), (0, 1, 0.2), (1, 2, 0.9)]
    gallery = [Sample(f"g{i}.jpg", pid=p, camid=c) for i, (p, c, _) in enumerate(items)]
    distances = torch.tensor([d for _, _, d in items])
    assert ranked_gallery(distances, query, gallery, top=10, ap_mode="torchreid") == [3, 4, 1, 2, 5]
    assert ranked_gallery(distances, query, gallery, top=10, ap_mode="market") == [4, 1, 2, 5]
    assert ranked_gallery(distances, query, gallery, top=2, ap_mode="market") == [4, 1]


def test_cli_requires_a_source():
    with pytest.raises(SystemExit):
        main([])


def _cli_error(argv, capsys) -> str:
    """The CLI's message for bad input: exit status 2 and one "error:" line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_cli_reports_bad_feature_files(tmp_path, capsys):
    assert "no such file" in _cli_error(["--features", str(tmp_path / "missing.npz")], capsys)
    (tmp_path / "garbage.npz").write_bytes(b"hello")
    assert "garbage.npz: is not a .npz archive" in _cli_error(["--features", str(tmp_path / "garbage.npz")], capsys)
    (tmp_path / "garbage.pt").write_bytes(b"hello")
    assert "garbage.pt: is not a file torch.save writes" in _cli_error(["--features", str(tmp_path / "garbage.pt")],
                                                                      capsys)
    assert "unknown feature file type: type '.csv'" in _cli_error(["--features", str(tmp_path / "f.csv")], capsys)
    assert "no file type (extension)" in _cli_error(["--features", str(tmp_path / "f")], capsys)
    for folder in ("features.npz", "run"):
        (tmp_path / folder).mkdir()
        assert f"{folder}: is a directory" in _cli_error(["--features", str(tmp_path / folder)], capsys)
    np.savez(tmp_path / "cut.npz", **saved_arrays())
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:300])
    assert "cut.npz: is a truncated or damaged .npz archive" in _cli_error(["--features", str(tmp_path / "cut.npz")],
                                                                         capsys)
    (tmp_path / "cut.mat").write_bytes((MAT_FIXTURES / "features.mat").read_bytes()[:700])
    assert "cannot be read as a .mat" in _cli_error(["--features", str(tmp_path / "cut.mat")], capsys)
    torch.save([1, 2], tmp_path / "list.pt")
    assert "expected a dict" in _cli_error(["--features", str(tmp_path / "list.pt")], capsys)


def test_cli_reports_a_device_that_is_not_there(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    assert "not a device name" in _cli_error(["--features", str(tmp_path / "f.npz"), "--device", "banana"], capsys)
    assert "runs on cpu or cuda" in _cli_error(["--features", str(tmp_path / "f.npz"), "--device", "meta"], capsys)
    if not torch.cuda.is_available():
        err = _cli_error(["--features", str(tmp_path / "f.npz"), "--device", "cuda"], capsys)
        assert "--device cuda: no CUDA device is visible" in err


def test_cli_json_into_a_new_folder(tmp_path):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    assert main(["--features", str(tmp_path / "f.npz"), "--json", str(tmp_path / "new" / "m.json")]) == 0
    assert set(json.loads((tmp_path / "new" / "m.json").read_text())) >= {"rank1", "mAP", "mINP"}


def test_cli_reports_an_output_path_under_a_file(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    (tmp_path / "taken").write_text("a file, not a folder")
    for out in (tmp_path / "taken" / "m.json", tmp_path / "taken" / "new" / "m.json"):
        err = _cli_error(["--features", str(tmp_path / "f.npz"), "--json", str(out)], capsys)
        assert err == f"error: --json {out}: {tmp_path / 'taken'} is a file, not a folder\n"
    # refused before the evaluation: nothing printed but the error
    assert main(["--features", str(tmp_path / "f.npz"), "--json", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: --json {tmp_path}: is a folder; name a file\n"


def test_cli_refuses_an_output_folder_it_cannot_write_in_before_the_evaluation(tmp_path, monkeypatch, capsys):
    # the output path check is the one the benchmarks make (reidfast.paths), which also asks for write permission
    np.savez(tmp_path / "f.npz", **saved_arrays())
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and access(path, mode))
    for out in (locked / "m.json", locked / "new" / "m.json"):
        assert main(["--features", str(tmp_path / "f.npz"), "--json", str(out)]) == 2
        printed, err = capsys.readouterr()
        assert printed == "" and err == f"error: --json {out}: cannot write in {locked}\n"
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_cli_reports_json_that_cannot_be_written(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    err = _cli_error(["--features", str(tmp_path / "f.npz"), "--json", "/proc/reidfast-test.json"], capsys)
    # refused before the evaluation where the process may not write in /proc; found by the write itself as root
    assert (err.startswith("error: --json /proc/reidfast-test.json: cannot be written (")
            or err == "error: --json /proc/reidfast-test.json: cannot write in /proc\n") and err.count("\n") == 1


def test_cli_reports_a_misspelt_backend_variable(tmp_path):
    # read when reidfast.ops is imported, reported once an op runs: one error line, not an import traceback
    np.savez(tmp_path / "f.npz", **saved_arrays())
    env = {**os.environ, "REIDFAST_BACKEND": "Reference", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "reidfast.eval", "--features", str(tmp_path / "f.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("error: the environment variable REIDFAST_BACKEND must be one of auto, cuda, triton, cpu, "
                           "reference; got 'Reference'\n")


@pytest.mark.parametrize("flag", [["--verifier-topk", "5"], ["--export", "x.npz"], ["--ranked-list", "r.png"],
                                  ["--ranked-queries", "3"], ["--dataset", "market1501"], ["--data-root", "data"],
                                  ["--skip-misnamed"]])
def test_cli_refuses_checkpoint_flags_with_features(tmp_path, capsys, flag):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    err = _cli_error(["--features", str(tmp_path / "f.npz"), *flag], capsys)
    assert err == f"error: {flag[0]} applies to --checkpoint runs only\n"


def test_cli_refuses_rerank_parameters_without_rerank(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    err = _cli_error(["--features", str(tmp_path / "f.npz"), "--k1", "4", "--lambda", "0.5"], capsys)
    assert err == "error: --k1, --lambda apply with --rerank only\n"


def test_cli_reports_a_features_file_given_as_a_checkpoint(tmp_path, capsys):
    np.savez(tmp_path / "hand.npz", **saved_arrays())
    (tmp_path / "hand.npz").rename(tmp_path / "hand.bin")  # recognized by what it holds, not only by its name
    for path in (tmp_path / "hand.bin", MAT_FIXTURES / "features.mat"):
        err = _cli_error(["--checkpoint", str(path)], capsys)
        assert err == f"error: --checkpoint {path}: looks like a features file: use --features {path}\n"


def test_pt_file_of_numpy_arrays(tmp_path):
    # what torch.save(dict(np.load(...))) writes: numpy arrays, read without unpickling anything else
    arrays = saved_arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    torch.save(dict(np.load(tmp_path / "f.npz")), tmp_path / "f.pt")
    a, b = load_features(str(tmp_path / "f.npz")), load_features(str(tmp_path / "f.pt"))
    for name in ("query_f", "gallery_f", "query_label", "gallery_cam"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # an array of Python objects is still refused, in one plain line that says what to save
    torch.save({**arrays, "query_label": arrays["query_label"].astype(object)}, tmp_path / "objects.pt")
    with pytest.raises(FeatureFileError) as caught:
        load_features(str(tmp_path / "objects.pt"))
    message = str(caught.value)
    assert "objects.pt: holds an object of" in message and "save a dict of tensors or numpy arrays" in message
    assert "\n" not in message and "\x1b" not in message


def test_feature_file_values_that_are_not_real_numbers(tmp_path):
    cases = {"query_label": np.array(["a"] * 12), "gallery_f": saved_arrays()["gallery_f"].astype(np.complex64),
             "gallery_cam": np.ones(40, bool)}
    want = {"query_label": "query_label must hold numbers, got an array of <U1",
            "gallery_f": "gallery_f must hold real numbers, got torch.complex64",
            "gallery_cam": "gallery_cam must hold whole numbers (ids or camera numbers), got bool"}
    for key, value in cases.items():
        np.savez(tmp_path / f"{key}.npz", **{**saved_arrays(), key: value})
        with pytest.raises(FeatureFileError, match=re.escape(f"{tmp_path / key}.npz: {want[key]}")):
            load_features(str(tmp_path / f"{key}.npz"))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cli_labels_rescored_distances(tmp_path, capsys, metric):
    np.savez(tmp_path / "f.npz", **saved_arrays())
    assert main(["--features", str(tmp_path / "f.npz"), "--metric", metric, "--rerank", "--k1", "4", "--k2", "2",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert f"distance: {metric}, k-reciprocal re-ranked" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["metric"] == f"{metric}, k-reciprocal re-ranked"


def test_cli_checks_features_before_reranking(tmp_path, capsys):
    arrays = saved_arrays()
    arrays["gallery_f"][1, 0] = np.inf
    np.savez(tmp_path / "f.npz", **arrays)
    err = _cli_error(["--features", str(tmp_path / "f.npz"), "--rerank"], capsys)
    assert err == "error: rerank: gallery_features must be finite, but row 1 holds a non-finite value\n"


def test_rerank_refuses_what_rank_eval_refuses():
    qf, gf = torch.randn(3, 4), torch.randn(5, 4)
    huge = gf.clone()
    huge[2] = 1e30  # finite, but its squared norm overflows float32
    for features, match in [((qf, torch.randn(5, 3)), "rerank: query_features have dimension 4 but gallery_features "
                                                      "have 3"),
                            ((qf, "features"), "rerank: gallery_features must be a torch tensor, numpy or cupy"),
                            ((qf[:0], gf), "at least one query and one gallery item, got Q=0, G=5"),
                            ((qf, gf.long()), "gallery_features must be floating point"),
                            ((qf, huge), "euclidean distances overflow float32")]:
        with pytest.raises((ValueError, TypeError), match=match):
            k_reciprocal_distance(*features, k1=2, k2=1)


@pytest.mark.parametrize("k2", [1, 3])
def test_rerank_of_a_zero_feature_under_cosine(tmp_path, capsys, k2):
    # plain cosine ranks a zero feature (distance 1 to everything); re-ranking must too
    arrays = saved_arrays()
    arrays["query_f"][0] = 0
    np.savez(tmp_path / "f.npz", **arrays)
    assert main(["--features", str(tmp_path / "f.npz"), "--metric", "cosine", "--rerank", "--k1", "4", "--k2",
                 str(k2)]) == 0
    dist = k_reciprocal_distance(torch.from_numpy(arrays["query_f"]), torch.from_numpy(arrays["gallery_f"]), k1=4,
                                 k2=k2, metric="cosine")
    assert dist.isfinite().all()


def test_cli_rank_columns_past_the_gallery_and_max_rank(tmp_path, capsys):
    arrays = saved_arrays(num_q=6, num_g=8)
    np.savez(tmp_path / "f.npz", **arrays)
    labels = [arrays[k] for k in ("query_label", "gallery_label", "query_cam", "gallery_cam")]
    want = ops.rank_eval(*labels, query_features=arrays["query_f"], gallery_features=arrays["gallery_f"])

    def strict(text):  # json.loads accepts NaN and Infinity; JSON does not
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the JSON output"))

    # a gallery of 8: Rank-10 and Rank-20 are Rank-8, as in training's metrics.json
    assert main(["--features", str(tmp_path / "f.npz"), "--json", str(tmp_path / "all.json")]) == 0
    numbers = strict((tmp_path / "all.json").read_text())
    assert numbers["rank10"] == numbers["rank20"] == pytest.approx(float(want.cmc[7]))
    # a CMC cut at rank 3: the ranks past it are unknown, null in the JSON, n/a in the table
    capsys.readouterr()
    assert main(["--features", str(tmp_path / "f.npz"), "--max-rank", "3", "--json", str(tmp_path / "cut.json")]) == 0
    numbers = strict((tmp_path / "cut.json").read_text())
    assert numbers["rank1"] == pytest.approx(want.rank(1)) and numbers["rank5"] is None
    assert "nan" not in capsys.readouterr().out.lower().replace("n/a", "")


def test_cli_reports_mismatched_labels(tmp_path, capsys):
    arrays = saved_arrays()
    arrays["query_cam"] = arrays["query_cam"][:-1]
    np.savez(tmp_path / "f.npz", **arrays)
    err = _cli_error(["--features", str(tmp_path / "f.npz")], capsys)
    assert "query_cam has 11 entries but query_f has 12 rows" in err



def direct_rerank(qf, gf, k1, k2, lam):
    """Set-based, one pair at a time, straight from the paper's equations."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    n = len(x)
    d = ((x[:, None] - x[None]) ** 2).sum(2)
    d = d / d.max(0, keepdims=True)
    order = [list(np.argsort(d[p], kind="stable")) for p in range(n)]

    def nn(p, k):
        return set(order[p][: k + 1])

    def recip(p, k):
        return {g for g in nn(p, k) if p in nn(g, k)}

    half = max(1, int(round(k1 / 2)))
    v = np.zeros((n, n))
    for p in range(n):
        r = recip(p, k1)
        star = set(r)
        for q in r:
            rq = recip(q, half)
            if 3 * len(r & rq) >= 2 * len(rq):
                star |= rq
        for g in star:
            v[p, g] = np.exp(-d[p, g])
        v[p] /= v[p].sum()
    v = np.stack([v[order[p][:k2]].mean(0) for p in range(n)])
    nq = len(qf)
    out = np.zeros((nq, len(gf)))
    for p in range(nq):
        for gi in range(len(gf)):
            g = nq + gi
            jac = 1 - np.minimum(v[p], v[g]).sum() / np.maximum(v[p], v[g]).sum()
            out[p, gi] = (1 - lam) * jac + lam * d[p, g]
    return out


def test_rerank_matches_the_equations():
    # Distinct distances (random features), so neighbour sets do not depend on tie order.
    g = np.random.default_rng(3)
    qf, gf = g.normal(size=(7, 5)), g.normal(size=(25, 5))
    got = k_reciprocal_distance(torch.from_numpy(qf).double(), torch.from_numpy(gf).double(), k1=6, k2=3,
                                lambda_value=0.3)
    np.testing.assert_allclose(got.double().numpy(), direct_rerank(qf, gf, 6, 3, 0.3), rtol=1e-4, atol=1e-5)


def test_rerank_lambda_one_is_the_original_distance():
    g = np.random.default_rng(4)
    qf, gf = torch.from_numpy(g.normal(size=(5, 4))), torch.from_numpy(g.normal(size=(9, 4)))
    got = k_reciprocal_distance(qf, gf, k1=4, k2=2, lambda_value=1.0)
    x = torch.cat([qf, gf])
    d = torch.cdist(x, x) ** 2
    d = d / d.max(0, keepdim=True).values
    torch.testing.assert_close(got.double(), d[:5, 5:], rtol=1e-4, atol=1e-5)


def test_feature_extraction_in_workers_with_progress(tmp_path, capsys):
    from reidfast.data import get_dataset
    from reidfast.data.synthetic import generate
    from reidfast.eval.features import extract_features
    generate(tmp_path / "data", ids=8, cameras=2, seed=1, height=32, width=16)
    samples = (lambda ds: ds.query + ds.gallery)(get_dataset("synthetic", tmp_path / "data"))
    assert len(samples) > 10 * 2
    weight = torch.randn(3, 5)

    def embed(x):  # a fixed linear map of the pooled colours: features that tell the images apart
        return x.mean((2, 3)) @ weight

    args = (embed, samples, (32, 16), torch.device("cpu"))
    serial = extract_features(*args, batch_size=2, workers=0)
    capsys.readouterr()
    parallel = extract_features(*args, batch_size=2)  # more than one batch: decoded in worker processes
    # the same features in the same order, and a progress line for a set of more than ten batches
    assert torch.equal(serial, parallel) and serial.shape == (len(samples), 5)
    err = capsys.readouterr().err
    assert f"features [{'#' * 24}] {len(samples)}/{len(samples)} 100% | " in err and " images/s | ETA" in err
