"""Every trainer for a few iterations on a CUDA device with the GPU defaults (bf16 autocast, channels_last, the
CUDA kernels), at the tiny sizes of the CPU tests. A few compile there too (what only a GPU shows: CUDA
convolutions' layouts, CUDA graphs); bench/train_step.py compiles every method at full size. Skipped without a
GPU."""
import json
import math

import pytest
import torch

from reidfast.train.__main__ import main

from .conftest import read_log, tiny_args
from .test_dgnet import dgnet_args
from .test_fdgan import fdgan_args
from .test_sagan import domain_b, sagan_args  # noqa: F401  (domain_b is a fixture)

pytestmark = pytest.mark.gpu


def on_gpu(args):
    args = list(args)
    args[args.index("--device") + 1] = "cuda"
    return args + ["--amp", "bf16", "--no-compile"]


def finite_losses(folder):
    records = [r for r in read_log(folder) if "loss" in r]
    assert records, f"no losses logged in {folder}"
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
    return records


def test_baseline_on_the_gpu(tiny_root, tmp_path, capsys):
    assert main(on_gpu(tiny_args(tiny_root, tmp_path / "b", "--iters", "3"))) == 0
    assert "amp bf16" in capsys.readouterr().err
    finite_losses(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["iterations"] == 3


def test_dgnet_on_the_gpu(tiny_root, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(on_gpu(tiny_args(tiny_root, teacher, "--iters", "2", "--last-stride", "1"))) == 0
    assert main(on_gpu(dgnet_args(tiny_root, tmp_path / "d", "--teacher", str(teacher), "--iters", "5"))) == 0
    records = finite_losses(tmp_path / "d")
    assert records[-1]["w/prim"] > 0  # the last iterations run with every loss on


def test_dgnet_compiled_under_cuda_graphs_on_the_gpu(tiny_root, tmp_path, capsys):
    # DG-Net's three whole-step graphs compiled with channels_last and bf16 as on a GPU and replayed as CUDA graphs
    # (bench/train_step.py's cudagraphs configuration): the generator pass's backward waits through D's step, and
    # the warm-up's end (iteration WARM) makes the G + Ea losses' second graph
    teacher = tmp_path / "teacher"
    assert main(on_gpu(tiny_args(tiny_root, teacher, "--iters", "2", "--last-stride", "1"))) == 0
    args = on_gpu(dgnet_args(tiny_root, tmp_path / "d", "--teacher", str(teacher), "--iters", "5"))
    assert main(args[:-1] + ["--compile", "--compile-mode", "reduce-overhead"]) == 0
    assert "compile on (reduce-overhead mode)" in capsys.readouterr().err
    records = finite_losses(tmp_path / "d")
    assert records[0]["w/prim"] == 0 and records[-1]["w/prim"] > 0 and records[-1]["cycle"] > 0
    assert len({r["loss"] for r in records}) == len(records)  # each step's own losses, not a replay's outputs


def test_fdgan_on_the_gpu(tiny_root, tmp_path):
    assert main(on_gpu(fdgan_args(tiny_root, tmp_path / "f", "--stage-iters", "2", "2", "2"))) == 0
    for stage in (1, 2, 3):
        finite_losses(tmp_path / "f" / f"stage{stage}")


def test_compiled_fdgan_stage3_on_the_gpu(tiny_root, tmp_path):
    # Stage III holds every FD-GAN network; compiled here at tiny sizes with channels_last and bf16, as on a GPU. A
    # layout error in a compiled backward shows at any size (CUDA convolutions pick their output layouts unlike the
    # CPU's: a transposed conv on a 1x1 input once failed the first step), without the minutes of a full-size compile.
    assert main(on_gpu(fdgan_args(tiny_root, tmp_path / "f", "--stage-iters", "1", "1", "1"))) == 0
    compiled = on_gpu(fdgan_args(tiny_root, tmp_path / "c", "--stage", "3", "--init", str(tmp_path / "f" / "stage2"),
                                 "--stage-iters", "1", "1", "2"))
    assert main(compiled[:-1] + ["--compile"]) == 0
    finite_losses(tmp_path / "c" / "stage3")


def test_sagan_on_the_gpu(tiny_root, domain_b, tmp_path):  # noqa: F811
    assert main(on_gpu(sagan_args(tiny_root, domain_b, tmp_path / "s"))) == 0
    finite_losses(tmp_path / "s" / "reid")
    assert json.loads((tmp_path / "s" / "stages.json").read_text())["status"]["reid"] == "done"


def test_sagan_adaptation_under_cuda_graphs_on_the_gpu(tiny_root, domain_b, tmp_path, capsys):  # noqa: F811
    # --compile-mode auto replays SA-GAN's adaptation step as CUDA graphs on a GPU (Method.cuda_compile_mode): the
    # whole stage (steps, logged losses, a checkpoint and the sample grid in between) at tiny sizes, as
    # bench/train_step.py measured the step at full size
    args = on_gpu(sagan_args(tiny_root, domain_b, tmp_path / "s", "--stage", "adapt"))
    assert main(args[:-1] + ["--compile"]) == 0
    assert "compile on (reduce-overhead mode)" in capsys.readouterr().err
    finite_losses(tmp_path / "s" / "adapt")
    records = {r["it"]: r for r in read_log(tmp_path / "s" / "adapt") if "cyc" in r}
    assert sorted(records) == [1, 2, 3, 4]
    # each step logged its own losses, not a replay's overwritten outputs
    assert len({r["loss"] for r in records.values()}) == 4


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-cudnn-benchmark"], False)])
def test_cudnn_benchmark_is_on_by_default_on_the_gpu(tiny_root, tmp_path, flag, expected):
    previous = torch.backends.cudnn.benchmark
    try:
        assert main(on_gpu(tiny_args(tiny_root, tmp_path / "b", "--iters", "1", *flag))) == 0
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.backends.cudnn.benchmark = previous


def test_optimizers_are_fused_on_the_gpu_unless_asked_not_to():
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    params = [torch.zeros(2, device="cuda", requires_grad=True)]
    defaults = {**LOOP_DEFAULTS, "cudnn_benchmark": False}  # torch's own default: no process-wide change
    run = Run(defaults, torch.device("cuda"), 0, 1, log=lambda message: None)
    assert run.optimizer(torch.optim.SGD, params, lr=0.1, momentum=0.9, nesterov=True).defaults["fused"]
    assert run.optimizer(torch.optim.Adam, params, lr=0.1).defaults["fused"]
    plain = Run({**defaults, "fused_optimizers": False}, torch.device("cuda"), 0, 1, log=lambda message: None)
    assert not plain.optimizer(torch.optim.Adam, params, lr=0.1).defaults["fused"]
