"""SA-GAN on the CPU at a tiny size: every stage end to end on two synthetic domains, the translated dataset in
Market-1501 layout, exact resume of a multi-stage run, the ablation switches, faithful == fast, and the run folder
through the evaluation and generation commands."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reidfast import ops
from reidfast.data import get_dataset, read_market1501
from reidfast.data.synthetic import generate
from reidfast.train.__main__ import main
from reidfast.train.checkpoint import load_checkpoint

from .conftest import TINY_DATA, ConvolutionsOverTheBatch, read_log


@pytest.fixture(scope="session")
def domain_b(tmp_path_factory):
    root = tmp_path_factory.mktemp("sagan-data") / "b"
    generate(root, **{**TINY_DATA, "domain": "b"})
    return root


def sagan_args(source, target, out, *extra):
    """32x16 images; width-4 ResNet-50 batch 8 for 3 re-id iterations; 4 adaptation iterations of 2 + 2 images
    with width-4 networks; 2 spatial codes."""
    return ["sagan", "--source", "synthetic-a", "--source-root", str(source), "--target", "synthetic-b",
            "--target-root", str(target), "--out", str(out), "--device", "cpu", "--height", "32", "--width", "16",
            "--backbone-width", "4", "--batch-size", "8", "--iters", "3", "--workers", "0", "--threads", "1",
            "--pad", "2", "--pretrained", "none", "--log-every", "1", "--eval-batch-size", "64", "--ckpt-every", "2",
            "--adapt-iters", "4", "--adapt-batch-size", "2", "--ngf", "4", "--gen-blocks", "1", "--ndf", "4",
            "--stm-hidden", "4", "--dt-hidden", "8", "--sianet-width", "4", "--sianet-dim", "8", "--codes", "2",
            *extra]


@pytest.fixture(scope="module")
def full_run(tiny_root, domain_b, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sagan"
    assert main(sagan_args(tiny_root, domain_b, out)) == 0
    return out


def adapt_records(run_dir):
    return {r["it"]: r for r in read_log(run_dir) if "cyc" in r}


def test_all_stages_write_a_complete_run(full_run, tiny_root):
    stages = json.loads((full_run / "stages.json").read_text())
    assert stages["stages"] == ["adapt", "translate", "reid"]
    assert stages["status"] == {"adapt": "done", "translate": "done", "reid": "done"}
    config = json.loads((full_run / "config.json").read_text())
    assert config["stage"] == "all" and config["current_stage"] is None and config["preset"] == "paper"
    # adaptation: every loss finite, no re-id numbers, sample grids
    adapt = json.loads((full_run / "adapt" / "metrics.json").read_text())
    assert "mAP" not in adapt and adapt["iterations"] == 4 and adapt["images_per_s"] > 0
    records = adapt_records(full_run / "adapt")
    assert sorted(records) == [1, 2, 3, 4]
    for r in records.values():
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
        assert r["gp"] >= 0 and r["con"] > 0
    assert records[4]["scl"] > 0 and records[4]["pcl"] > 0 and records[4]["t_shift"] > 0  # the STMs moved
    assert list((full_run / "adapt" / "samples").glob("it*.png"))
    state = load_checkpoint(full_run / "adapt" / "checkpoint.pt", "sagan")
    assert set(state["networks"]) == {"s1", "s2", "g1", "g2", "d1", "d2", "dt", "sia"}
    assert state["config"]["current_stage"] == "adapt" and state["config"]["batch_size"] == 2
    # re-id: the target's query/gallery, Euclidean on the pool-5 feature; the run folder holds copies
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert metrics == json.loads((full_run / "reid" / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic-b" and metrics["metric"] == "euclidean" and metrics["iterations"] == 3
    assert 0 <= metrics["mAP"] <= 1 and metrics["num_queries"] > 0
    assert (full_run / "checkpoint.pt").read_bytes() == (full_run / "reid" / "checkpoint.pt").read_bytes()
    reid = load_checkpoint(full_run / "checkpoint.pt", "sagan")
    assert reid["config"]["current_stage"] == "reid" and reid["dataset"]["num_train_pids"] == 4


def test_translated_dataset_is_a_market1501_dataset(full_run, tiny_root):
    translated = read_market1501(full_run / "translate")
    source = read_market1501(tiny_root)
    assert len(translated.train) == 2 * len(source.train)  # M = 2 variants per source image
    assert translated.num_train_pids == source.num_train_pids
    assert len(translated.query) == len(source.query) and len(translated.gallery) == len(source.gallery)
    # each source image's variants keep its identity; the sequence number is the spatial code
    rows = (full_run / "translate" / "translation.csv").read_text().splitlines()[1:]
    train_rows = [r.split(",") for r in rows if r.startswith("bounding_box_train/")]
    assert sorted({r[4] for r in train_rows}) == ["1", "2"] and len(train_rows) == len(translated.train)
    source_pid = {s.path: s.pid for s in source.train}
    by_name = {s.path.rsplit("/", 1)[1]: s.pid for s in translated.train}
    for file, source_image, *_ in train_rows:
        assert by_name[file.split("/")[1]] == source_pid[source_image]
    from PIL import Image
    with Image.open(translated.train[0].path) as img:
        assert img.size == (16, 32)
    info = json.loads((full_run / "translate" / "translation.json").read_text())
    assert info["codes"] == 2 and info["train_images"] == len(translated.train)


def _interrupted_copy(full_run, dst, running):
    """The run folder as it was when stage `running` had written its mid-run checkpoint (iteration 2)."""
    dst.mkdir()
    shutil.copy(full_run / "config.json", dst / "config.json")
    order = ["adapt", "translate", "reid"]
    done = order[:order.index(running)]
    for stage in done:
        shutil.copytree(full_run / stage, dst / stage)
    (dst / running).mkdir()
    shutil.copy(full_run / running / "checkpoint.prev.pt", dst / running / "checkpoint.pt")
    status = {**{s: "done" for s in done}, running: "running"}
    (dst / "stages.json").write_text(json.dumps({"stages": order, "status": status,
                                                 "folders": {s: s for s in order}}))


def _same_networks(a, b):
    a, b = load_checkpoint(a)["networks"], load_checkpoint(b)["networks"]
    return all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_resume_continues_the_adaptation_then_runs_the_remaining_stages(full_run, tmp_path):
    resumed = tmp_path / "resumed"
    _interrupted_copy(full_run, resumed, "adapt")
    assert main(["sagan", "--out", str(resumed), "--resume"]) == 0
    full, again = adapt_records(full_run / "adapt"), adapt_records(resumed / "adapt")
    assert sorted(again) == [3, 4]
    for it in (3, 4):  # bit for bit: codes, interpolates and data order come from checkpointed state
        assert {k: v for k, v in again[it].items() if k != "images_per_s"} == \
               {k: v for k, v in full[it].items() if k != "images_per_s"}
    assert _same_networks(full_run / "adapt" / "checkpoint.pt", resumed / "adapt" / "checkpoint.pt")
    assert _same_networks(full_run / "reid" / "checkpoint.pt", resumed / "reid" / "checkpoint.pt")
    assert json.loads((resumed / "stages.json").read_text())["status"]["reid"] == "done"
    full_metrics = json.loads((full_run / "metrics.json").read_text())
    resumed_metrics = json.loads((resumed / "metrics.json").read_text())
    assert resumed_metrics["mAP"] == full_metrics["mAP"] and resumed_metrics["rank1"] == full_metrics["rank1"]


def test_the_same_command_with_resume_continues_the_adaptation_exactly(full_run, tiny_root, domain_b, tmp_path):
    # the command's --iters is the re-id stage's: it must not become the adaptation's length
    resumed = tmp_path / "resumed"
    _interrupted_copy(full_run, resumed, "adapt")
    assert main(sagan_args(tiny_root, domain_b, resumed, "--resume")) == 0
    full, again = adapt_records(full_run / "adapt"), adapt_records(resumed / "adapt")
    assert sorted(again) == [3, 4]
    assert [again[i]["cyc"] for i in (3, 4)] == [full[i]["cyc"] for i in (3, 4)]
    assert _same_networks(full_run / "adapt" / "checkpoint.pt", resumed / "adapt" / "checkpoint.pt")
    assert load_checkpoint(resumed / "reid" / "checkpoint.pt")["iteration"] == 3


def test_lengths_given_with_resume_reach_their_stages(full_run, tmp_path):
    resumed = tmp_path / "resumed"
    _interrupted_copy(full_run, resumed, "adapt")
    assert main(["sagan", "--out", str(resumed), "--resume", "--adapt-iters", "5", "--iters", "4"]) == 0
    adapt = load_checkpoint(resumed / "adapt" / "checkpoint.pt")
    assert adapt["iteration"] == 5 and adapt["config"]["batch_size"] == 2  # the adaptation's own batch
    assert load_checkpoint(resumed / "reid" / "checkpoint.pt")["iteration"] == 4
    top = json.loads((resumed / "config.json").read_text())
    assert (top["adapt_iters"], top["iters"]) == (5, 4)  # kept for a later --resume


def test_a_refused_length_given_with_resume_is_not_saved(full_run, tmp_path, capsys):
    # the re-id stage stopped at iteration 2: --iters 1 ends before it and is refused; the run's config.json keeps
    # its length, so that the plain --resume that follows continues the run instead of meeting --iters 1 again
    resumed = tmp_path / "resumed"
    _interrupted_copy(full_run, resumed, "reid")
    config = (resumed / "config.json").read_bytes()
    assert main(["sagan", "--out", str(resumed), "--resume", "--iters", "1"]) == 2
    assert "--iters 1 ends before iteration 2" in capsys.readouterr().err
    assert (resumed / "config.json").read_bytes() == config
    assert main(["sagan", "--out", str(resumed), "--resume"]) == 0
    assert load_checkpoint(resumed / "reid" / "checkpoint.pt")["iteration"] == \
        load_checkpoint(full_run / "reid" / "checkpoint.pt")["iteration"]


def test_ctrl_c_in_the_translate_stage_says_how_to_continue(full_run, tmp_path, monkeypatch, capsys):
    from reidfast.train import sagan
    run = tmp_path / "translating"  # adapted, and translating when Ctrl-C comes
    shutil.copytree(full_run / "adapt", run / "adapt")
    shutil.copy(full_run / "config.json", run / "config.json")
    order = ["adapt", "translate", "reid"]
    (run / "stages.json").write_text(json.dumps({"stages": order, "status": {"adapt": "done", "translate": "running"},
                                                 "folders": {s: s for s in order}}))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sagan, "translate", interrupted)
    assert main(["sagan", "--out", str(run), "--resume"]) == 130
    err = capsys.readouterr().err
    assert "stopped in the translate stage" in err and "run the same command again with --resume" in err
    assert "Traceback" not in err


def test_a_missing_source_root_leaves_no_run_folder(domain_b, tmp_path, capsys):
    out = tmp_path / "never"
    args = sagan_args(tmp_path / "no-such-source", domain_b, out)
    args[args.index("synthetic-a")] = "market1501"  # (a synthetic domain's missing root is generated)
    assert main(args) == 2
    assert "no-such-source" in capsys.readouterr().err
    assert not out.exists()


def test_a_root_without_its_dataset_name_is_refused(tmp_path, capsys):
    # a forgotten --target would otherwise generate the synthetic domain b inside the user's dataset folder
    data = tmp_path / "dukemtmc"
    data.mkdir()
    out = tmp_path / "never"
    assert main(["sagan", "--target-root", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--target-root {data}: name the dataset it holds with --target NAME" in err
    assert list(data.iterdir()) == [] and not out.exists()
    assert main(["sagan", "--source-root", str(data), "--out", str(out)]) == 2
    assert "--source synthetic-a to generate" in capsys.readouterr().err


@pytest.mark.parametrize("stage, flags", [
    ("adapt", ["--iters", "2"]), ("translate", ["--batch-size", "4", "--lr", "0.1"]), ("all", ["--iters", "2"])])
def test_reid_stage_options_without_the_reid_stage_are_named_as_ignored(tmp_path, capsys, stage, flags):
    # --iters & co. are the re-id stage's: with --stage adapt the adaptation trains at its own length, which the
    # user is told before it starts (the run itself is stopped by the missing --adapt-run of translate, or by the
    # unwritable --out: it is the message that is checked here)
    out = tmp_path / "file"
    out.write_text("")
    assert main(["sagan", "--stage", stage, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    named = ", ".join(f for f in flags if f.startswith("--"))
    warning = (f"warning: sagan: {named} {'is an option' if len(flags) == 2 else 'are options'} of the re-id stage, "
               f"which --stage {stage} does not run (ignored); the adaptation stage's length, batch and learning "
               f"rates are --adapt-iters (400)")
    assert (warning in err) == (stage != "all"), err


def test_the_ignored_options_warning_comes_from_rank_0_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "file"
    out.write_text("")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, warned in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(["sagan", "--stage", "adapt", "--iters", "2", "--out", str(out)]) == 2
        assert ("warning: sagan: --iters is an option of the re-id stage" in capsys.readouterr().err) == warned


def test_images_without_masks_are_found_before_the_run_starts(tiny_root, domain_b, tmp_path, capsys):
    source = tmp_path / "no-masks"
    shutil.copytree(tiny_root, source)
    shutil.rmtree(source / "masks")
    out = tmp_path / "run"
    assert main(sagan_args(source, domain_b, out)) == 2
    err = capsys.readouterr().err
    assert "source training images of synthetic-a have no mask" in err and "--missing-masks ones" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("stage, reads", [(["--stage", "adapt"], ["synthetic-a", "synthetic-b"]),
                                          (["--stage", "reid", "--no-adapt"], ["synthetic-b", "synthetic-a"])])
def test_the_first_stage_reads_its_datasets_once(tiny_root, domain_b, tmp_path, monkeypatch, stage, reads):
    # read before the run folder is made (to refuse a wrong root), then trained on: not read a second time
    from reidfast.train import sagan
    read, names = sagan.read_domain, []

    def counted(name, root, cfg):
        names.append(name)
        return read(name, root, cfg)

    monkeypatch.setattr(sagan, "read_domain", counted)
    assert main(sagan_args(tiny_root, domain_b, tmp_path / "run", *stage, "--adapt-iters", "1", "--iters", "1")) == 0
    assert names == reads


def test_resume_skips_finished_stages(full_run, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    _interrupted_copy(full_run, resumed, "reid")
    assert main(["sagan", "--out", str(resumed), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "stage adapt finished earlier" in err and "stage translate finished earlier" in err
    assert "resuming from" in err and "iteration 2" in err
    assert _same_networks(full_run / "reid" / "checkpoint.pt", resumed / "reid" / "checkpoint.pt")
    assert load_checkpoint(resumed / "adapt" / "checkpoint.pt")["iteration"] == 4  # untouched


def test_a_finished_run_resumed_with_a_longer_length_trains_its_last_stage_on(full_run, tmp_path, capsys):
    run = tmp_path / "longer"
    shutil.copytree(full_run, run)
    assert main(["sagan", "--out", str(run), "--resume", "--iters", "5"]) == 0
    assert load_checkpoint(run / "reid" / "checkpoint.pt")["iteration"] == 5
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 5  # the run folder's copy too
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 5
    assert load_checkpoint(run / "adapt" / "checkpoint.pt")["iteration"] == 4  # untouched
    capsys.readouterr()
    written = {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}
    assert main(["sagan", "--out", str(run), "--resume"]) == 0  # finished again: nothing to train or write
    assert "nothing to train" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()} == written


def test_a_new_length_for_a_finished_adaptation_is_refused(full_run, tmp_path, capsys):
    run = tmp_path / "adapt-longer"
    shutil.copytree(full_run, run)
    config = (run / "config.json").read_bytes()
    assert main(["sagan", "--out", str(run), "--resume", "--adapt-iters", "6"]) == 2
    err = capsys.readouterr().err
    assert "--adapt-iters 6" in err and "finished at iteration 4" in err and "Traceback" not in err
    assert (run / "config.json").read_bytes() == config  # not saved as if it had been applied


def test_the_reid_stage_under_torchrun_writes_the_run_folder_once(full_run, tiny_root, domain_b, tmp_path):
    """The re-id stage runs under torchrun (DDP): both ranks train it, rank 0 alone publishes the run folder's files
    (both copying to the same temporary file made one rank fail after training)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1",
           "REIDFAST_DDP_BACKEND": "gloo"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           "-m", "reidfast.train",
           *sagan_args(tiny_root, domain_b, out, "--stage", "reid", "--translated", str(full_run / "translate"))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stderr and proc.stderr.count("sagan: stage reid in") == 1
    assert json.loads((out / "stages.json").read_text())["status"] == {"reid": "done"}
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3
    assert not list(out.glob(".*.tmp"))


def test_the_one_process_stages_are_refused_under_torchrun(full_run, tiny_root, domain_b, tmp_path, monkeypatch,
                                                           capsys):
    # every rank would translate into the same folder: refused before anything is written, with what to run instead
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "never"
    assert main(sagan_args(tiny_root, domain_b, out, "--stage", "translate", "--adapt-run",
                           str(full_run / "adapt"))) == 2
    err = capsys.readouterr().err
    assert "the translate stage cannot run under torchrun" in err and "--stage reid under torchrun" in err
    assert not out.exists()
    assert main(sagan_args(tiny_root, domain_b, out)) == 2
    assert "run --stage adapt, then --stage translate without torchrun" in capsys.readouterr().err
    assert not out.exists()


def test_a_wrong_adapt_run_is_named_before_anything_is_written(full_run, tiny_root, domain_b, tmp_path, capsys):
    out = tmp_path / "never"
    for adapt_run, words in ((tmp_path / "missing", f"--adapt-run: no checkpoint at {tmp_path / 'missing'}"),
                             (full_run / "reid", f"--adapt-run {full_run / 'reid'}: not an SA-GAN adaptation stage "
                                                 "(its checkpoint is the SA-GAN reid stage's)")):
        assert main(sagan_args(tiny_root, domain_b, out, "--stage", "translate", "--adapt-run", str(adapt_run))) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()


def test_the_adaptation_method_refuses_torchrun_as_the_run_does():
    # the stage's loop method, built without SAGAN.run (e.g. by a script), gives the run's refusal and advice
    from reidfast.train.sagan import SAGAN, AdaptStage
    with pytest.raises(ValueError) as refused:
        AdaptStage(SimpleNamespace(world_size=2, cfg={**SAGAN.defaults, "current_stage": "adapt"}), None)
    assert str(refused.value) == ("sagan: the adapt stage cannot run under torchrun (it runs in one process): run "
                                  "--stage adapt without torchrun, then --stage reid under torchrun, with the same "
                                  "--out")


def test_a_stage_is_not_trained_over_unless_asked(full_run, tiny_root, domain_b, tmp_path, capsys):
    import shutil
    run = tmp_path / "again"
    shutil.copytree(full_run, run)
    before = (run / "adapt" / "checkpoint.pt").read_bytes()
    assert main(sagan_args(tiny_root, domain_b, run, "--stage", "adapt")) == 2
    assert f"already holds a sagan run ({run / 'adapt' / 'checkpoint.pt'})" in capsys.readouterr().err
    assert (run / "adapt" / "checkpoint.pt").read_bytes() == before


def test_direct_transfer_trains_on_the_raw_source(tiny_root, domain_b, tmp_path, capsys):
    out = tmp_path / "direct"
    assert main(sagan_args(tiny_root, domain_b, out, "--stage", "reid", "--no-adapt")) == 0
    assert json.loads((out / "stages.json").read_text())["stages"] == ["reid"]
    assert not (out / "adapt").exists() and not (out / "translate").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic-b" and metrics["metric"] == "euclidean"
    assert load_checkpoint(out / "checkpoint.pt")["dataset"]["num_train_pids"] == 4
    capsys.readouterr()
    assert main(sagan_args(tiny_root, domain_b, tmp_path / "bad", "--no-adapt")) == 2
    assert "--no-adapt" in capsys.readouterr().err


def test_stages_one_command_each_share_the_run_folder(tiny_root, domain_b, tmp_path):
    out = tmp_path / "staged"
    for stage in ("adapt", "translate", "reid"):
        assert main(sagan_args(tiny_root, domain_b, out, "--stage", stage, "--adapt-iters", "1", "--iters", "1")) == 0
        record = json.loads((out / "stages.json").read_text())
        assert record["status"][stage] == "done"
    assert record["stages"] == ["adapt", "translate", "reid"] and set(record["status"].values()) == {"done"}
    assert load_checkpoint(out / "checkpoint.pt")["config"]["current_stage"] == "reid"
    assert len(read_market1501(out / "translate").train) == 2 * len(read_market1501(tiny_root).train)


def test_reid_stage_without_a_translated_dataset_says_what_to_do(tiny_root, domain_b, tmp_path, capsys):
    assert main(sagan_args(tiny_root, domain_b, tmp_path / "x", "--stage", "reid")) == 2
    assert "no translated dataset" in capsys.readouterr().err


def test_eval_and_generate_take_the_run_folder(full_run, tiny_root, domain_b, tmp_path, capsys, monkeypatch):
    from reidfast.eval.__main__ import main as eval_main
    from reidfast.generate.__main__ import main as generate_main
    summary = tmp_path / "summary.json"
    assert eval_main(["--checkpoint", str(full_run), "--json", str(summary)]) == 0
    trained = json.loads((full_run / "metrics.json").read_text())
    assert json.loads(summary.read_text())["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    # --dataset / --data-root test the re-id model on another dataset (here the source domain)
    assert eval_main(["--checkpoint", str(full_run), "--dataset", "synthetic-a", "--data-root", str(tiny_root),
                      "--json", str(summary)]) == 0
    assert json.loads(summary.read_text())["num_queries"] == len(read_market1501(tiny_root).query)
    # --data-root alone: the run's own target (synthetic-b), read from there
    from reidfast.train import sagan
    read = []
    with monkeypatch.context() as patch:
        patch.setattr(sagan, "get_dataset", lambda name, root, **options: read.append((name, root, options))
                      or get_dataset(name, root, **options))
        assert eval_main(["--checkpoint", str(full_run), "--data-root", str(domain_b), "--json", str(summary)]) == 0
    assert [(name, root, options.get("domain")) for name, root, options in read] == [("synthetic", str(domain_b), "b")]
    # --rerank re-ranks the run's own distances (euclidean on the pool-5 feature) under the run's AP convention
    features = tmp_path / "features.npz"
    assert eval_main(["--checkpoint", str(full_run), "--rerank", "--k1", "6", "--k2", "3", "--export", str(features),
                      "--json", str(summary)]) == 0
    saved = np.load(features)
    from reidfast.eval.rerank import k_reciprocal_distance
    distances = k_reciprocal_distance(torch.from_numpy(saved["query_f"]), torch.from_numpy(saved["gallery_f"]), k1=6,
                                      k2=3, metric="euclidean")
    want = ops.rank_eval(saved["query_label"], saved["gallery_label"], saved["query_cam"], saved["gallery_cam"],
                         distmat=distances, ap_mode=load_checkpoint(full_run / "checkpoint.pt")["config"]["ap_mode"])
    assert json.loads(summary.read_text())["mAP"] == pytest.approx(want.mAP)
    image = sorted((tiny_root / "bounding_box_train").iterdir())[0]
    out = tmp_path / "generated"
    mask = tiny_root / "masks" / "bounding_box_train" / (image.stem + ".png")
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(image), "--mask", str(mask),
                          "--codes", "3", "--device", "cpu", "--out", str(out)]) == 0
    from PIL import Image
    written = list(out.glob("*.png"))
    assert len(written) == 1
    with Image.open(written[0]) as grid:  # rows: input, 3 spatially adapted, 3 fully adapted; 2-pixel padding
        assert grid.size == (3 * (16 + 2) + 2, 3 * (32 + 2) + 2)
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(tmp_path / "none.jpg"),
                          "--device", "cpu", "--out", str(out)]) == 2
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(image), str(image), "--mask",
                          str(mask), "--device", "cpu", "--out", str(out)]) == 2  # one mask per image
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(image), "--codes", "100000",
                          "--device", "cpu", "--out", str(out)]) == 2  # refused, not an out-of-memory crash
    assert "--codes must be between 1 and 256" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file, not a folder")
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(image), "--device", "cpu",
                          "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'taken'}: file exists" in err and "Traceback" not in err


def test_generate_writes_one_grid_per_image_when_stems_collide(full_run, tiny_root, tmp_path, capsys):
    from PIL import Image
    from reidfast.generate.__main__ import main as generate_main
    first, second = sorted((tiny_root / "bounding_box_train").glob("*.jpg"))[:2]
    same = first.parent / ".." / first.parent.name / first.name  # the same file by another path
    elsewhere = tmp_path / "copy" / first.name  # another file of the same name: the second image's pixels
    elsewhere.parent.mkdir()
    shutil.copy(second, elsewhere)
    out = tmp_path / "generated"
    assert generate_main(["sagan", "--checkpoint", str(full_run), "--image", str(first), str(same), str(elsewhere),
                          str(second), "--codes", "2", "--device", "cpu", "--out", str(out)]) == 0
    written = capsys.readouterr().out.split()
    stem = first.stem
    assert [p.split("/")[-1] for p in written] == [f"{stem}_0_sagan_2codes.png", f"{stem}_1_sagan_2codes.png",
                                                   f"{stem}_2_sagan_2codes.png", f"{second.stem}_sagan_2codes.png"]
    grids = []
    for path in written:
        with Image.open(path) as grid:
            grids.append(np.asarray(grid))
    # each file holds its own image's grid: the same input gives the same first cell, another input another one
    cell = 2 + 16  # the input is the top-left cell, after the 2-pixel padding
    assert np.array_equal(grids[0][2:2 + 32, 2:cell], grids[1][2:2 + 32, 2:cell])
    assert np.array_equal(grids[2][2:2 + 32, 2:cell], grids[3][2:2 + 32, 2:cell])
    assert not np.array_equal(grids[0][2:2 + 32, 2:cell], grids[2][2:2 + 32, 2:cell])


@pytest.mark.parametrize("paths, stems", [
    (["a.jpg", "b.jpg"], ["a", "b"]),
    (["x/a.jpg", "y/a.png", "b.jpg"], ["a_0", "a_1", "b"]),
    (["A.jpg", "x/a.jpg"], ["A_0", "a_1"]),  # one file on a case-insensitive file system
    (["a.jpg", "x/a.jpg", "a_1.jpg"], ["a_0", "a_1", "a_1_2"]),  # a suffix meeting another input's own stem
])
def test_output_stems_are_distinct(paths, stems):
    from reidfast.generate.common import output_stems
    assert output_stems(paths) == stems


# --- the adaptation step in isolation --------------------------------------------------------------------------------
def _adapt_method(**options):
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    from reidfast.train.sagan import SAGAN
    cfg = {**LOOP_DEFAULTS, **SAGAN.defaults, "current_stage": "adapt", "height": 32, "width": 16,
           "batch_size": 3, "ngf": 4, "gen_blocks": 1, "ndf": 4, "stm_hidden": 4, "dt_hidden": 8, "sianet_width": 4,
           "sianet_dim": 8, "amp": "off", "compile": False, "channels_last": False, "device": "cpu", **options}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda message: None)
    torch.manual_seed(0)
    method = SAGAN(run, SimpleNamespace(num_train_pids=4))
    # trained-looking STMs and generators (fresh ones are the identity, which would hide differences)
    with torch.no_grad():
        for stm in (method.s1, method.s2):
            stm.params.weight.normal_(0, 0.05)
        for gen in (method.g1, method.g2):
            gen.out.weight.normal_(0, 0.05)
    method.configure(10)
    return method


def _batch(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, 32, 16), generator=g, dtype=torch.uint8),
            "mask": (torch.rand(n, 1, 32, 16, generator=g) > 0.4).to(torch.uint8),
            "target_image": torch.randint(0, 256, (n, 3, 32, 16), generator=g, dtype=torch.uint8),
            "target_mask": (torch.rand(n, 1, 32, 16, generator=g) > 0.4).to(torch.uint8)}


def test_faithful_and_batched_calls_give_the_same_losses_at_fp32():
    losses, grads, adapted = {}, {}, {}
    for faithful in (False, True):
        method = _adapt_method(faithful=faithful)
        losses[faithful] = method.train_step(_batch(), 0)
        # the gradients of both updates (Adam's first step would amplify the rounding of gradients that are
        # zero analytically, such as the critics' last bias, into differences of the order of the lr)
        grads[faithful] = {f"{name}.{k}": p.grad for name, net in method.networks.items()
                             for k, p in net.named_parameters()}
        codes = torch.randn(2, 3, method.code_dim, generator=torch.Generator().manual_seed(3))
        adapted[faithful] = method.adapt(torch.randn(2, 3, 32, 16), torch.ones(2, 1, 32, 16), codes)
    fast, original = losses[False], losses[True]
    assert fast["scl"] > 0 and fast["pcl"] > 0 and fast["adv_t"] != 0  # every loss is on
    for key in fast:
        torch.testing.assert_close(fast[key], original[key], rtol=1e-4, atol=1e-6, msg=key)
    assert all(g is not None for g in grads[False].values())  # every network took part
    for key, value in grads[False].items():
        torch.testing.assert_close(value, grads[True][key], rtol=1e-4, atol=1e-6, msg=key)
    for a, b in zip(adapted[False], adapted[True]):  # M codes in one pass == one pass per code
        assert a.shape == (2, 3, 3, 32, 16)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_step_is_two_graphs_compiled_once(compiled_graphs):
    # The generator step's forward is one graph and the critic step's, gradient penalties included (their input
    # gradients by torch.func.grad, which dynamo traces; autograd.grad(create_graph=True) it cannot), another:
    # per-network graphs with eager code between them left the step bound by the host's launches on a GPU.
    # Everything compiles in the first step, with no graph break (each would add a graph).
    graphs = compiled_graphs
    method = _adapt_method(compile=True)
    first_out = method.train_step(_batch(), 0)
    first = list(graphs)
    method.train_step(_batch(seed=2), 1)
    assert all(torch.isfinite(v) for v in first_out.values())
    assert graphs == first, f"the second step compiled {graphs[len(first):]}"
    assert first == ["_generator_losses", "_critic_losses"], first


def test_gradient_penalty_equals_the_double_backward_of_autograd():
    # the WGAN-GP of the paper's critics as autograd.grad(create_graph=True) computes it: value and the critic's
    # parameter gradients, for image and homography critics
    from reidfast.models.sagan import Critic, TransformCritic
    from reidfast.ops import use_backend
    from reidfast.train.sagan import gradient_penalty
    torch.manual_seed(0)
    for critic, shape in ((Critic(3, 4), (3, 3, 16, 8)), (TransformCritic(8).body, (3, 8))):
        real, fake, e = torch.randn(shape), torch.randn(shape), torch.rand(shape[0])
        mix = (e.view((-1,) + (1,) * (len(shape) - 1)) * real + (1 - e.view((-1,) + (1,) * (len(shape) - 1))) * fake)
        mix.requires_grad_(True)
        with use_backend("reference"):  # the critic's convolutions as F.conv2d: autograd's own second derivative
            grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
            expected = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
            expected_grads = torch.autograd.grad(expected, list(critic.parameters()), allow_unused=True)
        got = gradient_penalty(critic, real, fake, e)
        got_grads = torch.autograd.grad(got, list(critic.parameters()), allow_unused=True)
        torch.testing.assert_close(got, expected)
        assert any(g is not None for g in got_grads)
        for a, b in zip(got_grads, expected_grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend, slow_formula", [("auto", False), ("reference", True)])
def test_gradient_penalty_reaches_the_critic_without_convolving_over_the_batch(backend, slow_formula):
    # the critic's convolutions are PenaltyConv2d: the penalty's gradient reaches its weights by weight-gradient
    # kernels; the reference backend (autograd's formula) shows that the check sees the slow form when it is there
    from reidfast.models.sagan import Critic
    from reidfast.ops import use_backend
    from reidfast.train.sagan import gradient_penalty
    critic = Critic(3, 4)
    g = torch.Generator().manual_seed(4)
    real, fake, e = torch.randn(5, 3, 16, 8, generator=g), torch.randn(5, 3, 16, 8, generator=g), torch.rand(5)
    with use_backend(backend):
        penalty = gradient_penalty(critic, real, fake, e)
        with ConvolutionsOverTheBatch(5) as seen:
            torch.autograd.grad(penalty, list(critic.parameters()), allow_unused=True)  # the last bias: no part in it
    assert bool(seen.calls) == slow_formula, seen.calls


def test_compiled_step_matches_the_eager_step(monkeypatch):
    # One step from the same weights and batch, through the compiled graphs' autograd (aot_eager: dynamo's capture
    # and aot_autograd's joint graph, without inductor's code generation, which costs minutes on a CPU) and eager:
    # the same losses and the same gradients (the updated weights would not show them: Adam's first step moves
    # each weight by about lr whatever its gradient's size), gradient penalties' double backward included.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, **{**kwargs, "backend": "aot_eager"}))
    torch._dynamo.reset()
    results = []
    for compile in (False, True):
        method = _adapt_method(compile=compile)
        out = method.train_step(_batch(), 0)
        results.append((out, {f"{name}.{k}": p.grad for name, net in method.networks.items()
                              for k, p in net.named_parameters()}))
    torch._dynamo.reset()
    (eager_out, eager_g), (comp_out, comp_g) = results
    assert eager_out.keys() == comp_out.keys()
    for key in eager_out:
        torch.testing.assert_close(comp_out[key], eager_out[key], rtol=1e-4, atol=1e-6, msg=key)
    assert all(g is not None for g in eager_g.values())  # every network took part
    for key in eager_g:
        torch.testing.assert_close(comp_g[key], eager_g[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("flag", ["no_spatial", "no_pixel", "no_disentangled_cycle"])
def test_ablation_switches_remove_their_part(flag):
    method = _adapt_method(**{flag: True})
    out = method.train_step(_batch(), 0)
    assert all(torch.isfinite(v) for v in out.values())
    if flag == "no_spatial":
        assert out["scl"] == 0 and out["adv_t"] == 0 and out["w_t"] == 0 and out["t_shift"] == 0
        assert out["pcl"] > 0
    elif flag == "no_pixel":
        assert out["mask"] == 0 and out["scl"] > 0
        xs, xa = method.adapt(torch.randn(1, 3, 32, 16), torch.ones(1, 1, 32, 16), torch.randn(1, 2, 8))
        assert torch.equal(xs, xa)  # no pixel-level change
    else:
        assert out["scl"] == 0 and out["pcl"] == 0 and out["cyc"] > 0


def test_nothing_left_to_adapt_is_an_error():
    with pytest.raises(ValueError, match="nothing to adapt"):
        _adapt_method(no_spatial=True, no_pixel=True)


def test_sample_grid_rows_and_the_training_modes():
    from reidfast.data import normalize
    method = _adapt_method()
    batch = _batch()
    grid = method.sample_images(batch)
    assert grid.shape == (6 * 8, 3, 32, 16)  # source, spatial, 3 fully adapted, target; padded to 8 columns
    assert torch.equal(grid[3:8], torch.zeros(5, 3, 32, 16))
    assert all(m.training for m in method.networks.values())  # put back as they were
    rows = grid.view(6, 8, 3, 32, 16)[:, :3]
    torch.testing.assert_close(rows[0], normalize(batch["image"]))  # the source images
    torch.testing.assert_close(rows[5], normalize(batch["target_image"]))  # the target examples
    codes = torch.randn(3, 3, method.code_dim, generator=torch.Generator().manual_seed(method.run.cfg["seed"]))
    for m in method.networks.values():
        m.eval()
    spatial, adapted = method.adapt(normalize(batch["image"]), batch["mask"], codes)
    torch.testing.assert_close(rows[1], spatial[:, 0])  # the spatial step under the first code
    torch.testing.assert_close(rows[2:5], adapted.transpose(0, 1))  # fully adapted, a row per code
    assert not torch.allclose(rows[2], rows[3])  # the codes give different adaptations
    for m in method.networks.values():
        m.train()
    state = method.run.generator.get_state()
    method.sample_images(_batch())
    assert torch.equal(state, method.run.generator.get_state())  # samples draw no training randomness


def test_preset_auto_follows_the_two_domains():
    from reidfast.train.config import resolve_config
    from reidfast.train.sagan import SAGAN
    assert resolve_config(SAGAN.defaults, SAGAN.presets, {}, {}, True)["preset"] == "cpu-quick"
    assert resolve_config(SAGAN.defaults, SAGAN.presets, {}, {"target": "synthetic-b"}, True)["preset"] == "cpu-quick"
    real = {"target": "dukemtmc", "target_root": "/data"}
    assert resolve_config(SAGAN.defaults, SAGAN.presets, {}, real, True)["preset"] == "paper"


def test_the_trainer_gives_the_adaptation_stage_cuda_graphs_on_a_gpu(tiny_root, domain_b, tmp_path, monkeypatch):
    # --compile-mode auto: the mode each stage's run would resolve to on a GPU, as the loop builds it (the loop runs
    # AdaptStage and ReidStage, not SAGAN, so the choice must reach those classes); the run itself stays on the CPU
    from reidfast.train import loop
    resolve, asked = loop.resolve_compile_mode, []

    def on_a_gpu_too(cfg, method_cls, device, world_size=1):
        asked.append((cfg["current_stage"], resolve(cfg, method_cls, torch.device("cuda"), world_size)))
        return resolve(cfg, method_cls, device, world_size)

    monkeypatch.setattr(loop, "resolve_compile_mode", on_a_gpu_too)
    assert main(sagan_args(tiny_root, domain_b, tmp_path / "s", "--adapt-iters", "1", "--iters", "1")) == 0
    # first the adaptation stage's trainer, last the re-id stage's (the translation between them loads the adapted
    # networks uncompiled)
    assert asked[0] == ("adapt", "reduce-overhead") and asked[-1] == ("reid", "default")


def _reid_method(**options):
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    from reidfast.train.sagan import SAGAN
    cfg = {**LOOP_DEFAULTS, **SAGAN.defaults, "current_stage": "reid", "height": 32, "width": 16,
           "backbone_width": 4, "pretrained": "none", "amp": "off", "compile": False, "channels_last": False,
           "device": "cpu", **options}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda message: None)
    torch.manual_seed(0)
    return SAGAN(run, SimpleNamespace(num_train_pids=5))


def test_the_reid_stage_is_ide_its_last_fc_on_the_pool5_feature():
    # IDE: ResNet-50 whose last FC maps the pool-5 feature to the source identities (dropout before it), no
    # 512-d bottleneck between them
    method = _reid_method()
    head, pool5 = method.model.head, method.model.backbone.out_channels
    assert (head.classifier.in_features, head.classifier.out_features) == (pool5, 5)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    logits, feature = method.model(torch.randn(2, 3, 32, 16))
    assert logits.shape == (2, 5) and feature.shape == (2, pool5)
    # the baseline itself keeps its ClassBlock bottleneck
    from reidfast.train.config import resolve_config
    from reidfast.train.sagan import SAGAN
    assert method.run.cfg["bottleneck"] == 0 and SAGAN.presets["cpu-quick"]["bottleneck"] == 512
    assert resolve_config(SAGAN.defaults, SAGAN.presets, {}, {}, True)["bottleneck"] == 512


def test_stm_bound_zero_is_unbounded():
    # --stm-bound 0 leaves the STMs' parameters unbounded, as its help says; a negative bound is refused
    from reidfast.train.config import ConfigError, resolve_config
    from reidfast.train.sagan import SAGAN
    assert resolve_config(SAGAN.defaults, SAGAN.presets, {}, {"stm_bound": 0.0}, True)["stm_bound"] == 0.0
    with pytest.raises(ConfigError, match=r"--stm-bound must be >= 0 \(0: unbounded\), got -0.1"):
        resolve_config(SAGAN.defaults, SAGAN.presets, {}, {"stm_bound": -0.1}, True)
    method = _adapt_method(stm_bound=0.0)
    assert method.s1.bound is None and method.s2.bound is None


def test_dataset_options_reach_the_reader_that_takes_them(tiny_root, domain_b, tmp_path, capsys):
    """--dataset-option applies to the source's or the target's reader (e.g. CUHK03-NP's labeled boxes as the
    target); one that neither reader takes is refused before the run starts, not ignored."""
    from reidfast.train.sagan import _check_dataset_options, read_domain
    for variant, cam in (("detected", 1), ("labeled", 2)):
        for split, name in (("bounding_box_train", f"0001_c{cam}_1.png"), ("query", "0002_c1_1.png"),
                            ("bounding_box_test", "0002_c2_4.png")):
            (tmp_path / "cuhk03-np" / variant / split).mkdir(parents=True)
            (tmp_path / "cuhk03-np" / variant / split / name).touch()
    cfg = {"source": "market1501", "source_root": str(tiny_root), "target": "cuhk03", "target_root": str(tmp_path),
           "dataset_option": ["variant=labeled"]}
    _check_dataset_options(cfg)
    assert read_domain("cuhk03", tmp_path, cfg).name == "cuhk03-np-labeled"
    assert read_domain("market1501", tiny_root, cfg).name == "market1501"
    out = tmp_path / "never"
    assert main(sagan_args(tiny_root, domain_b, out, "--dataset-option", "variant=labeled")) == 2
    err = capsys.readouterr().err
    assert "--dataset-option variant=labeled: expected KEY=VALUE with a KEY that the source's or the target's " \
           "reader takes" in err
    assert "Traceback" not in err and not out.exists()
