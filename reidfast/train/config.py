"""Run configuration: per-method paper defaults < preset < config file (TOML or JSON) < command-line flags.

Every option has one name (``batch_size``); on the command line it is ``--batch-size``, in a config file
``batch_size = 32`` or ``batch-size = 32``. A flag overrides the file only when it is actually given, which is
why the parser's defaults are left unset and the defaults live in :data:`LOOP_DEFAULTS` and each method.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import tomllib
from pathlib import Path

from ..data import add_dataset_args
from ..ops._backend import BACKENDS

# Loop options every method shares. Method defaults (their papers' settings) are merged over these.
LOOP_DEFAULTS = {
    "dataset": None, "data_root": None, "out": None, "iters": None, "epochs": None, "batch_size": 32,
    "amp": "auto", "compile": None, "compile_mode": "auto", "channels_last": None, "cudnn_benchmark": None,
    "fused_optimizers": None, "backend": "auto",
    # resumed_with: the options given with the --resume that continues a run (multi-stage methods apply them to
    # the stage that was running and those after it)
    "resume": None, "resumed_with": None, "device": "auto", "seed": 0, "eval_every": 0, "ckpt_every": 1000,
    "log_every": 20,
    "workers": None, "preset": "auto", "ap_mode": "market", "eval_batch_size": 128, "synthetic_ids": None,
    "height": 256, "width": 128, "lr": 0.01, "threads": None, "skip_misnamed": False, "overwrite": False,
    "dataset_option": None,
}
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
PRESETS = ("auto", "paper", "cpu-quick")


class ConfigError(ValueError):
    """A bad config file or a bad combination of options."""


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared options. Defaults are SUPPRESSed so that only flags actually given override the file."""
    S = argparse.SUPPRESS
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN_DIR", default=S,
                     help="run folder for checkpoints, logs, metrics.json and sample images "
                          "(default: runs/<method>-<dataset>)")
    run.add_argument("--config", metavar="FILE", default=S,
                     help="TOML (.toml) or JSON (.json) file of option = value pairs (names as the flags, with "
                          "_ or -); flags given on the command line override it")
    run.add_argument("--preset", choices=PRESETS, default=S,
                     help="paper: the method's published settings; cpu-quick: small images, a narrow network and "
                          "few iterations so that a 2-core CPU finishes in minutes; auto (default): cpu-quick on "
                          "the CPU with the synthetic data, else paper")
    run.add_argument("--seed", type=int, default=S, help="seed of every random draw (default 0)")
    run.add_argument("--overwrite", action="store_true", default=S,
                     help="train a new run in an --out folder that already holds one (its checkpoints are replaced)")
    run.add_argument("--resume", nargs="?", const=True, default=S, metavar="CHECKPOINT",
                     help="continue from RUN_DIR/checkpoint.pt, or from the checkpoint file or run folder given; "
                          "the saved configuration is used, flags given now override it (e.g. a larger --iters)")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, default=S, metavar="N", help="train for N iterations")
    length.add_argument("--epochs", type=int, default=S, metavar="N",
                        help="train for N passes over the training set (default: the method's paper setting)")
    run.add_argument("--batch-size", type=int, default=S, metavar="B",
                     help="images per iteration, over all processes under torchrun")
    run.add_argument("--lr", type=float, default=S, help="base learning rate (the method says which nets use it)")
    run.add_argument("--height", type=int, default=S, help="input image height in pixels")
    run.add_argument("--width", type=int, default=S, help="input image width in pixels")
    run.add_argument("--eval-every", type=int, default=S, metavar="N",
                     help="evaluate every N iterations (0: only at the end, which always happens)")
    run.add_argument("--ckpt-every", type=int, default=S, metavar="N",
                     help="write a checkpoint every N iterations (one is always written at the end)")
    run.add_argument("--log-every", type=int, default=S, metavar="N",
                     help="log the mean losses every N iterations to log.jsonl (and TensorBoard)")
    run.add_argument("--ap-mode", choices=("market", "torchreid"), default=S,
                     help="AP convention of the reported mAP: market (the official Market-1501 trapezoid "
                          "AP; the default of baseline, dgnet and sagan) or torchreid (mean precision at each true "
                          "match; fdgan's default)")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--device", default=S,
                       help="auto (default: cuda if available, else cpu), cpu, cuda or cuda:N")
    speed.add_argument("--amp", choices=AMP_CHOICES, default=S,
                       help="mixed precision: auto (default: bf16 on GPUs that support it, off on the CPU), bf16, "
                            "fp16 (with a GradScaler) or off (fp32)")
    speed.add_argument("--compile", dest="compile", action="store_true", default=S,
                       help="torch.compile the networks (default on GPU)")
    speed.add_argument("--no-compile", dest="compile", action="store_false", default=S,
                       help="run the networks eagerly (default on CPU)")
    speed.add_argument("--compile-mode", choices=("auto", "default", "reduce-overhead", "max-autotune"), default=S,
                       help="torch.compile mode; reduce-overhead captures CUDA graphs (shapes are static here); "
                            "auto (default): reduce-overhead for SA-GAN's adaptation stage on one GPU, whose step "
                            "waits on the host's launches, else default")
    speed.add_argument("--cudnn-benchmark", dest="cudnn_benchmark", action="store_true", default=S,
                       help="let cuDNN time its convolution algorithms for each new input shape and keep the fastest "
                            "(default on GPU: training runs at one image size, so it times once)")
    speed.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false", default=S,
                       help="pick convolution algorithms by cuDNN's heuristics (no timing on first use)")
    speed.add_argument("--fused-optimizers", dest="fused_optimizers", action="store_true", default=S,
                       help="Adam and SGD update all of a network's parameters in one fused kernel (default on GPU, "
                            "where the for-each path's per-parameter host work every step shows; on the CPU when "
                            "given)")
    speed.add_argument("--no-fused-optimizers", dest="fused_optimizers", action="store_false", default=S,
                       help="torch.optim's default (for-each) update")
    speed.add_argument("--backend", default=S,
                       help="reidfast op backend: auto, cuda, triton, cpu or reference (pure PyTorch); default: the "
                            "environment variable REIDFAST_BACKEND, else auto")
    speed.add_argument("--workers", type=int, default=S, help="image decoding worker processes (default: cores-1, "
                       "at most 4)")
    speed.add_argument("--threads", type=int, default=S,
                       help="CPU compute threads per process (default on the CPU: the cores left after the "
                            "decoding workers, at least 1; oversubscribed OpenMP threads slow training many times)")
    speed.add_argument("--eval-batch-size", type=int, default=S, help="images per batch when extracting features")
    data = parser.add_argument_group("data")
    add_dataset_args(parser, data, default=S, when_omitted="market1501 when --data-root is given, else train on "
                                                           "the synthetic dataset, generated once into the user cache")
    data.add_argument("--synthetic-ids", type=int, default=S, metavar="N",
                      help="identities of the synthetic dataset (half train, half test; default 200, "
                           "cpu-quick preset 120)")


def read_config_file(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config: file {path} not found")
    try:
        if path.suffix.lower() == ".toml":
            with open(path, "rb") as f:
                values = tomllib.load(f)
        elif path.suffix.lower() == ".json":
            values = json.loads(path.read_text())
        else:
            raise ConfigError(f"--config: {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config: {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--config: {path} must hold a table of option = value pairs")
    return {k.replace("-", "_"): v for k, v in values.items()}


def check_file_values(parser: argparse.ArgumentParser, values: dict, source: str, defaults: dict) -> None:
    """A config file's values get the checks their flags get from argparse: a switch takes true or false, an option
    with choices one of them, a numeric option a number (a list of them where the flag takes several), any other
    a string. null (JSON) only where the option's default is None (auto). Unknown keys: resolve_config."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "method", "config")}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            continue
        where = f"--config {source}: {key}"
        if value is None:
            if defaults.get(key, 0) is not None:
                raise ConfigError(f"{where} cannot be null (its default is {defaults.get(key)!r})")
            continue
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            continue
        if action.nargs == "?":  # --resume: a path, or true for the run folder's own checkpoint
            if not isinstance(value, (bool, str)):
                raise ConfigError(f"{where} must be true or a path, got {value!r}")
            continue
        several = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if several and not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if several and isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ConfigError(f"{where} must be a list of {action.nargs} values, got {value!r}")
        for item in value if several else [value]:
            if action.type is int:
                ok, what = isinstance(item, int) and not isinstance(item, bool), "an integer"
            elif action.type is float:
                ok, what = isinstance(item, (int, float)) and not isinstance(item, bool), "a number"
            elif action.type in (None, str):
                ok, what = isinstance(item, str), "a string"
            else:  # a converter of the flag's text
                try:
                    action.type(str(item))
                    ok, what = not isinstance(item, bool), "valid"
                except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            if ok and action.choices is not None and item not in action.choices:
                ok, what = False, f"one of {', '.join(map(str, action.choices))}"
            if not ok:
                raise ConfigError(f"{where} must be {what}, got {item!r}")


# The rules of numeric options by name, whichever layer set them (argparse types the flags, check_file_values the
# config file, presets and saved configurations neither): (name pattern, integer only, test, what it must be);
# the first pattern that matches applies. Loss weights and multipliers may be 0 (a term off) but not negative (a
# term reversed).
_RANGES = [
    (re.compile(r"(_w|_mult|^margin|weight_decay|^momentum|^ramp_per_iter)$"), False, lambda v: v >= 0, ">= 0"),
    (re.compile(r"^stm_bound$"), False, lambda v: v >= 0, ">= 0 (0: unbounded)"),
    (re.compile(r"^(lr_gamma|gan_width|pose_sigmas)$"), False, lambda v: v > 0, "> 0"),
    (re.compile(r"^(dropout|label_smoothing|adam_beta1|adam_beta2)$"), False, lambda v: 0 <= v < 1, "in [0, 1)"),
    (re.compile(r"(decay_from|decay_at)$"), False, lambda v: 0 <= v <= 1, "a fraction of the run, in [0, 1]"),
    (re.compile(r"^(encoder_again|erasing)$"), False, lambda v: 0 <= v <= 1, "a probability, in [0, 1]"),
    (re.compile(r"^crop_area$"), False, lambda v: 0 < v <= 1, "a fraction of the image, in (0, 1]"),
    # lr, gen_lr, e_lr3, ...: learning rates (lr_gamma and head_lr_mult matched above)
    (re.compile(r"(^|_)lr\d*$"), False, lambda v: v >= 0, ">= 0 (a learning rate)"),
    (re.compile(r"^(warmup_iters|warm_iters|workers|eval_every|ckpt_every|log_every)$"), True, lambda v: v >= 0,
     ">= 0"),
    (re.compile(r"^seed$"), True, lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    (re.compile(r"((^|_)iters|(^|_)epochs|(^|_)batch_size|^height|^width|_hidden|_width|_dim|_blocks|^threads|^codes|"
                r"^synthetic_ids|^num_negatives|^ngf|^ndf)$"), True, lambda v: v >= 1, ">= 1"),
]


def _check_ranges(cfg: dict) -> None:
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
        rule = next((r for r in _RANGES if r[0].search(key)), None)
        if rule is None or value is None:
            continue
        _, integer, test, text = rule
        for item in value if isinstance(value, (list, tuple)) else [value]:
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            if integer and not (number and isinstance(item, int)):
                raise ConfigError(f"--{key.replace('_', '-')} must be an integer {text}, got {value!r}")
            if number and not test(item):
                raise ConfigError(f"--{key.replace('_', '-')} must be {text}, got {value!r}")


# Options naming the data a run reads (the methods that lack one leave it out of their configs).
DATA_PATH_OPTIONS = ("data_root", "source_root", "target_root", "keypoints", "source_masks", "target_masks")


def resolve_config(method_defaults: dict, method_presets: dict, file_values: dict, flags: dict,
                   device_is_cpu: bool) -> dict:
    """Merge the layers; checks that every key in the file is a known option."""
    known = {**LOOP_DEFAULTS, **method_defaults}
    unknown = sorted(set(file_values) - set(known) - {"config"})
    if unknown:
        raise ConfigError(f"--config: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    explicit = {**file_values, **flags}
    for side in ("source", "target"):  # SA-GAN's two datasets: a root alone would get the synthetic domain made in it
        if explicit.get(f"{side}_root") is not None and explicit.get(side) is None:
            synthetic = "synthetic-a" if side == "source" else "synthetic-b"
            raise ConfigError(f"--{side}-root {explicit[f'{side}_root']}: name the dataset it holds with --{side} "
                              f"NAME (e.g. market1501, dukemtmc), or --{side} {synthetic} to generate the synthetic "
                              f"domain there")
    preset = explicit.get("preset", "auto")
    if preset == "auto":
        synthetic = explicit.get("data_root") is None and explicit.get("dataset") in (None, "synthetic")
        # a method reading two datasets (SA-GAN's source and target) names them with source/target keys
        synthetic = synthetic and all(explicit.get(f"{side}_root") is None and
                                      str(explicit.get(side) or "synthetic").lower().startswith("synthetic")
                                      for side in ("source", "target"))
        preset = "cpu-quick" if device_is_cpu and synthetic else "paper"
    cfg = {**LOOP_DEFAULTS, **method_defaults}
    if preset != "paper":
        cfg.update(method_presets.get(preset, {}))
    cfg.update(explicit)
    if "iters" in explicit and "epochs" not in explicit:
        cfg["epochs"] = None  # a run length given now replaces the default one
    if "epochs" in explicit and "iters" not in explicit:
        cfg["iters"] = None
    if cfg.get("iters") is not None and cfg.get("epochs") is not None:
        raise ConfigError("give either iters or epochs, not both")
    cfg["preset"] = preset
    if cfg["amp"] not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {cfg['amp']!r}")
    environment = os.environ.get("REIDFAST_BACKEND", "").strip()
    if "backend" not in explicit and environment:  # what the ops would use outside the trainer, unless --backend
        if environment not in BACKENDS:
            raise ConfigError(f"the environment variable REIDFAST_BACKEND must be one of {', '.join(BACKENDS)}, got "
                              f"{environment!r}")
        cfg["backend"] = environment
    if cfg["backend"] not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {cfg['backend']!r}")
    for key in DATA_PATH_OPTIONS:  # saved absolute: eval --checkpoint and --resume may run from another folder
        if isinstance(cfg.get(key), str) and cfg[key].strip():
            cfg[key] = os.path.abspath(os.path.expanduser(cfg[key]))
    _check_ranges(cfg)
    return cfg

