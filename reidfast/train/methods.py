"""Method name -> trainer class (imported on first use, so `--help` of one method does not import the others), and
the trained method of a run folder."""
from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import torch

METHODS = {"baseline": ("reidfast.train.baseline", "Baseline"), "dgnet": ("reidfast.train.dgnet", "DGNet"),
           "fdgan": ("reidfast.train.fdgan", "FDGAN"), "sagan": ("reidfast.train.sagan", "SAGAN")}
ALL_METHODS = tuple(METHODS)


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)


def load_trained_method(run_dir: str | os.PathLike, device: torch.device, log=print, flag: str = "--checkpoint"):
    """(method, cfg) of a run folder's latest checkpoint (or a checkpoint file), networks in eval mode. `flag`: the
    option that named the run, for the errors."""
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .loop import Run
    path = resolve_checkpoint(run_dir, run_dir, flag=flag)
    state = load_checkpoint(path, flag=flag)
    method_cls = get_method(state["method"])
    cfg = dict(state["config"])
    cfg.update(compile=False, channels_last=device.type == "cuda", pretrained="none", device=str(device))

    # a method's constructor reads only the training set's identity count from the dataset
    train_set = SimpleNamespace(**state["dataset"])
    run = Run(cfg, device, 0, 1, log=lambda message: None)
    method = method_cls(run, train_set)
    for name, module in method.networks.items():
        module.load_state_dict(state["networks"][name])
        module.eval()
    log(f"loaded {state['method']} from {path} (iteration {state['iteration']})")
    return method, cfg
