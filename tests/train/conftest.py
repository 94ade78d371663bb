import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reidfast.data.synthetic import generate

TINY_DATA = dict(ids=8, cameras=3, domain="a", seed=3, height=32, width=16)


class ConvolutionsOverTheBatch(TorchDispatchMode):
    """Records the shapes of the forward convolutions run inside whose input and weight both hold `batch` in the
    channel dimension: the form of autograd's second derivative of a convolution's input gradient (slow on GPUs;
    reidfast.nn.PenaltyConv2d avoids it). Choose a batch size no layer has as a channel count."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch, self.calls = batch, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight = args[0], args[1]
            if x.shape[1] == weight.shape[1] == self.batch and x.shape[0] != self.batch:
                self.calls.append((tuple(x.shape), tuple(weight.shape)))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def compiled_graphs(monkeypatch) -> list[str]:
    """torch.compile through a backend that generates no code and records, per graph dynamo hands it, the class
    name of the module compiled (a function's or method's own name); dynamo's caches are reset around the test."""
    graphs = []
    real_compile = torch.compile

    def counting_compile(module, **kwargs):
        def backend(gm, example_inputs):
            graphs.append(getattr(module, "__name__", type(module).__name__))
            return gm.forward
        return real_compile(module, backend=backend, dynamic=kwargs.get("dynamic"))

    monkeypatch.setattr(torch, "compile", counting_compile)
    torch._dynamo.reset()
    yield graphs
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic Market-format dataset (8 ids: 4 train, 4 test), generated once per session."""
    root = tmp_path_factory.mktemp("train-data") / "tiny"
    generate(root, **TINY_DATA)
    return root


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    """Flags for a seconds-long CPU run of the baseline on `root`: 32x16 images, width-4 ResNet-50, batch 8."""
    return ["baseline", "--dataset", "synthetic", "--data-root", str(root), "--out", str(out), "--device", "cpu",
            "--height", "32", "--width", "16", "--backbone-width", "4", "--batch-size", "8", "--workers", "0",
            "--pad", "2", "--pretrained", "none", "--log-every", "1", "--eval-batch-size", "64", *extra]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["it"]: r["loss"] for r in read_log(run_dir) if "loss" in r}
