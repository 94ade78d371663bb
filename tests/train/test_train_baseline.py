import json
import shutil

import pytest
import torch

from reidfast.train.__main__ import main
from reidfast.train.checkpoint import load_checkpoint

from .conftest import losses, read_log, tiny_args


@pytest.fixture(scope="module")
def short_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "short"
    assert main(tiny_args(tiny_root, out, "--iters", "6", "--ckpt-every", "3", "--eval-every", "4")) == 0
    return out


def test_run_folder_holds_everything(short_run):
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "metrics.json"):
        assert (short_run / name).is_file(), name
    metrics = json.loads((short_run / "metrics.json").read_text())
    assert set(metrics) >= {"rank1", "rank5", "rank10", "mAP", "ap_mode", "dataset", "iterations", "images_per_s"}
    assert metrics["iterations"] == 6 and metrics["ap_mode"] == "market" and metrics["images_per_s"] > 0
    assert 0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1 and 0 <= metrics["mAP"] <= 1
    assert sorted(losses(short_run)) == [1, 2, 3, 4, 5, 6]
    latest, previous = load_checkpoint(short_run / "checkpoint.pt"), load_checkpoint(short_run / "checkpoint.prev.pt")
    assert (latest["iteration"], previous["iteration"]) == (6, 3)
    assert set(latest) >= {"networks", "optimizers", "schedulers", "scaler", "rng", "config", "format_version"}
    assert not list(short_run.glob(".*.tmp")), "a temporary checkpoint file was left behind"


def test_loss_decreases(tiny_root, tmp_path):
    # 4 identities, no dropout, no crop: 60 iterations bring the loss down. Batch-8 BatchNorm makes single losses
    # noisy: over 30 iterations the last 5 ranged from 0.81x to 1.04x the first 5 over seeds 0-4; here the mean of
    # the last 10 measured 0.48x to 0.74x the first 5 over seeds 0-3, fused optimizers or not.
    out = tmp_path / "fit"
    assert main(tiny_args(tiny_root, out, "--iters", "60", "--ckpt-every", "0", "--dropout", "0",
                          "--lr", "0.003", "--pad", "0", "--backbone-width", "8")) == 0
    values = list(losses(out).values())
    first, last = sum(values[:5]) / 5, sum(values[-10:]) / 10
    assert last < 0.85 * first, (first, last)


def test_resume_continues_exactly(short_run, tmp_path):
    # the uninterrupted run kept its iteration-3 checkpoint as checkpoint.prev.pt: resume a copy of it from there
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(short_run / "checkpoint.prev.pt", resumed / "checkpoint.pt")
    assert main(["baseline", "--out", str(resumed), "--resume"]) == 0
    full, again = losses(short_run), losses(resumed)
    assert sorted(again) == [4, 5, 6]
    # iteration 3 ended mid-epoch (2 batches per epoch here): the data order, dropout draws, optimizer,
    # augmentation generator and schedule must all continue exactly, so the losses match bit for bit
    assert [again[i] for i in (4, 5, 6)] == [full[i] for i in (4, 5, 6)]
    a = load_checkpoint(short_run / "checkpoint.pt")["networks"]["model"]
    b = load_checkpoint(resumed / "checkpoint.pt")["networks"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_moved_run_never_writes_into_the_folder_it_came_from(short_run, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(short_run, moved)
    before = {p.name: p.read_bytes() for p in short_run.iterdir() if p.is_file()}
    assert main(["baseline", "--resume", str(moved), "--iters", "8"]) == 2
    err = capsys.readouterr().err
    assert f"written by the run in {short_run}" in err and f"--out {moved}" in err
    assert {p.name: p.read_bytes() for p in short_run.iterdir() if p.is_file()} == before
    # as the message says: --out continues the copy where it is
    assert main(["baseline", "--resume", str(moved), "--out", str(moved), "--iters", "8"]) == 0
    assert json.loads((moved / "metrics.json").read_text())["iterations"] == 8
    assert {p.name: p.read_bytes() for p in short_run.iterdir() if p.is_file()} == before


def test_a_run_with_a_relative_out_resumes_from_another_working_directory(tiny_root, tmp_path, monkeypatch):
    # config.json keeps --out as given (runs/rel, relative to where the run started): found again through the path
    # of the checkpoint, which still lies in it, not taken for a moved run
    (tmp_path / "start").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    assert main(tiny_args(tiny_root, "runs/rel", "--iters", "2", "--ckpt-every", "1")) == 0
    run = tmp_path / "start" / "runs" / "rel"
    monkeypatch.chdir(tmp_path)
    assert main(["baseline", "--resume", str(run), "--iters", "3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start"]  # nothing written relative to the new directory


def test_resume_with_a_different_network_width_names_the_option(short_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(short_run, run)
    width = load_checkpoint(run / "checkpoint.pt")["config"]["backbone_width"]
    assert main(["baseline", "--resume", str(run), "--out", str(run), "--backbone-width", str(2 * width)]) == 2
    err = capsys.readouterr().err
    assert "error: the checkpoint's model does not fit the network these options build" in err
    assert f"--backbone-width {2 * width} (the checkpoint's: {width})" in err and "Traceback" not in err


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_survives(short_run, tmp_path, capsys):
    run = tmp_path / "broken"
    shutil.copytree(short_run, run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["baseline", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(run / "checkpoint.pt") in err and "corrupted or truncated" in err
    assert f"pass --resume {run / 'checkpoint.prev.pt'}" in err
    assert load_checkpoint(run / "checkpoint.prev.pt")["iteration"] == 3
    # and the previous one resumes
    assert main(["baseline", "--out", str(run), "--resume", str(run / "checkpoint.prev.pt")]) == 0
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 6


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_interrupt_checkpoints_the_iteration_and_resumes_exactly(short_run, tiny_root, tmp_path, monkeypatch, capsys,
                                                                  signal_name):
    import os
    import signal

    from reidfast.train.baseline import Baseline
    real_step = Baseline.train_step
    signum = getattr(signal, signal_name)
    handler_before = signal.getsignal(signum)

    def step_interrupted_during_the_4th(self, batch, it):
        if it == 3:
            os.kill(os.getpid(), signum)  # Ctrl-C (or a scheduler's SIGTERM) while the step runs
        return real_step(self, batch, it)

    monkeypatch.setattr(Baseline, "train_step", step_interrupted_during_the_4th)
    out = tmp_path / "interrupted"
    assert main(tiny_args(tiny_root, out, "--iters", "6", "--ckpt-every", "3")) == 128 + signum
    err = capsys.readouterr().err
    assert (f"interrupted by {signal_name}: stopped after iteration 4; checkpoint written to "
            f"{out / 'checkpoint.pt'}") in err
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 4 and not (out / "metrics.json").exists()
    assert signal.getsignal(signum) == handler_before  # the loop's handler is gone again
    # the checkpointed iteration continues exactly as the uninterrupted run (short_run: same flags)
    monkeypatch.setattr(Baseline, "train_step", real_step)
    assert main(tiny_args(tiny_root, out, "--iters", "6", "--ckpt-every", "3", "--resume")) == 0
    full, again = losses(short_run), losses(out)
    assert [again[i] for i in (5, 6)] == [full[i] for i in (5, 6)]
    a = load_checkpoint(short_run / "checkpoint.pt")["networks"]["model"]
    b = load_checkpoint(out / "checkpoint.pt")["networks"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_before_the_last_checkpoint_is_overwritten(tiny_root, tmp_path, monkeypatch, capsys):
    from reidfast.train.baseline import Baseline
    real_step = Baseline.train_step

    def step_that_diverges_at_4(self, batch, it):
        out = real_step(self, batch, it)
        if it == 3:  # the 4th iteration leaves a NaN weight, as an exploding update would
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Baseline, "train_step", step_that_diverges_at_4)
    out = tmp_path / "diverged"
    assert main(tiny_args(tiny_root, out, "--iters", "9", "--ckpt-every", "3")) == 2
    err = capsys.readouterr().err
    assert "training diverged: the weights of model hold NaN or Inf at iteration 6" in err
    assert f"The last checkpoint ({out / 'checkpoint.pt'}, iteration 3) is kept" in err
    kept = load_checkpoint(out / "checkpoint.pt")
    assert kept["iteration"] == 3 and not (out / "checkpoint.prev.pt").exists()
    assert all(t.isfinite().all() for t in kept["networks"]["model"].values() if t.is_floating_point())
    assert not (out / "metrics.json").exists()
    # the kept checkpoint resumes (with the real step) to the end
    monkeypatch.setattr(Baseline, "train_step", real_step)
    assert main(tiny_args(tiny_root, out, "--iters", "9", "--ckpt-every", "3", "--resume")) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 9


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(short_run, tmp_path, monkeypatch):
    import errno
    import os

    from reidfast.train.checkpoint import CheckpointError, save_checkpoint
    run = tmp_path / "full-disk"
    shutil.copytree(short_run, run)
    before = (run / "checkpoint.pt").read_bytes(), (run / "checkpoint.prev.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match=f"could not write a checkpoint in {run} .No space left on device.; "
                                              f"{run / 'checkpoint.pt'} is unchanged"):
        save_checkpoint({"iteration": 7}, run)
    assert ((run / "checkpoint.pt").read_bytes(), (run / "checkpoint.prev.pt").read_bytes()) == before
    assert not list(run.glob(".*.tmp")), "the partial file was left behind"


def test_a_new_run_does_not_write_over_an_existing_one(short_run, tiny_root, tmp_path, capsys):
    run = tmp_path / "existing"
    shutil.copytree(short_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    assert main(tiny_args(tiny_root, run, "--iters", "1")) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a baseline run" in err and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main(tiny_args(tiny_root, run, "--iters", "1", "--overwrite")) == 0
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 1
    (tmp_path / "a-file").write_text("")
    assert main(tiny_args(tiny_root, tmp_path / "a-file", "--iters", "1")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(short_run, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    assert main(["baseline", "--out", str(tmp_path), "--resume"]) == 2
    assert f"--resume {tmp_path / 'checkpoint.pt'}: not a checkpoint" in capsys.readouterr().err
    # a run's config.json given where its checkpoint goes
    assert main(["baseline", "--resume", str(short_run / "config.json"), "--out", str(tmp_path)]) == 2
    assert f"--resume {short_run / 'config.json'}: not a checkpoint" in capsys.readouterr().err


def test_resuming_a_finished_run_writes_nothing_and_a_longer_length_trains_on(short_run, tmp_path, capsys):
    run = tmp_path / "finished"
    shutil.copytree(short_run, run)
    files = ("checkpoint.pt", "checkpoint.prev.pt", "log.jsonl", "metrics.json", "config.json")
    before = {name: (run / name).read_bytes() for name in files}
    assert main(["baseline", "--out", str(run), "--resume"]) == 0
    assert "this run finished at iteration 6; nothing to train" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in files} == before
    # a length below the checkpoint's is refused, before anything is written
    assert main(["baseline", "--out", str(run), "--resume", "--iters", "4"]) == 2
    assert "--iters 4 ends before iteration 6, which the checkpoint has reached" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in files} == before
    # a longer one continues the run
    assert main(["baseline", "--out", str(run), "--resume", "--iters", "8"]) == 0
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 8
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_the_first_log_line_after_a_resume_averages_the_same_iterations(tiny_root, tmp_path):
    # logged every 4 iterations, checkpointed every 3: the checkpoint at 3 holds iterations 1-3 of the window that
    # ends at 4, and the resumed run's first line must average 1-4 as the uninterrupted run's does
    full = tmp_path / "full"
    assert main(tiny_args(tiny_root, full, "--iters", "8", "--ckpt-every", "3", "--log-every", "4")) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / "checkpoint.prev.pt", resumed / "checkpoint.pt")  # iteration 6: window holds 5 and 6
    assert load_checkpoint(resumed / "checkpoint.pt")["iteration"] == 6
    assert main(["baseline", "--out", str(resumed), "--resume"]) == 0
    assert losses(resumed) == {8: losses(full)[8]}


def test_a_new_run_over_an_old_one_starts_its_own_log(short_run, tiny_root, tmp_path):
    run = tmp_path / "overwritten"
    shutil.copytree(short_run, run)
    assert main(tiny_args(tiny_root, run, "--iters", "2", "--overwrite")) == 0
    assert sorted(losses(run)) == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 2
    # its checkpoints are its own: no earlier run's kept as the fallback a corrupted checkpoint points to
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2
    assert not (run / "checkpoint.prev.pt").exists()
    assert main(["baseline", "--out", str(run), "--resume", "--iters", "3", "--ckpt-every", "1"]) == 0
    assert load_checkpoint(run / "checkpoint.prev.pt")["iteration"] == 2  # from here on, the previous is kept


def test_a_test_image_that_is_not_an_image_stops_the_run_before_training(tiny_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    bad = sorted((data / "bounding_box_test").glob("*.jpg"))[0]
    bad.write_text("not a picture")  # a stray file under an image's name
    out = tmp_path / "run"
    assert main(tiny_args(data, out, "--iters", "2")) == 2
    err = capsys.readouterr().err
    assert f"1 gallery image(s) cannot be read as images: {bad}" in err
    assert not out.exists()


def test_a_diverged_loss_is_logged_as_strict_json(tmp_path):
    from reidfast.train.run_log import RunLog
    log = RunLog(tmp_path, enabled=True)
    log.write({"it": 1, "loss": float("nan"), "lr": float("inf"), "loss_id": 0.5})
    log.close()
    line = (tmp_path / "log.jsonl").read_text().strip()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert record == {"it": 1, "loss": None, "lr": None, "loss_id": 0.5}


def test_log_records_eval_and_checkpoints(short_run):
    records = read_log(short_run)
    assert [r["it"] for r in records if "eval/rank1" in r] == [4, 6]  # --eval-every 4, and the final evaluation
    assert [r["it"] for r in records if "checkpoint" in r] == [3, 6]


def test_the_learning_rate_follows_the_warm_up_and_the_step_decay(tiny_root, tmp_path):
    # the trainer's schedule, not only the schedule class: linear warm-up over 4 iterations, x0.1 from iteration 6
    # (0.75 of 8), and the backbone's lr a fixed multiple of the head's
    out = tmp_path / "lr"
    assert main(tiny_args(tiny_root, out, "--iters", "8", "--ckpt-every", "0", "--lr", "0.1", "--warmup-iters", "4",
                          "--lr-decay-at", "0.75", "--lr-gamma", "0.1", "--backbone-lr-mult", "0.5")) == 0
    logged = {r["it"]: r["lr/sgd"] for r in read_log(out) if "lr/sgd" in r}
    # logged after iteration it (1-based), once the scheduler has stepped: the lr of the next iteration, index it
    want = {it: 0.1 * min(1.0, (it + 1) / 4) * 0.1 ** (it >= 6) for it in range(1, 9)}
    assert logged.keys() == want.keys()
    for it in want:
        assert logged[it] == pytest.approx(want[it], rel=1e-12), it
    backbone, head = load_checkpoint(out / "checkpoint.pt")["optimizers"]["sgd"]["param_groups"]
    assert head["lr"] == pytest.approx(want[8]) and backbone["lr"] == pytest.approx(0.5 * want[8])
