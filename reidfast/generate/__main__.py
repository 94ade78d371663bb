"""python -m reidfast.generate METHOD --checkpoint RUN_DIR [method options] [--out DIR]

Generate images with a trained generative run (the run folder of ``python -m reidfast.train METHOD``):

  dgnet   swap codes: every --appearance image's appearance on every --structure image's structure (a grid)
  fdgan   render --image in the pose of --pose (an image with keypoints, or a keypoints file)
  sagan   adapt --image to the target domain under --codes spatial codes

Images are resized to the run's input size; outputs are PNG files, listed when written.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

METHODS = ("dgnet", "fdgan", "sagan")


def _module(method: str):
    try:
        return importlib.import_module(f"reidfast.generate.{method}")
    except ModuleNotFoundError as exc:
        if exc.name == f"reidfast.generate.{method}":
            return None  # this method's generation is not built yet
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reidfast.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in METHODS:
        module = _module(method)
        if module is None:
            continue
        p = sub.add_parser(method, help=module.__doc__.strip().splitlines()[0], description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                       help=f"a run folder of `python -m reidfast.train {method}` (or one of its checkpoint files)")
        p.add_argument("--out", metavar="DIR", default=None, help="output folder (default RUN_DIR/generated)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        module.add_arguments(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..train.methods import load_trained_method
    from ..data import PATH_ERRORS, DatasetNotFoundError, error_message
    from ..train.checkpoint import CheckpointError
    from ..device import resolve_device
    run_dir = Path(args.checkpoint)
    out = Path(args.out) if args.out else (run_dir if run_dir.is_dir() else run_dir.parent) / "generated"
    try:
        device = resolve_device(args.device)
        method, cfg = load_trained_method(run_dir, device, log=lambda m: print(m, file=sys.stderr))
        if method.name != args.method:
            raise ValueError(f"--checkpoint: {run_dir} is a {method.name} run, not {args.method}")
        written = _module(args.method).generate(method, cfg, args, out, device)
    except (CheckpointError, DatasetNotFoundError, ValueError, *PATH_ERRORS) as exc:  # PATH_ERRORS: --out a file
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
