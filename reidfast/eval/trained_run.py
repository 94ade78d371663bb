"""Evaluate a training run folder: rebuild its method from the checkpoint, extract features, rank, export.

    python -m reidfast.eval --checkpoint RUN_DIR [--dataset NAME --data-root DIR] [--export FILE.npz]
                            [--ranked-list FILE.png]

The dataset defaults to the one the run trained on (its config.json); the image size is always the run's.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .features import extract_features, labels, rank_features


def load_trained_method(run_dir: str | os.PathLike, device: torch.device, log=print):
    """(method, cfg) of a run folder's latest checkpoint (or a checkpoint file), networks in eval mode."""
    from ..train.checkpoint import load_checkpoint, resolve_checkpoint
    from ..train.loop import Run
    from ..train.methods import get_method
    path = resolve_checkpoint(run_dir, run_dir)
    state = load_checkpoint(path)
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


def evaluate_run(run_dir, dataset, device: torch.device, ap_mode: str = "market", metric: str = "cosine",
                 max_rank: int = 50, batch_size: int = 128, log=print):
    """(result, query_features, gallery_features, cfg) of a trained run on `dataset`."""
    method, cfg = load_trained_method(run_dir, device, log)
    common = dict(size=(cfg["height"], cfg["width"]), device=device, batch_size=batch_size,
                  channels_last=device.type == "cuda")
    qf = extract_features(method.embed, dataset.query, **common)
    gf = extract_features(method.embed, dataset.gallery, **common)
    result = rank_features(qf, gf, dataset.query, dataset.gallery, ap_mode=ap_mode, metric=metric,
                           max_rank=max_rank)
    return result, qf, gf, cfg


def export_features(path: str | os.PathLike, qf, gf, dataset) -> Path:
    """An .npz that ``python -m reidfast.eval --features`` reads (query_f, gallery_f, *_label, *_cam)."""
    q_pids, q_cams = labels(dataset.query)
    g_pids, g_cams = labels(dataset.gallery)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, query_f=qf.numpy(), gallery_f=gf.numpy(), query_label=q_pids, gallery_label=g_pids,
             query_cam=q_cams, gallery_cam=g_cams)
    return path
