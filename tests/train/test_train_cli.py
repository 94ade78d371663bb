import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidfast.train.__main__ import main
from reidfast.train.config import ConfigError, resolve_config
from reidfast.train.baseline import Baseline

from .conftest import tiny_args

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--amp", "fp8"])
    assert exc.value.code == 2 and "--amp" in capsys.readouterr().err


def test_iters_and_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["--iters", "3", "--epochs", "2"])
    assert "not allowed with" in capsys.readouterr().err


def test_nonpositive_iters(tmp_path, capsys):
    assert main(["--iters", "0", "--out", str(tmp_path)]) == 2
    assert "--iters must be >= 1, got 0" in capsys.readouterr().err


def test_nan_and_negative_options(tmp_path, capsys):
    assert main(["--lr", "nan", "--out", str(tmp_path)]) == 2
    assert "--lr must be a finite number, got nan" in capsys.readouterr().err
    assert main(["dgnet", "--gen-lr", "-0.1", "--out", str(tmp_path)]) == 2
    assert "--gen-lr must be >= 0 (a learning rate), got -0.1" in capsys.readouterr().err
    assert main(["dgnet", "--r1-w", "inf", "--out", str(tmp_path)]) == 2
    assert "--r1-w must be a finite number, got inf" in capsys.readouterr().err


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    import shutil
    return Path(shutil.copytree(tiny_root, tmp_path / "data"))


def test_misnamed_image_is_an_error_unless_skipped(tiny_copy, tmp_path, capsys):
    first = sorted((tiny_copy / "query").glob("*.jpg"))[0]
    (tiny_copy / "query" / "copy of a query.jpg").write_bytes(first.read_bytes())
    assert main(tiny_args(tiny_copy, tmp_path / "r", "--iters", "1")) == 2
    err = capsys.readouterr().err
    assert "copy of a query.jpg" in err and "--skip-misnamed" in err
    assert main(tiny_args(tiny_copy, tmp_path / "r", "--iters", "1", "--skip-misnamed")) == 0


def test_unreadable_image_in_a_worker_is_one_error_line(tiny_copy, tmp_path, capsys):
    for path in (tiny_copy / "bounding_box_train").glob("*.jpg"):  # every training image: the first batch fails
        path.write_bytes(b"truncated")
    assert main(tiny_args(tiny_copy, tmp_path / "r", "--iters", "1", "--workers", "1")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bounding_box_train" in last and "cannot be read as an image" in last
    assert "Traceback" not in err  # the worker's traceback is not printed


def test_batch_of_one_and_zero_width_are_clear_errors(tiny_root, tmp_path, capsys):
    assert main(tiny_args(tiny_root, tmp_path / "r", "--batch-size", "1", "--iters", "1")) == 2
    assert "baseline: batch_size must be at least 2 (its BatchNorm layers need two samples" in capsys.readouterr().err
    assert main(["dgnet", "--dataset", "synthetic", "--data-root", str(tiny_root), "--gan-width", "0", "--out",
                 str(tmp_path / "d"), "--device", "cpu", "--height", "64", "--width", "32", "--backbone-width", "4",
                 "--pretrained", "none", "--teacher", str(tmp_path / "none")]) == 2
    assert "--gan-width must be > 0, got 0.0" in capsys.readouterr().err
    assert main(tiny_args(tiny_root, tmp_path / "big", "--batch-size", "100000", "--iters", "1")) == 2
    assert "--batch-size 100000: the training set has" in capsys.readouterr().err


def test_out_of_memory_is_one_error_line(tiny_root, tmp_path, monkeypatch, capsys):
    import torch

    from reidfast.train.baseline import Baseline

    def step_out_of_memory(self, batch, it):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Baseline, "train_step", step_out_of_memory)
    assert main(tiny_args(tiny_root, tmp_path / "r", "--iters", "1")) == 2
    err = capsys.readouterr().err
    assert "error: out of device memory (CUDA out of memory. Tried to allocate 2.00 GiB). Lower --batch-size" in err
    assert "Traceback" not in err


def test_missing_data_root_names_it(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["baseline", "--data-root", str(missing), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "market1501" in err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "market-1502", "--data-root", "."], "--dataset 'market-1502': no such dataset; one of cuhk03, "),
    (["--backend", "Reference"], "--backend must be one of auto, cuda, triton, cpu, reference, got 'Reference'"),
])
def test_an_unknown_name_names_its_option(tmp_path, capsys, argv, message):
    assert main(["baseline", "--out", str(tmp_path / "r"), "--device", "cpu", *argv]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_dataset_option_the_reader_does_not_take_is_named(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["baseline", "--data-root", str(tmp_path), "--dataset", "market1501", "--dataset-option",
                 "variant=labeled", "--out", str(out), "--device", "cpu"]) == 2
    assert ("error: --dataset-option variant=labeled: the market1501 reader takes no option 'variant'"
            in capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("argv, name", [
    (["--out", "R", "dgnet", "--teacher", "T"], "dgnet"),  # the flags' values are not the method
    (["--out=R", "fdgan"], "fdgan"),
    (["--lr-gamma", "-1", "sagan"], "sagan"),  # a value that looks like a flag
    (["--dataset-option", "a=1", "b=2", "--iters", "3", "sagan"], "sagan"),  # a flag of several values
    (["--device", "cpu"], "baseline"),
    ([], "baseline"),
])
def test_the_method_may_stand_anywhere_among_the_flags(argv, name):
    from reidfast.train.__main__ import _method_name
    assert _method_name(argv) == name


def test_help_after_flags_is_the_named_methods(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--iters", "2", "fdgan", "--help"])
    assert done.value.code == 0 and "--did-lr3" in capsys.readouterr().out  # one of FD-GAN's own flags


def test_a_missing_pretrained_file_is_a_one_line_error(tiny_root, tmp_path, capsys):
    missing = tmp_path / "resnet50.pth"
    assert main(tiny_args(tiny_root, tmp_path / "r", "--backbone-width", "64", "--pretrained", str(missing))) == 2
    err = capsys.readouterr().err
    assert f"error: --pretrained {missing}: no such file" in err and "Traceback" not in err


def test_an_image_size_too_small_for_the_synthetic_data_names_the_options(tmp_path, capsys):
    assert main(["baseline", "--height", "8", "--width", "4", "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert ("error: --height 8 --width 4: the built-in synthetic data is generated at the run's image size, at least "
            "32x16") in capsys.readouterr().err


@pytest.mark.parametrize("dataset", [[], ["--dataset", "synthetic"]])
def test_a_dataset_option_for_the_built_in_synthetic_data_is_refused(tmp_path, capsys, dataset):
    out = tmp_path / "r"
    assert main(["baseline", *dataset, "--dataset-option", "ids=50", "--out", str(out), "--device", "cpu"]) == 2
    assert ("error: --dataset-option ids=50: the built-in synthetic data takes no reader options"
            in capsys.readouterr().err)
    assert not out.exists()


def test_another_datasets_folder_without_dataset_says_to_name_it(tmp_path, capsys):
    duke = tmp_path / "DukeMTMC-reID"  # Duke's layout, Duke's naming: read as Market-1501 when not named
    for split, names in (("bounding_box_train", ["0001_c2_f0046182.jpg", "0005_c8_f0000001.jpg"]),
                         ("query", ["0003_c1_f0000002.jpg"]), ("bounding_box_test", ["0003_c5_f0000003.jpg"])):
        (duke / split).mkdir(parents=True)
        for name in names:
            (duke / split / name).touch()
    assert main(["baseline", "--data-root", str(duke), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"No --dataset was given, so {duke} was read as market1501" in err and "dukemtmc" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    assert main(["baseline", "--out", str(tmp_path), "--resume"]) == 2
    assert f"no checkpoint at {tmp_path / 'checkpoint.pt'}" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('overwrite = "no"', "overwrite must be true or false, got 'no'"),
    ("iters = true", "iters must be an integer, got True"),
    ('preset = "cpu_quick"', "preset must be one of auto, paper, cpu-quick, got 'cpu_quick'"),
    ('lr = "x"', "lr must be a number, got 'x'"),
    ("lr_decay_at = 0.5", "lr_decay_at must be a list, got 0.5"),
    ('ap_mode = "x"', "ap_mode must be one of market, torchreid, got 'x'"),
    ("data_root = 5", "data_root must be a string, got 5"),
    ("backbone_lr_mult = -2", "backbone_lr_mult: expected auto or a finite number >= 0, got '-2'"),
])
def test_config_values_get_the_checks_of_their_flags(tmp_path, capsys, line, message):
    # checked before anything is read or written: a run folder that holds a run is not touched
    config = tmp_path / "c.toml"
    config.write_text(line + "\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert f"error: --config {config}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr-gamma", "-1"], "--lr-gamma must be > 0"),
    (["--lr-decay-at", "1.5"], "--lr-decay-at must be a fraction of the run, in [0, 1]"),
    (["--warmup-iters", "-1"], "--warmup-iters must be >= 0"),
    (["--threads", "-2"], "--threads must be >= 1"),
    (["--label-smoothing", "2"], "--label-smoothing must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["sagan", "--adapt-iters", "-5"], "--adapt-iters must be >= 1"),
    (["sagan", "--stm-lr-mult", "-1"], "--stm-lr-mult must be >= 0"),
    (["fdgan", "--stage-iters", "-1", "1", "1"], "--stage-iters must be >= 1"),
    (["dgnet", "--recon-x-w", "-5"], "--recon-x-w must be >= 0"),
    (["dgnet", "--encoder-again", "1.5"], "--encoder-again must be a probability, in [0, 1], got 1.5"),
    (["dgnet", "--encoder-again", "-0.1"], "--encoder-again must be a probability, in [0, 1], got -0.1"),
])
def test_out_of_range_options_are_refused_before_training(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_a_backend_that_cannot_run_here_is_refused_before_training(tmp_path, capsys):
    assert main(["--backend", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "--backend cuda: reidfast backend 'cuda' cannot run" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (interpreted on the CPU)")
def test_a_backend_without_a_ranking_kernel_still_evaluates(tiny_root, tmp_path):
    # triton has no rank_eval: the evaluation after training ranks on auto instead of failing there
    assert main(tiny_args(tiny_root, tmp_path / "r", "--backend", "triton", "--iters", "1")) == 0
    assert "mAP" in json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_cpu_with_an_index_is_the_cpu():
    from reidfast.train.__main__ import _runs_on_cpu
    from reidfast.device import resolve_device
    assert resolve_device("cpu:3") == torch.device("cpu")
    # the automatic preset's test (cpu:0 used to pick the paper's 256x128 full-width settings)
    assert _runs_on_cpu("cpu") and _runs_on_cpu("cpu:0") and not _runs_on_cpu("cuda:0")
    assert _runs_on_cpu("auto") == (not torch.cuda.is_available())


def test_config_unknown_key_and_bad_syntax(tmp_path, capsys):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("batch_size = 8\nlearning_rate = 0.1\n")
    assert main(["--config", str(bad_key), "--out", str(tmp_path / "r")]) == 2
    assert "unknown option(s) learning_rate" in capsys.readouterr().err
    bad_syntax = tmp_path / "b.json"
    bad_syntax.write_text("{batch_size: 8")
    assert main(["--config", str(bad_syntax), "--out", str(tmp_path / "r")]) == 2
    assert f"{bad_syntax} is not valid JSON" in capsys.readouterr().err


def test_layers_paper_preset_file_flags():
    base = dict(Baseline.defaults)
    cpu = resolve_config(base, Baseline.presets, {}, {}, device_is_cpu=True)
    assert cpu["preset"] == "cpu-quick" and cpu["height"] == 64 and cpu["iters"] == 600 and cpu["epochs"] is None
    paper = resolve_config(base, Baseline.presets, {}, {}, device_is_cpu=False)
    assert paper["preset"] == "paper" and paper["height"] == 256 and paper["epochs"] == 60 and paper["lr"] == 0.05
    # the file overrides the preset, a flag overrides the file; a run length given replaces the other one
    cfg = resolve_config(base, Baseline.presets, {"batch_size": 16, "epochs": 3}, {"batch_size": 8}, True)
    assert cfg["batch_size"] == 8 and cfg["epochs"] == 3 and cfg["iters"] is None
    with pytest.raises(ConfigError):
        resolve_config(base, Baseline.presets, {"iters": 3, "epochs": 3}, {}, True)


def test_the_backend_variable_reaches_the_trainers(monkeypatch):
    # REIDFAST_BACKEND chooses the ops' backend in training as it does outside (it was overridden by --backend's
    # default); --backend, in a file or on the command line, still wins
    base = dict(Baseline.defaults)
    monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    assert resolve_config(base, Baseline.presets, {}, {}, True)["backend"] == "reference"
    assert resolve_config(base, Baseline.presets, {"backend": "cpu"}, {}, True)["backend"] == "cpu"
    assert resolve_config(base, Baseline.presets, {}, {"backend": "auto"}, True)["backend"] == "auto"
    monkeypatch.setenv("REIDFAST_BACKEND", "refrence")
    with pytest.raises(ConfigError, match="the environment variable REIDFAST_BACKEND must be one of .* got 'refrence'"):
        resolve_config(base, Baseline.presets, {}, {}, True)
    monkeypatch.delenv("REIDFAST_BACKEND")
    assert resolve_config(base, Baseline.presets, {}, {}, True)["backend"] == "auto"



@pytest.mark.parametrize("values, message", [
    ({"height": 64.0}, "--height must be an integer >= 1, got 64.0"),
    ({"batch_size": True}, "--batch-size must be an integer >= 1, got True"),
    ({"ckpt_every": -1}, "--ckpt-every must be >= 0, got -1"),
    ({"log_every": "often"}, "--log-every must be an integer >= 0, got 'often'"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be >= 1, got 0"),
    ({"lr": -0.5}, "--lr must be >= 0 (a learning rate), got -0.5"),
])
def test_every_layer_gets_the_range_rules(values, message):
    """Values that no parser typed (a resumed run's saved configuration, a preset) get the flags' rules."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(dict(Baseline.defaults), Baseline.presets, values, {}, True)

def test_toml_config_is_used(tiny_root, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("iters = 2\nbatch-size = 4\nckpt_every = 0\n")
    out = tmp_path / "r"
    assert main(tiny_args(tiny_root, out, "--config", str(config), "--batch-size", "8")) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["iters"] == 2 and saved["batch_size"] == 8 and saved["ckpt_every"] == 0


def test_ddp_two_processes_gloo(tiny_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "REIDFAST_DDP_BACKEND": "gloo"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           "-m", "reidfast.train", *tiny_args(tiny_root, out, "--iters", "3", "--ckpt-every", "2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 processes" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3


def test_cudnn_benchmark_flags_and_the_cpu_default():
    import torch
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    previous = torch.backends.cudnn.benchmark
    run = Run(dict(LOOP_DEFAULTS), torch.device("cpu"), 0, 1, log=lambda message: None)
    assert run.cudnn_benchmark is False and torch.backends.cudnn.benchmark is previous  # the CPU leaves it alone
    assert Run({**LOOP_DEFAULTS, "cudnn_benchmark": True}, torch.device("cpu"), 0, 1, print).cudnn_benchmark is True


def test_fused_optimizers_on_the_cpu_when_asked_with_the_same_update():
    import torch
    from reidfast.train.__main__ import build_parser
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    for fused, want in ((None, False), (False, False), (True, True)):  # the GPU default: test_gpu_training.py
        run = Run({**LOOP_DEFAULTS, "fused_optimizers": fused}, torch.device("cpu"), 0, 1, log=lambda message: None)
        assert run.fused_optimizers is want
        for cls, options in ((torch.optim.Adam, {}), (torch.optim.SGD, {"momentum": 0.9})):
            p, q = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
            q.data.copy_(p.data)
            opt, plain = run.optimizer(cls, [p], lr=0.1, **options), cls([q], lr=0.1, **options)
            assert bool(opt.defaults.get("fused")) is want
            for _ in range(3):  # the fused update is torch.optim's update
                p.grad = q.grad = torch.sin(p.detach() * 3)
                opt.step()
                plain.step()
            torch.testing.assert_close(p.detach(), q.detach())
    assert build_parser().parse_args(["--no-fused-optimizers"]).fused_optimizers is False
    assert build_parser().parse_args(["--fused-optimizers"]).fused_optimizers is True


def test_a_relative_data_root_is_saved_absolute_for_eval_elsewhere(tiny_copy, tmp_path, monkeypatch, capsys):
    """A run trained with a --data-root relative to the working directory is evaluated from another one."""
    from reidfast.eval.__main__ import main as eval_main
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "r"
    args = tiny_args(Path("data"), Path("r"), "--iters", "1")
    args[args.index("synthetic")] = "market1501"  # (a synthetic root that is missing would be generated anew)
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["data_root"] == str(tiny_copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(run), "--device", "cpu"]) == 0
    # the saved root gone (moved): the error says which flag gives the new place
    tiny_copy.rename(tmp_path / "moved")
    assert eval_main(["--checkpoint", str(run), "--device", "cpu"]) == 2
    assert "give --data-root DIR" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(run), "--device", "cpu", "--data-root", str(tmp_path / "moved")]) == 0
