"""Test-time features of query and gallery images, and their evaluation through ``reidfast.ops.rank_eval``.

Features are the mean of the image's and its horizontal mirror's embeddings, L2-normalized (the re-id
baseline's test protocol); with unit features euclidean and cosine distances rank the gallery identically.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, ReidDataset, Sample, normalize
from ..data.loader import default_num_workers

Embed = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def extract_features(embed: Embed, samples: Sequence[Sample], size: tuple[int, int], device: torch.device,
                     batch_size: int = 128, flip: bool = True, workers: int | None = None,
                     channels_last: bool = False, l2_normalize: bool = True,
                     resize_filter: str = "bilinear") -> torch.Tensor:
    """(N, D) float32 features of `samples` on the CPU: flip-averaged (the mean of the two), L2-normalized
    unless `l2_normalize` is False; images resized with `resize_filter` (the method's, as in training).

    Decoding the images is most of the time of an evaluation (a Market-1501 test set is 19k JPEGs): `workers`
    loader processes decode them while the network runs: by default the cores less one (at most 8), and none
    for a set that fits one batch, where starting them would cost more than they save."""
    if workers is None:
        workers = default_num_workers() if len(samples) > batch_size else 0
    loader = DataLoader(ImageDataset(samples, size=size, resize_filter=resize_filter), batch_size=batch_size,
                        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # leaves the global RNG alone
    chunks = []
    bar = None
    if len(samples) > 10 * batch_size:  # sets that take a while (Market-1501's gallery: 124 batches of 128)
        from ..progress import ProgressBar
        bar = ProgressBar(len(samples), label="features ", unit="images")
    start, done = time.perf_counter(), 0
    for batch in loader:
        images = normalize(batch["image"].to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feature = embed(images).float()
        if flip:
            feature = 0.5 * (feature + embed(images.flip(3)).float())
        if l2_normalize:
            feature = torch.nn.functional.normalize(feature, dim=1)
        chunks.append(feature)  # kept on the device: a copy per batch would make the host wait for each one
        done += feature.shape[0]
        if bar is not None:
            bar.update(done, {}, done / (time.perf_counter() - start), force=done == len(samples))
    if bar is not None:
        bar.close()
    return torch.cat(chunks).cpu()


def labels(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray([s.pid for s in samples], np.int64), np.asarray([s.camid for s in samples], np.int64))


def rank_features(query_features, gallery_features, query: Sequence[Sample], gallery: Sequence[Sample],
                  ap_mode: str = "market", metric: str = "cosine", max_rank: int = 50, distmat=None,
                  precision: str = "strict", distmat_label: str | None = None):
    """rank_eval's result for these features (the Market-1501 protocol), or for `distmat` when given (distances
    computed otherwise, e.g. re-scored by a verifier, which `distmat_label` says for reports; the features and
    `precision` are then not used)."""
    from ..ops import rank_eval
    q_pids, q_camids = labels(query)
    g_pids, g_camids = labels(gallery)
    if distmat is not None:
        return rank_eval(q_pids, g_pids, q_camids, g_camids, distmat=distmat, max_rank=max_rank, ap_mode=ap_mode,
                         distmat_label=distmat_label)
    return rank_eval(q_pids, g_pids, q_camids, g_camids, query_features=query_features,
                     gallery_features=gallery_features, metric=metric, max_rank=max_rank, ap_mode=ap_mode,
                     precision=precision)


def summarize(result, ap_mode: str) -> dict:
    """metrics.json's numbers; Rank-k as `RankEvalResult.rank` has it (flat past a gallery shorter than k)."""
    at = result.rank
    return {"rank1": at(1), "rank5": at(5), "rank10": at(10), "mAP": float(result.mAP), "ap_mode": ap_mode,
            "num_valid": int(result.num_valid)}


def evaluate_method(embed: Embed, dataset: ReidDataset, cfg: dict, device: torch.device,
                    ap_mode: str = "market", return_features: bool = False, metric: str = "cosine",
                    l2_normalize: bool = True, resize_filter: str = "bilinear", flip: bool = True):
    """Features of the dataset's query and gallery with `embed`, ranked; a dict of Rank-1/5/10 and mAP under
    `ap_mode`, plus ``mAP_by_ap_mode`` (the mAP under each AP convention, since papers use both) and the metric."""
    size = (cfg["height"], cfg["width"])
    common = dict(size=size, device=device, batch_size=cfg.get("eval_batch_size", 128),
                  channels_last=device.type == "cuda", l2_normalize=l2_normalize, workers=cfg.get("workers"),
                  resize_filter=resize_filter, flip=flip)
    qf = extract_features(embed, dataset.query, **common)
    gf = extract_features(embed, dataset.gallery, **common)
    result = rank_features(qf, gf, dataset.query, dataset.gallery, ap_mode=ap_mode, metric=metric)
    summary = summarize(result, ap_mode)
    summary["metric"] = metric
    summary["mAP_by_ap_mode"] = {ap_mode: summary["mAP"]}
    for other in ("market", "torchreid"):
        if other != ap_mode:
            summary["mAP_by_ap_mode"][other] = float(
                rank_features(qf, gf, dataset.query, dataset.gallery, ap_mode=other, metric=metric).mAP)
    if return_features:
        return summary, result, qf, gf
    return summary
