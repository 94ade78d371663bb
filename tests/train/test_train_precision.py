"""The loop's precision and compilation switches, exercised on the CPU (the same code paths a GPU takes, with
the device type switched): bf16 autocast, fp16 autocast with a GradScaler (checkpointed), torch.compile."""
import json

import pytest
import torch

from reidfast.train.__main__ import main
from reidfast.train.checkpoint import load_checkpoint

from .conftest import read_log, tiny_args


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs_train_under_the_requested_precision(amp, tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / amp
    # what the training steps' convolutions compute in (not only what the log says)
    computed_in, conv_forward = set(), torch.nn.Conv2d.forward

    def recording_forward(self, x):
        y = conv_forward(self, x)
        if torch.is_grad_enabled():
            computed_in.add(y.dtype)
        return y

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording_forward)
    # 64x32 images: at the tiny default of 32x16, layer4's first 3x3 convolution sees a 2x1 map, and the CPU's bf16
    # convolution backward then gave NaN in some weight gradients in about half of the runs (torch 2.14, oneDNN)
    assert main(tiny_args(tiny_root, out, "--iters", "3", "--ckpt-every", "0", "--amp", amp, "--height", "64",
                          "--width", "32")) == 0
    assert f"amp {amp}" in capsys.readouterr().err
    assert computed_in == {{"bf16": torch.bfloat16, "fp16": torch.float16}[amp]}
    records = [r for r in read_log(out) if "loss" in r]
    assert len(records) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    state = load_checkpoint(out / "checkpoint.pt")
    if amp == "fp16":  # fp16 needs loss scaling; the scaler's state is part of the checkpoint
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None
    # the weights stay fp32 (autocast casts per op): a checkpoint loads into an fp32 model as is
    assert all(v.dtype == torch.float32 for k, v in state["networks"]["model"].items() if v.is_floating_point())
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3


def test_compiled_networks_train_like_eager_ones():
    # Run.wrap compiles a network when compile is on (the GPU default); compilation must not change the
    # mathematics: same outputs and gradients as the eager module, with the fused AdaIN op inside the graph.
    from reidfast.nn import AdaINResBlock
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = AdaINResBlock(4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x, w, b):
            return self.head(self.block(x, [w, b, w, b]).mean((2, 3)))

    torch.manual_seed(0)
    eager = Net()
    compiled_copy = Net()
    compiled_copy.load_state_dict(eager.state_dict())
    cfg = {**LOOP_DEFAULTS, "compile": True, "channels_last": False, "amp": "off", "device": "cpu"}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda m: None)
    assert run.compile
    compiled = run.wrap(compiled_copy)
    assert compiled is not compiled_copy  # an OptimizedModule around the network
    x, w, b = torch.randn(2, 4, 6, 5), torch.rand(2, 4) + 0.5, torch.randn(2, 4)
    for net in (eager, compiled):
        net(x, w, b).square().sum().backward()
    torch.testing.assert_close(compiled(x, w, b), eager(x, w, b), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled_copy.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_compiled_run_says_that_its_first_iteration_compiles(tiny_root, tmp_path, capsys, monkeypatch):
    # a silent first iteration of minutes reads as a hang; torch.compile is replaced by the identity to keep the
    # test short (the compiled path itself: test_compiled_networks_train_like_eager_ones)
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    assert main(tiny_args(tiny_root, tmp_path / "r", "--iters", "2", "--ckpt-every", "0", "--compile")) == 0
    err = capsys.readouterr().err
    assert "compile on" in err and "the first iteration compiles the networks" in err
    assert err.count("first iteration, compilation included:") == 1
    assert main(tiny_args(tiny_root, tmp_path / "eager", "--iters", "2", "--ckpt-every", "0", "--no-compile")) == 0
    assert "compilation included" not in capsys.readouterr().err


@pytest.mark.parametrize("mode, marks", [("reduce-overhead", 3), ("default", 0)])
def test_cuda_graph_runs_mark_each_iteration(mode, marks, tiny_root, tmp_path, monkeypatch):
    # Under CUDA graph trees a graph's outputs live until torch decides a new iteration has begun; a step of several
    # compiled calls and backwards needs the loop to say so, once per iteration (torch.compile is replaced by the
    # identity: CUDA graphs themselves need a GPU)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    assert main(tiny_args(tiny_root, tmp_path / mode, "--iters", "3", "--ckpt-every", "0", "--compile",
                          "--compile-mode", mode)) == 0
    assert len(calls) == marks


@pytest.mark.parametrize("method, stage, device, asked, expected", [
    ("sagan", "adapt", "cuda", "auto", "reduce-overhead"),  # its step waits on the host's launches (measured)
    ("sagan", "reid", "cuda", "auto", "default"),
    ("baseline", None, "cuda", "auto", "default"),
    ("dgnet", None, "cuda", "auto", "default"),
    ("sagan", "adapt", "cpu", "auto", "default"),  # CUDA graphs need a GPU
    ("sagan", "adapt", "cuda", "default", "default"),  # asked for: kept
    ("baseline", None, "cuda", "reduce-overhead", "reduce-overhead"),
])
def test_compile_mode_auto_is_the_methods_choice_on_a_gpu(method, stage, device, asked, expected):
    from reidfast.train import sagan
    from reidfast.train.loop import resolve_compile_mode
    from reidfast.train.methods import get_method
    cfg = {"compile_mode": asked, "current_stage": stage}
    assert resolve_compile_mode(cfg, get_method(method), torch.device(device)) == expected
    if method == "sagan":  # the classes the loop runs for its stages choose the same
        stage_cls = sagan.AdaptStage if stage == "adapt" else sagan.ReidStage
        assert resolve_compile_mode(cfg, stage_cls, torch.device(device)) == expected
    # a configuration saved before the option existed compiles in the default mode
    assert resolve_compile_mode({}, get_method(method), torch.device(device)) == "default"
    # under torchrun (DDP) auto keeps the default mode; a mode asked for is kept
    assert resolve_compile_mode(cfg, get_method(method), torch.device(device), world_size=2) == \
        (asked if asked != "auto" else "default")


def test_logged_losses_do_not_alias_the_step_outputs():
    # a CUDA graph's replay overwrites its previous outputs in place: the loss sums must hold copies
    from reidfast.train.loop import _LossWindow
    window = _LossWindow(0)
    loss = torch.tensor(2.0)
    window.add({"loss": loss})
    loss.fill_(100.0)  # the next replay
    window.add({"loss": torch.tensor(4.0)})
    assert window.means() == {"loss": 3.0}
