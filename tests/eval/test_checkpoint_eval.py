import json

import numpy as np
import pytest
from PIL import Image

from reidfast.eval.__main__ import main as eval_main
from reidfast.eval.io import load_features
from reidfast.train.__main__ import main as train_main
from tests.train.conftest import TINY_DATA, tiny_args


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from reidfast.data.synthetic import generate
    root = tmp_path_factory.mktemp("eval-data") / "tiny"
    generate(root, **TINY_DATA)
    out = tmp_path_factory.mktemp("eval-runs") / "run"
    assert train_main(tiny_args(root, out, "--iters", "4", "--ckpt-every", "0")) == 0
    return out


def test_checkpoint_eval_matches_training_metrics_and_exports(trained_run, tmp_path, capsys):
    export, picture = tmp_path / "features.npz", tmp_path / "ranked.png"
    summary = tmp_path / "summary.json"
    assert eval_main(["--checkpoint", str(trained_run), "--ap-mode", "market", "--export", str(export),
                      "--ranked-list", str(picture), "--ranked-queries", "3", "--json", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "features written" in out and "ranked lists of 3 queries" in out
    # the same model, data and AP convention as the training run's final evaluation
    trained = json.loads((trained_run / "metrics.json").read_text())
    evaluated = json.loads(summary.read_text())
    # the same keys and units (fractions) in both files, so that numbers from either compare directly
    for key in ("rank1", "rank5", "rank10", "mAP"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    # the export is what --features reads, and ranks to the same numbers
    saved = load_features(str(export))
    assert saved.query_f.shape[1] == saved.gallery_f.shape[1] and np.allclose(saved.query_f.norm(dim=1), 1, atol=1e-5)
    assert eval_main(["--features", str(export), "--ap-mode", "market", "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["mAP"] == pytest.approx(evaluated["mAP"], abs=1e-4)
    with Image.open(picture) as img:
        assert img.size[0] > 10 * 16 and img.size[1] >= 3 * 32


def test_checkpoint_eval_of_a_missing_run(tmp_path, capsys):
    # a clear one-line error naming the option the user gave, exit status 2, no traceback
    assert eval_main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint: no checkpoint at") and "Traceback" not in err
    assert eval_main(["--checkpoint", str(tmp_path / "nothing"), "--ranked-queries", "0"]) == 2
    assert "--ranked-queries: must be >= 1, got 0" in capsys.readouterr().err


def test_checkpoint_eval_with_another_data_root_keeps_the_runs_dataset(trained_run, tmp_path, monkeypatch):
    # --data-root alone replaces where the run's own dataset (synthetic, here) is read from, not which dataset it is
    from reidfast.data.synthetic import generate
    from reidfast.train import loop
    root = tmp_path / "elsewhere"
    generate(root, **{**TINY_DATA, "seed": 4})
    read = []
    real_get_dataset = loop.get_dataset

    def get_dataset(name=None, data_root=None, **options):
        read.append((name, data_root))
        return real_get_dataset(name, data_root, **options)

    monkeypatch.setattr(loop, "get_dataset", get_dataset)
    assert eval_main(["--checkpoint", str(trained_run), "--data-root", str(root), "--ranked-list",
                      str(tmp_path / "r.png"), "--json", str(tmp_path / "m.json")]) == 0
    assert read == [("synthetic", str(root))]
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["metric"] == "cosine"  # the baseline's own test protocol, from features


def test_verifier_topk_without_a_verifier_is_refused_before_the_features(trained_run, capsys, monkeypatch):
    from reidfast.eval import trained_run as module
    monkeypatch.setattr(module, "extract_features", lambda *a, **k: pytest.fail("features extracted before the check"))
    assert eval_main(["--checkpoint", str(trained_run), "--verifier-topk", "10"]) == 2
    assert "--verifier-topk: baseline has no verifier (fdgan has)" in capsys.readouterr().err


def test_checkpoint_eval_refuses_a_data_root_that_does_not_exist(trained_run, tmp_path, capsys):
    # a mistyped path is an error, not a place to generate a new synthetic dataset (of other ids and size) to score
    missing = tmp_path / "typo"
    assert eval_main(["--checkpoint", str(trained_run), "--data-root", str(missing)]) == 2
    assert f"--data-root {missing}: no such folder" in capsys.readouterr().err
    assert not missing.exists()


def test_checkpoint_eval_reranked_says_so(trained_run, tmp_path, capsys):
    assert eval_main(["--checkpoint", str(trained_run), "--rerank", "--k1", "4", "--k2", "2", "--ranked-list",
                      str(tmp_path / "r.png"), "--json", str(tmp_path / "m.json")]) == 0
    assert "distance: cosine, k-reciprocal re-ranked" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["metric"] == "cosine, k-reciprocal re-ranked"
