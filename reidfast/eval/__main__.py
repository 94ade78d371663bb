"""python -m reidfast.eval: CMC / mAP / mINP of re-id retrieval.

  python -m reidfast.eval --features FILE [--metric euclidean|cosine] [--ap-mode torchreid|market] [--rerank]
  python -m reidfast.eval --checkpoint RUN_DIR [--dataset NAME --data-root DIR] [--rerank]

FILE is .npz, .pt or the pytorch_result.mat of DG-Net's tools (keys in reidfast.eval.io).
"""
# Each source of features is a mode chosen by one flag of a mutually exclusive group: a new source adds one flag
# and one function in MODES.
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .. import ops
from ..ops.rank_result import AP_MODES, METRICS
from ..paths import folder_path_error
from .io import load_features
from .report import format_table, metrics_dict


def evaluate_saved_features(args) -> ops.RankEvalResult:
    saved = load_features(args.features)
    from ..device import resolve_device
    device = resolve_device(args.device)
    qf, gf = saved.query_f.to(device), saved.gallery_f.to(device)
    labels = (saved.query_label, saved.gallery_label, saved.query_cam, saved.gallery_cam)
    common = dict(max_rank=args.max_rank, ap_mode=args.ap_mode or "torchreid")
    metric = args.metric or "euclidean"
    if args.rerank:
        from .rerank import k_reciprocal_distance, label

        dist = k_reciprocal_distance(qf, gf, k1=args.k1, k2=args.k2, lambda_value=args.lambda_value, metric=metric)
        return ops.rank_eval(*labels, distmat=dist, distmat_label=label(metric), **common)
    return ops.rank_eval(*labels, query_features=qf, gallery_features=gf, metric=metric, precision=args.precision,
                         **common)


# mode flag (argparse dest) -> the function that evaluates it
def evaluate_checkpoint(args) -> ops.RankEvalResult:
    from .trained_run import evaluate_checkpoint as evaluate_run_folder
    return evaluate_run_folder(args)


MODES = {"features": evaluate_saved_features, "checkpoint": evaluate_checkpoint}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reidfast.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", metavar="FILE", help="saved query/gallery features (.npz, .pt, .mat)")
    source.add_argument("--checkpoint", metavar="RUN_DIR",
                        help="a training run folder (or checkpoint file): extract its model's features and rank")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="distance (default: euclidean for --features, the method's own for --checkpoint)")
    p.add_argument("--ap-mode", choices=AP_MODES, default=None,
                   help="torchreid: mean precision at each match; market: official Market-1501 trapezoid AP "
                        "(default: torchreid for --features, the run's own convention for --checkpoint)")
    p.add_argument("--max-rank", type=int, default=50)
    p.add_argument("--precision", choices=("strict", "fast"), default="strict",
                   help="strict: IEEE fp32 distances; fast: bf16 tensor-core GEMMs with fp32 accumulation on CUDA "
                        "(mAP moves by about 0.01 points); distances from features only (not with --rerank or "
                        "--verifier-topk)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the --metric distances, for "
                   "galleries whose (Q+G)^2 distances fit in memory")
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lambda", dest="lambda_value", type=float, default=0.3)
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    from .trained_run import add_checkpoint_arguments
    add_checkpoint_arguments(p)
    return p


def check_flags(parser: argparse.ArgumentParser, args) -> None:
    """Refuses flags that the chosen mode would ignore: the --checkpoint flags with --features, the re-ranking
    parameters without --rerank, and fast precision with distances not made from features."""
    from .trained_run import CHECKPOINT_ONLY

    def given(dests):  # set to other than their defaults, as the user wrote them
        return [f"--{d.replace('_', '-')}" for d in dests if getattr(args, d) != parser.get_default(d)]

    if args.features:
        ignored = given(CHECKPOINT_ONLY)
        if ignored:
            raise ValueError(f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} to --checkpoint "
                             "runs only")
    if not args.rerank:
        ignored = [flag.replace("lambda-value", "lambda") for flag in given(("k1", "k2", "lambda_value"))]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} with --rerank only")
    if args.precision == "fast" and (args.rerank or args.verifier_topk):
        raise ValueError("--precision fast: applies to distances computed from features, not to --rerank or "
                         "--verifier-topk")


def check_output_path(flag: str, value: str | None) -> None:
    """Refuses, before any work, an output path that cannot be a file: a folder, one under a file, or one in a
    folder that cannot be written."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; name a file")
    error = folder_path_error(path.parent)  # the folders below it are made
    if error:
        raise ValueError(f"{flag} {path}: {error}")


def write_json(path: Path, numbers: dict) -> None:
    # Strict JSON: a number that is not one (Rank-k past a cut-off CMC, or mAP without a valid query) is null,
    # not the NaN token that JSON parsers other than Python's refuse.
    numbers = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in numbers.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as --export and --ranked-list do
        path.write_text(json.dumps(numbers, indent=1, allow_nan=False))
    except OSError as exc:
        raise ValueError(f"--json {path}: cannot be written ({(exc.strerror or str(exc)).lower()})") from exc


def main(argv=None) -> int:
    """Exit status 0, or 2 with one "error:" line for bad input (a missing or unreadable file, labels that do not
    match the features, a folder without a checkpoint, a dataset that is not there, a path that cannot be
    written, a flag the mode would ignore)."""
    from ..data import PATH_ERRORS, DatasetNotFoundError, error_message
    from ..train.checkpoint import CheckpointError
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = next(name for name in MODES if getattr(args, name, None))
    try:
        check_flags(parser, args)
        for flag, value in (("--json", args.json), ("--export", args.export), ("--ranked-list", args.ranked_list)):
            check_output_path(flag, value)
        result = MODES[mode](args)
        title = f"{args.features or args.checkpoint}" + (" (k-reciprocal re-ranking)" if args.rerank else "")
        if args.checkpoint and args.verifier_topk:
            title += f" (top {args.verifier_topk} re-scored by the verifier)"
        print(format_table(result, title))
        if args.json:
            write_json(Path(args.json), {**metrics_dict(result), "rerank": bool(args.rerank)})
    # FeatureFileError is a ValueError; PATH_ERRORS: an output path that names a file where a folder goes, say
    except (CheckpointError, DatasetNotFoundError, ValueError, TypeError, *PATH_ERRORS) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # --export or --ranked-list on a read-only or virtual file system, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{(exc.strerror or str(exc)).lower()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
