"""Evaluate a training run folder: rebuild its method from the checkpoint, extract features, rank, export.

    python -m reidfast.eval --checkpoint RUN_DIR [--dataset NAME --data-root DIR] [--export FILE.npz]
                            [--ranked-list FILE.png] [--rerank | --verifier-topk K] [--precision fast]

The dataset defaults to the one the run trained on (its config.json); the image size is always the run's.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data import DatasetNotFoundError
from ..train.methods import load_trained_method
from .features import extract_features, labels, rank_features


def evaluate_run(method, cfg: dict, dataset, device: torch.device, ap_mode: str = "market",
                 metric: str | None = None, max_rank: int = 50, batch_size: int = 128, verifier_topk: int = 0,
                 rerank: dict | None = None, precision: str = "strict"):
    """(result, query_features, gallery_features, distance_rows) of a trained method (from
    :func:`load_trained_method`) on `dataset`; `metric` and the feature normalization default to the method's own
    test protocol. `verifier_topk` K > 0 re-scores each query's top K by the method's verifier (methods with
    ``verifier_distances``: fdgan); `rerank`, the k1, k2, lambda_value of k-reciprocal re-ranking, re-ranks the
    metric's distances instead. distance_rows(indices) gives those queries' rows of the distances ranked."""
    if verifier_topk < 0:  # before the features are extracted
        raise ValueError(f"--verifier-topk: must be >= 0 (0: off), got {verifier_topk}")
    if verifier_topk and rerank is not None:
        raise ValueError("--rerank and --verifier-topk: choose one way to re-score the distances")
    if verifier_topk and not hasattr(method, "verifier_distances"):
        raise ValueError(f"--verifier-topk: {method.name} has no verifier (fdgan has)")
    if verifier_topk and metric not in (None, "euclidean"):  # verifier_distances' candidates are Euclidean
        raise ValueError(f"--metric {metric}: --verifier-topk re-scores the nearest by Euclidean distance; omit "
                         "--metric or give euclidean")
    metric = metric or method.eval_metric
    common = dict(size=(cfg["height"], cfg["width"]), device=device, batch_size=batch_size,
                  channels_last=device.type == "cuda", **method.feature_options())
    qf = extract_features(method.embed, dataset.query, **common)
    gf = extract_features(method.embed, dataset.gallery, **common)
    distmat = label = None
    if verifier_topk:
        distmat = method.verifier_distances(qf, gf, topk=verifier_topk)
        label = f"euclidean, top {verifier_topk} re-scored by the verifier"
    elif rerank is not None:
        from .rerank import k_reciprocal_distance, label as rerank_label
        distmat = k_reciprocal_distance(qf, gf, metric=metric, **rerank)
        label = rerank_label(metric)
    result = rank_features(qf, gf, dataset.query, dataset.gallery, ap_mode=ap_mode, metric=metric,
                           max_rank=max_rank, distmat=distmat, precision=precision, distmat_label=label)

    def distance_rows(indices):
        if distmat is not None:
            return distmat[list(indices)].cpu()
        from ..ops.reference import pairwise_distance
        return pairwise_distance(qf[list(indices)], gf, metric)

    return result, qf, gf, distance_rows


def export_features(path: str | os.PathLike, qf, gf, dataset) -> Path:
    """An .npz that ``python -m reidfast.eval --features`` reads (query_f, gallery_f, *_label, *_cam)."""
    q_pids, q_cams = labels(dataset.query)
    g_pids, g_cams = labels(dataset.gallery)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, query_f=qf.numpy(), gallery_f=gf.numpy(), query_label=q_pids, gallery_label=g_pids,
             query_cam=q_cams, gallery_cam=g_cams)
    return path


# The argparse dests of the flags below, which only a --checkpoint run reads (--features refuses them).
CHECKPOINT_ONLY = ("dataset", "data_root", "skip_misnamed", "dataset_option", "export", "ranked_list",
                   "ranked_queries", "verifier_topk")


def add_checkpoint_arguments(parser) -> None:
    """The flags of ``python -m reidfast.eval --checkpoint RUN_DIR`` besides --checkpoint itself."""
    from ..data import add_dataset_args
    g = parser.add_argument_group("--checkpoint (a training run)")
    add_dataset_args(parser, g, when_omitted="the run's own dataset")
    g.add_argument("--export", metavar="FILE.npz", default=None,
                   help="save the query/gallery features and labels (readable by --features)")
    g.add_argument("--ranked-list", metavar="FILE.png", default=None,
                   help="picture of the top-10 of a few queries (default RUN_DIR/ranked_list.png)")
    g.add_argument("--ranked-queries", type=int, default=6, metavar="N", help="queries in the picture (6)")
    g.add_argument("--verifier-topk", type=int, default=0, metavar="K",
                   help="re-score each query's top K gallery items by the run's verification classifier (fdgan's "
                        "V; the paper's cascade uses 100); 0: off (default)")


def _is_feature_file(path: Path) -> bool:
    """A .npz or .mat (what --features reads), or a zip of .npy arrays under another name: not a checkpoint, whose
    zip holds a folder (torch.save's layout)."""
    if path.suffix.lower() in (".npz", ".mat"):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(name.endswith(".npy") and "/" not in name for name in names)


def evaluate_checkpoint(args):
    """The --checkpoint mode of ``python -m reidfast.eval``: features, ranking, export and ranked-list picture."""
    from ..device import resolve_device
    if args.ranked_queries < 1:  # checked before the features are extracted, not when the picture is drawn
        raise ValueError(f"--ranked-queries: must be >= 1, got {args.ranked_queries}")
    device = resolve_device(args.device)
    run_dir = Path(args.checkpoint)
    if run_dir.is_file() and _is_feature_file(run_dir):
        raise ValueError(f"--checkpoint {run_dir}: looks like a features file: use --features {run_dir}")
    # evaluation reads a dataset: a missing folder is a mistyped path (the synthetic reader would generate a new
    # dataset there, of its default size and ids, not the run's)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise DatasetNotFoundError(f"--data-root {args.data_root}: no such folder")
    method, cfg = load_trained_method(run_dir, device)  # the checkpoint is read once, here
    dataset_cfg = dict(cfg)
    if args.dataset is not None:  # another dataset: its root is the one given (none: the synthetic data), and
        # the run's reader options were its own dataset's
        dataset_cfg.update(dataset=args.dataset, data_root=args.data_root, dataset_option=None)
    elif args.data_root is not None:  # the run's own dataset, read from elsewhere
        dataset_cfg.update(dataset=type(method).test_dataset_name(cfg), data_root=args.data_root)
    if args.skip_misnamed:
        dataset_cfg["skip_misnamed"] = True
    if args.dataset_option:
        dataset_cfg["dataset_option"] = args.dataset_option
    try:
        dataset = type(method).load_dataset(dataset_cfg)
    except DatasetNotFoundError as exc:
        if args.data_root is not None or args.dataset is not None:
            raise
        raise DatasetNotFoundError(f"{exc}; the run's config.json names that data root: give --data-root DIR with "
                                   f"the folder where the run's dataset is now") from None
    # Unless asked otherwise, use the run's own AP convention so the numbers match its metrics.json.
    ap_mode = args.ap_mode or cfg.get("ap_mode", "market")
    rerank = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value) if args.rerank else None
    result, qf, gf, distance_rows = evaluate_run(
        method, cfg, dataset, device, ap_mode=ap_mode, metric=args.metric, max_rank=args.max_rank,
        verifier_topk=args.verifier_topk, rerank=rerank, precision=args.precision)
    if args.export:
        print(f"features written to {export_features(args.export, qf, gf, dataset)}")
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    picture = Path(args.ranked_list) if args.ranked_list else folder / "ranked_list.png"
    from .ranked_list import save_ranked_lists
    step = max(1, len(dataset.query) // max(1, args.ranked_queries))
    chosen = list(range(0, len(dataset.query), step))[:args.ranked_queries]
    save_ranked_lists(picture, distance_rows(chosen), dataset.query, dataset.gallery, chosen, ap_mode=ap_mode,
                      size=(cfg["height"], cfg["width"]))
    print(f"ranked lists of {len(chosen)} queries drawn in {picture}")
    return result
