"""python -m reidfast.train [METHOD] [options]: train a re-id method; see --help."""
from __future__ import annotations

import argparse
import sys

import torch

from ..data import PATH_ERRORS, DatasetNotFoundError, error_message
from .checkpoint import CheckpointError
from .config import (LOOP_DEFAULTS, ConfigError, add_loop_arguments, check_file_values, read_config_file,
                     resolve_config)
from .loop import TrainingDivergedError, TrainingInterrupted, torchrun_rank
from .methods import ALL_METHODS, get_method

DESCRIPTION = """\
Train a person re-identification method with reidfast's shared loop.

With no arguments this trains the ResNet-50 ID baseline on the synthetic dataset (generated once into the user
cache) with the cpu-quick preset on the CPU (a quarter-width ResNet-50 from scratch, 64x32 images, 120
identities, 600 iterations at lr 0.01: a few minutes on 2 cores), then prints Rank-1 and mAP and writes
runs/baseline-synthetic/metrics.json. On a GPU, or with --data-root, the method's paper settings are used.

Settings are layered: the method's paper defaults < the preset < --config FILE < flags given on this command
line. The run folder gets config.json, log.jsonl (and TensorBoard scalars when tensorboard is installed),
checkpoint.pt + checkpoint.prev.pt, metrics.json, and samples/ for generative methods.
Under torchrun (e.g. torchrun --nproc-per-node 2 -m reidfast.train baseline ...) it trains with DDP.
"""

EPILOG = """\
examples:
  python -m reidfast.train                                   # baseline, synthetic data, quick CPU preset
  python -m reidfast.train baseline --data-root ~/data --dataset market1501 --last-stride 1
  python -m reidfast.train baseline --out runs/b1 --resume   # continue runs/b1 exactly where it stopped
  python -m reidfast.eval --checkpoint runs/baseline-synthetic
  python -m reidfast.train fdgan                             # FD-GAN stages I, II, III (RUN/stage1..3), CPU preset
  python -m reidfast.train fdgan --stage 2 --out runs/f1     # one stage, from runs/f1/stage1 (or --init CHECKPOINT)
  python -m reidfast.train sagan                             # SA-GAN: synthetic domain a -> b, all three stages
  python -m reidfast.train sagan --source market1501 --source-root ~/data --target dukemtmc --target-root ~/data
  python -m reidfast.train sagan --stage reid --no-adapt --out runs/direct   # direct transfer, for comparison
"""


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reidfast.train", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", nargs="?", default="baseline", choices=ALL_METHODS,
                        help="the method to train (default baseline)")
    add_loop_arguments(parser)
    get_method(method or "baseline").add_arguments(parser)
    return parser


def _option_values() -> dict:
    """How many values each flag of any method takes (0, an int, or argparse's "?", "*", "+")."""
    counts = {}
    for name in ALL_METHODS:
        for action in build_parser(name)._actions:
            for option in action.option_strings:
                counts[option] = 1 if action.nargs is None else action.nargs
    return counts


def _method_name(argv) -> str:
    """The method the command line names, wherever it stands among the flags (train --out R dgnet ... too): the
    first token that is neither a flag nor a flag's value, as argparse reads it; baseline if there is none."""
    counts, i = _option_values(), 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[i + 1] if i + 1 < len(argv) else "baseline"
        if not token.startswith("-"):
            return token
        count = 0 if "=" in token else counts.get(token, 0)
        i += 1
        if isinstance(count, int):
            i += count
        else:  # "?", "*", "+": the values up to the next flag ("?": at most one)
            limit = 1 if count == "?" else len(argv)
            while i < len(argv) and limit and not argv[i].startswith("-"):
                i, limit = i + 1, limit - 1
    return "baseline"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _method_name(argv)
    parser = build_parser(name if name in ALL_METHODS else None)
    args = parser.parse_args(argv)
    method = get_method(args.method)
    flags = {k: v for k, v in vars(args).items() if k not in ("method", "config")}
    try:
        file_values = read_config_file(args.config) if getattr(args, "config", None) else {}
        if file_values:
            check_file_values(parser, file_values, args.config, {**LOOP_DEFAULTS, **method.defaults})
        given = set(flags) | set(file_values)
        if flags.get("resume") or file_values.get("resume"):
            flags, file_values = _resume_layers(method, flags, file_values)
        device = flags.get("device", file_values.get("device", "auto"))
        cfg = resolve_config(method.defaults, method.presets, file_values, flags, _runs_on_cpu(device))
        if torchrun_rank()[0] == 0:  # once, not once per process
            for line in method.unused_options(given, cfg):
                print(f"warning: {line}", file=sys.stderr)
        _check_run_folder(method, cfg)
        from .loop import train
        train(method, cfg)
    # ValueError: ConfigError, DatasetFormatError, and bad option values found while building the run
    # PATH_ERRORS: a path that names a file where a folder goes (--out is checked first; the dataset's cache, say)
    except (CheckpointError, DatasetNotFoundError, TrainingDivergedError, ValueError, *PATH_ERRORS) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"interrupted by {exc}", file=sys.stderr)
        return 128 + exc.signal_number  # the shell's convention for a process stopped by a signal
    except _OUT_OF_MEMORY as exc:
        print(f"error: out of device memory ({str(exc).splitlines()[0][:160]}). Lower --batch-size (or "
              f"--eval-batch-size if it happened in an evaluation) or train with --amp bf16; a checkpoint already in "
              f"the run folder is intact (--resume continues from it).", file=sys.stderr)
        return 2
    return 0


# torch.OutOfMemoryError from torch 2.5; torch.cuda's name before
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _check_run_folder(method, cfg: dict) -> None:
    """A new run does not write over the checkpoints of a run already in its folder (running the same command
    twice would otherwise replace the first run's work) unless --overwrite says so."""
    run_dir = method.run_folder(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder")
    if cfg.get("resume") or cfg.get("overwrite"):
        return
    found = method.existing_checkpoints(cfg)
    if found:
        raise ConfigError(f"{run_dir} already holds a {method.name} run ({found[0]}): add --resume to continue it, "
                          f"--out DIR to train a new run elsewhere, or --overwrite to train over it")


def _runs_on_cpu(device: str) -> bool:
    """Whether --device names the CPU (cpu, cpu:N, or auto without a GPU): the automatic preset depends on it."""
    return str(device).split(":")[0] == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _resume_layers(method, flags: dict, file_values: dict) -> tuple[dict, dict]:
    """On --resume the saved configuration is the base; flags given now still override it."""
    from pathlib import Path
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .loop import default_run_dir
    resume = flags.get("resume", file_values.get("resume"))
    out = flags.get("out", file_values.get("out"))
    run_dir = Path(out) if out else default_run_dir(method.name, {"dataset": flags.get("dataset"),
                                                                   "data_root": flags.get("data_root")})
    if resume is True and method.continues_without_checkpoint(run_dir):
        flags.pop("resume", None)
        return flags, {k: v for k, v in file_values.items() if k != "resume"}
    path = resolve_checkpoint(resume, method.resume_dir(run_dir))
    saved = {**method.options_of_older_runs, **load_checkpoint(path, method.name)["config"]}
    saved.update(file_values)
    saved.pop("resume", None)
    if "iters" in flags or "epochs" in flags:  # a new run length replaces the saved one
        saved.pop("iters", None)
        saved.pop("epochs", None)
    saved_run_dir = _saved_run_dir(path, saved["out"])
    if not out and saved_run_dir is None:
        # The checkpoint was copied or moved: continuing in the saved folder would write over whatever is there now.
        given = Path(resume) if isinstance(resume, str) else path
        suggestion = given if given.is_dir() else given.parent
        raise ConfigError(f"--resume {resume}: this checkpoint was written by the run in {saved['out']}, not in the "
                          f"folder it is in now; add --out to say where the resumed run writes (e.g. --out "
                          f"{suggestion}). Nothing was written.")
    given = sorted((set(flags) | set(file_values)) - {"resume", "out"})
    merged_flags = {**flags, "resume": str(path), "out": str(out or saved_run_dir), "resumed_with": given}
    return merged_flags, saved


def _saved_run_dir(path, saved_out: str):
    """The folder of the run that wrote the checkpoint at `path`, if the checkpoint is still in it: the saved folder,
    or, when that was relative to the run's working directory, the ancestor of `path` that ends with it. None if the
    checkpoint was copied or moved."""
    from pathlib import Path
    saved = Path(saved_out)
    if _inside(path, saved):
        return saved
    if saved.is_absolute() or ".." in saved.parts:
        return None
    for folder in path.resolve().parents:
        if folder.parts[-len(saved.parts):] == saved.parts:
            return folder
    return None


def _inside(path, folder) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
