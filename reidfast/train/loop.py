"""The one training loop every method shares.

A method (see :class:`Method`) builds its networks, optimizers and schedulers and does one iteration in
``train_step(batch, it)``; everything else lives here, once: device placement, DDP under torchrun, mixed
precision (autocast + GradScaler), torch.compile, channels_last, the resumable data order, the progress bar,
logs, atomic checkpoints and ``--resume``, periodic and final evaluation and ``metrics.json``.

Exact resume: every random draw comes from state that the checkpoint holds (python, numpy, torch and CUDA
generators, the method's own generators), the batch order is a pure function of (seed, epoch) and is
fast-forwarded to the saved position, and the data loader draws its worker seeds from its own generator so
that creating it mid-epoch does not move the global stream. On the CPU a resumed run logs the same losses as
an uninterrupted one, bit for bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .. import ops
from ..data import (DatasetFormatError, ImageDataset, ReidDataset, ShuffledBatchSampler, UnknownDatasetError,
                    check_image_headers, get_dataset, list_datasets, reader_options)
from ..device import resolve_device
from ..ops import _backend as ops_backend
from ..progress import ProgressBar, format_duration
from .checkpoint import (LATEST, CheckpointError, capture_rng_states, load_checkpoint, resolve_checkpoint,
                         restore_rng_states, save_checkpoint)
from .compile_cache import CompiledCodeCache
from .compile_progress import compile_progress
from .config import ConfigError
from .images import save_image_grid
from .run_log import RunLog


class TrainingDivergedError(RuntimeError):
    """A network's weights became NaN or Inf: the run stops before writing or evaluating them."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run at an iteration boundary, after writing its checkpoint there."""

    def __init__(self, message: str, signal_number: int, iteration: int):
        super().__init__(message)
        self.signal_number, self.iteration = signal_number, iteration


def _step_schedulers(schedulers, scaled: bool) -> None:
    """Steps the iteration-based schedules. Under fp16's GradScaler an iteration whose gradients overflowed skips
    the optimizer step (the first ones do, while the scale settles), and torch then warns that the scheduler ran
    before the optimizer: expected there, so not shown."""
    with warnings.catch_warnings():
        if scaled:
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for s in schedulers:
            s.step()


def _check_backend(backend: str, device: torch.device) -> None:
    """A --backend that cannot run here is an error before training, not at the first evaluation after it: every
    op it implements must be able to run on the device."""
    if backend == "auto":
        return
    for op, implemented in ops_backend.IMPLEMENTED.items():
        if backend in implemented:
            with ops.use_backend(backend):
                try:
                    ops_backend.resolve(op, device)
                except RuntimeError as exc:
                    raise ValueError(f"--backend {backend}: {exc}") from None


@dataclasses.dataclass
class _Progress:
    """Where a run stands: what a checkpoint records and --resume restores."""
    it: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already trained
    train_seconds: float = 0.0  # whole iterations only (data waits, evaluation and checkpoints excluded)


# Options that never shape a network: left out when a resume's mismatch lists what differs from the checkpoint.
_RUN_ONLY_OPTIONS = {"out", "resume", "resumed_with", "iters", "epochs", "overwrite", "device", "workers", "threads",
                     "log_every", "ckpt_every", "eval_every", "compile", "compile_mode", "amp", "channels_last",
                     "cudnn_benchmark", "backend", "fused_optimizers", "run_folder", "eval_batch_size", "ap_mode",
                     "seed", "lr", "batch_size", "preset"}


def _mismatch_message(network: str, state: dict, cfg: dict, exc: RuntimeError) -> str:
    """Why a checkpoint's network does not load into the one the current options built, and what to do."""
    saved = state.get("config", {})
    differ = [f"--{k.replace('_', '-')} {cfg[k]!r} (the checkpoint's: {saved[k]!r})" for k in sorted(cfg)
              if k in saved and k not in _RUN_ONLY_OPTIONS and cfg[k] != saved[k]]
    first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])
    first = first.rstrip(".")
    return (f"the checkpoint's {network} does not fit the network these options build ({first}). "
            + (f"Options that differ from the checkpoint's: {', '.join(differ)}; resume with the checkpoint's "
               "values of those that shape the network" if differ else
               "Resume with the options the run was trained with")
            + ", or train a new run (--out elsewhere, or --overwrite).")


class _LossWindow:
    """The loss sums since the last log line, kept on the device (read only when logged), and the clock for the
    iterations-per-second rate."""

    def __init__(self, it: int, saved: dict | None = None, device: torch.device | None = None):
        self.reset(it)
        if saved:  # a resumed run's first log line averages the same iterations as an uninterrupted run's
            self.sums = {k: v.to(device) for k, v in saved["sums"].items()}
            self.count = saved["count"]

    def reset(self, it: int) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.restart_clock(it)

    def restart_clock(self, it: int) -> None:
        self.start, self.start_it = time.perf_counter(), it

    def add(self, losses: dict) -> None:
        for k, v in losses.items():
            v = v.detach().float()
            # a copy, not the step's own tensor: a CUDA graph's output is overwritten by its next replay
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: (v / self.count).item() for k, v in self.sums.items()}

    def state(self) -> dict:
        """What a checkpoint keeps: the sums and count of the iterations not yet logged."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count}

    def rate(self, it: int) -> float:
        elapsed = time.perf_counter() - self.start
        return (it - self.start_it) / elapsed if elapsed > 0 else 0.0


class _LoaderStopped(Exception):
    pass


def _fetch(loader, stop_requests: list):
    """The loader's batches. Ctrl-C reaches the loader's worker processes too, and they exit: once a stop was
    requested, the failed fetch that follows is _LoaderStopped (the loop then checkpoints the iterations done)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError:
            if stop_requests:
                raise _LoaderStopped() from None
            raise
        yield batch


@contextlib.contextmanager
def _stop_requests(enabled: bool):
    """While active, the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) only records itself in the
    yielded list, for the loop to stop at the end of the running iteration; a second one acts as it normally
    would. Only in a single process's main thread: under torchrun the ranks could see it at different
    iterations and stop at different collectives."""
    requests: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def record(signum, frame):
        requests.append(signum)
        for s, handler in previous.items():  # the next one is not caught
            signal.signal(s, handler)

    for s in previous:
        signal.signal(s, record)
    try:
        yield requests
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Method:
    """What a trainer file provides. Set in ``__init__(run)``: ``networks`` (name -> nn.Module, placed with
    :meth:`Run.place`), ``optimizers`` and ``schedulers`` (name -> object, in the order they are stepped).

    ``train_step(batch, it)`` does one iteration (forward under ``run.autocast()``, ``run.backward(loss)``,
    ``run.step(optimizer)`` in the method's own update order) and returns a dict of scalar loss tensors.
    Schedulers are stepped by the loop after every iteration, in declaration order (iteration-based schedules).
    ``embed(images)`` gives test-time features of normalized images (eval mode, no grad) for evaluation;
    ``sample_images(batch)`` may return a (N, 3, H, W) grid of normalized images to save as PNG.
    ``images_per_iteration()`` is the number of training images one iteration reads (for images/s; the batch
    size unless a method reads more, e.g. pairs).

    Hooks with defaults: ``load_dataset(cfg)`` (the run's dataset; a method that trains on one dataset and tests
    on another returns a ReidDataset combining them), ``train_items(dataset)`` (what the loader indexes with the
    batch sampler's indices: images only by default; keypoints, masks or a second domain on request),
    ``eval_metric`` / ``eval_l2_normalize`` / ``eval_flip`` (the test protocol of the method's paper),
    ``resize_filter`` (how the loader resizes training and test images: "bilinear", or "bicubic" where the
    method's pipeline does),
    ``evaluates`` (False for a stage with no re-id model), ``run(cfg)`` (the whole run: one call of the loop by
    default; multi-stage methods run the loop once per stage) and ``resume_dir(run_dir)`` (where ``--resume``
    finds the stage that was running).
    ``min_batch_size``: the smallest batch_size the method trains with (2 where BatchNorm sees the batch).
    ``cuda_compile_mode(cfg)``: the torch.compile mode ``--compile-mode auto`` (the default) gives on a GPU.
    ``run_folder(cfg)``: the run's top folder; ``existing_checkpoints(cfg)``: the checkpoints a new run with this
    config would write over (the command line refuses to start over them without --overwrite; multi-stage methods
    list those of the stages they run).
    """

    name = "method"
    min_batch_size = 1
    defaults: dict = {}
    presets: dict = {}
    networks: dict
    optimizers: dict
    schedulers: dict

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The method's own flags (default=argparse.SUPPRESS, defaults in :attr:`defaults`)."""

    # test-time features: flip-averaged, L2-normalized, cosine distance (the re-id baseline's protocol)
    eval_metric = "cosine"
    eval_l2_normalize = True
    eval_flip = True  # False: embed's feature of the image alone (a method whose embed combines the views itself)
    # how the loader resizes the images, for training and test alike (reidfast.data.RESIZE_FILTERS)
    resize_filter = "bilinear"

    @classmethod
    def feature_options(cls) -> dict:
        """extract_features' options of the method's test protocol (the metric aside): what the loop's evaluation
        and a trained run's evaluation both pass."""
        return {"l2_normalize": cls.eval_l2_normalize, "resize_filter": cls.resize_filter, "flip": cls.eval_flip}

    # False for a stage with no re-id model (e.g. a GAN adaptation stage): the loop then skips evaluation and its
    # metrics.json has no rank numbers
    evaluates = True

    @classmethod
    def cuda_compile_mode(cls, cfg: dict) -> str:
        """torch.compile's mode on a GPU under --compile-mode auto: "default", or "reduce-overhead" (CUDA graphs)
        for a step measured to wait on the host's launches."""
        return "default"

    @classmethod
    def load_dataset(cls, cfg: dict) -> ReidDataset:
        return load_run_dataset(cfg)

    @classmethod
    def test_dataset_name(cls, cfg: dict) -> str:
        """The name of the dataset a run's config is tested on: what `load_dataset` reads, named, so that an
        evaluation can read it from another root (``python -m reidfast.eval --checkpoint RUN --data-root DIR``)."""
        return run_dataset_name(cfg)

    # The values that runs saved before an option existed trained with: --resume fills them into such a run's saved
    # configuration, so that it continues as it was, whatever the method's defaults and presets say now.
    options_of_older_runs: dict = {}

    @classmethod
    def unused_options(cls, given: set[str], cfg: dict) -> list[str]:
        """Warnings (one line each) about options given on the command line or in --config (`given`: their names,
        cfg's keys) that the resolved config `cfg` trains without; the command prints them before it starts."""
        return []

    @classmethod
    def run(cls, cfg: dict, stream=None) -> dict | None:
        """Train with a resolved config; metrics.json's dict (None on ranks other than 0)."""
        return Trainer(cls, cfg, stream).fit()

    @classmethod
    def run_folder(cls, cfg: dict) -> Path:
        """The folder a command with this config writes its run to (multi-stage methods: the one holding the stage
        folders)."""
        return Path(cfg["out"]) if cfg["out"] else default_run_dir(cls.name, cfg)

    @classmethod
    def existing_checkpoints(cls, cfg: dict) -> list[Path]:
        latest = cls.run_folder(cfg) / LATEST
        return [latest] if latest.is_file() else []

    @classmethod
    def resume_dir(cls, run_dir: Path) -> Path:
        """Where ``--resume`` finds the checkpoint whose config a resumed run starts from (multi-stage methods:
        the folder of the stage that was running)."""
        return run_dir

    @classmethod
    def continues_without_checkpoint(cls, run_dir: Path) -> bool:
        """Whether a run stopped before its first checkpoint continues when its command is run again, so that the
        same command with --resume does that too (DG-Net stopped while training its own teacher)."""
        return False

    def train_items(self, dataset: ReidDataset):
        """The map-style dataset the loader reads with this method's batch sampler."""
        return ImageDataset(dataset.train, size=(self.run.cfg["height"], self.run.cfg["width"]),
                            resize_filter=self.resize_filter)

    def batch_sampler(self, dataset: ReidDataset, seed: int) -> Sampler:
        """Global batches of train indices, deterministic for (seed, epoch); a plain shuffle by default."""
        size = self.run.cfg["batch_size"]
        if len(dataset.train) < size:
            raise ConfigError(f"--batch-size {size}: the training set has {len(dataset.train)} images, fewer than "
                              f"one batch")
        return ShuffledBatchSampler(len(dataset.train), size, drop_last=True, seed=seed)

    def configure(self, total_iters: int) -> None:
        """Called once the run length is known (iteration-based schedules are built here)."""

    def train_step(self, batch: dict, it: int) -> dict:
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_images(self, batch: dict):
        return None

    def images_per_iteration(self) -> int:
        return self.run.cfg["batch_size"]


class WarmupStepSchedule:
    """lr factor at iteration i (for LambdaLR, stepped once per iteration): linear warm-up over `warmup`
    iterations, times gamma per milestone passed."""

    def __init__(self, warmup: int, milestones, gamma: float):
        self.warmup, self.milestones, self.gamma = warmup, list(milestones), gamma

    def __call__(self, i: int) -> float:
        warm = min(1.0, (i + 1) / self.warmup) if self.warmup > 0 else 1.0
        return warm * self.gamma ** sum(i >= m for m in self.milestones)


class LinearDecaySchedule:
    """lr factor at iteration i (for LambdaLR): 1 before `start`, then linear to 0 at `total` (the pix2pix and
    CycleGAN schedule that FD-GAN's and SA-GAN's GAN stages use)."""

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total

    def __call__(self, i: int) -> float:
        if i < self.start:
            return 1.0
        return max(0.0, (self.total - i) / max(1, self.total - self.start))


def load_scheduler_state(scheduler, state: dict) -> None:
    """Resume a scheduler's position (its step count, last lrs) but keep the schedule this run configured.

    LambdaLR also checkpoints its schedule objects' attributes (a decay's length, the milestones); restored, they
    would override the resumed run's configuration. With the same settings both agree, so a resume is exact; with
    a larger --iters the schedule stretches over the new length instead of ending where the first run's did.
    """
    state = dict(state)
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    scheduler.load_state_dict(state)


class ResumableBatches(Sampler):
    """Wraps a seeded batch sampler: per-epoch reseeding, skipping the batches a resumed run already did, and
    under DDP handing each rank its slice of every global batch (all ranks see the same global order)."""

    def __init__(self, batches: Sampler, rank: int = 0, world_size: int = 1):
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batches.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield list(batch)[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.batches)



def resolve_compile_mode(cfg: dict, method_cls, device: torch.device, world_size: int = 1) -> str:
    """The torch.compile mode of a run: the one asked for, or for "auto" the method's choice on one GPU
    (Method.cuda_compile_mode) and "default" elsewhere: CUDA graphs need a GPU, and under torchrun they would
    capture DDP's gradient communication, which no run here has measured. Configurations saved before the option
    existed hold "default"."""
    mode = cfg.get("compile_mode", "default")
    if mode != "auto":
        return mode
    if method_cls is None or device.type != "cuda" or world_size > 1:
        return "default"
    return method_cls.cuda_compile_mode(cfg)


class Run:
    """What a method sees of the loop: config, device, precision, wrapping, logging."""

    def __init__(self, cfg: dict, device: torch.device, rank: int, world_size: int, log, method_cls=None):
        self.cfg, self.device, self.rank, self.world_size, self.log = cfg, device, rank, world_size, log
        amp = cfg["amp"]
        if amp == "auto":
            amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
        self.amp = amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.compile = cfg["compile"] if cfg["compile"] is not None else device.type == "cuda"
        self.compile_mode = resolve_compile_mode(cfg, method_cls, device, world_size)
        self.channels_last = cfg["channels_last"] if cfg["channels_last"] is not None else device.type == "cuda"
        # Fixed image sizes make cuDNN's per-shape algorithm timing pay once; DG-Net's original trainer enables it.
        # (.get: configurations saved before the option existed.) A process-wide setting, like the loop itself.
        benchmark = cfg.get("cudnn_benchmark")
        self.cudnn_benchmark = benchmark if benchmark is not None else device.type == "cuda"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        # (.get: configurations saved before the option existed.) On by default on the GPU, where the for-each
        # path's per-parameter host work shows. On the CPU (fused kernels since torch 2.4) when asked: the
        # baseline's cpu-quick iterations ran 8-20% faster, but the CPU presets' published numbers are for-each.
        fused = cfg.get("fused_optimizers")
        self.fused_optimizers = fused if fused is not None else device.type == "cuda"
        # the method's random draws on the device (augmentation): one generator, checkpointed
        self.generator = torch.Generator(device=device).manual_seed(cfg["seed"] + 1000 * rank)

    # --- networks ------------------------------------------------------------------------------------------
    def place(self, module: nn.Module) -> nn.Module:
        """Move a network to the device (channels_last on GPU). Build optimizers after this."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def optimizer(self, cls: type[torch.optim.Optimizer], params, **options) -> torch.optim.Optimizer:
        """cls(params, **options), fused when that is on (GPU default, --fused-optimizers): one kernel per
        parameter group instead of the for-each path's per-parameter host work, the same update."""
        if self.fused_optimizers and cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
            options.setdefault("fused", True)
        return cls(params, **options)

    def wrap(self, module: nn.Module, **compile_kwargs):
        """The training-time callable of a placed network: DDP under torchrun, then torch.compile if on.
        Checkpoints and evaluation use the raw module. (A penalty on a network's input gradient, R1 or WGAN-GP,
        takes that gradient from penalties.input_gradient, which compiles.)"""
        wrapped = module
        if self.world_size > 1 and any(p.requires_grad for p in module.parameters()):
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        return self.compiled(wrapped, **compile_kwargs)

    def compiled(self, fn, **compile_kwargs):
        """torch.compile(fn) when compile is on (the run's --compile-mode, static shapes), else fn itself. For a
        method's own functions of several networks (one graph where each network would be one)."""
        if not self.compile:
            return fn
        mode = self.compile_mode
        # Static shapes: training batches are full (the samplers drop a short last batch), so each call site
        # has one shape; a network called at two batch sizes (DG-Net's G in the cycle pass, FD-GAN's D_pd)
        # gets a second specialized graph instead of a symbolic-shape one.
        compile_kwargs.setdefault("dynamic", False)
        return torch.compile(fn, mode=None if mode == "default" else mode, **compile_kwargs)

    def train_iteration(self, method, batch: dict, it: int) -> dict:
        """One training iteration of `method` on a batch already on the device: its train_step, then the loss
        scale's and the schedules' steps (the trainer's loop and bench/train_step.py both run this). Returns the
        step's losses."""
        if self.compile and self.compile_mode == "reduce-overhead":
            # CUDA graph trees keep a graph's outputs until told that a new iteration begins (torch's guess from
            # pending backwards does not hold for a step of several compiled calls and backwards)
            torch.compiler.cudagraph_mark_step_begin()
        losses = method.train_step(batch, it)
        if self.scaler is not None:
            self.scaler.update()
        _step_schedulers(method.schedulers.values(), self.scaler is not None)
        return losses

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # --- precision -----------------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun sets them in the environment; (0, 1) without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world_size) if world_size > 1 else (0, 1)


def _init_distributed() -> tuple[int, int, int]:
    rank, world_size = torchrun_rank()
    if world_size <= 1:
        return 0, 1, 0
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("REIDFAST_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return rank, world_size, local_rank


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run_dataset(cfg: dict) -> ReidDataset:
    """The dataset a run config names; the synthetic one generated at the run's image size and id count."""
    name = cfg["dataset"]
    if cfg["data_root"] is None and name in (None, "synthetic", "synthetic-market"):
        if cfg.get("dataset_option"):  # not dropped silently: the reader's options belong to the run's settings here
            raise ConfigError(f"--dataset-option {' '.join(map(str, cfg['dataset_option']))}: the built-in synthetic "
                              f"data takes no reader options (its image size follows --height and --width, its "
                              f"identities --synthetic-ids); a synthetic dataset written with python -m "
                              f"reidfast.data.synthetic is read with --data-root")
        if cfg["height"] < 32 or cfg["width"] < 16:  # the generator's own limit, named by the run's options
            raise ConfigError(f"--height {cfg['height']} --width {cfg['width']}: the built-in synthetic data is "
                              f"generated at the run's image size, at least 32x16")
        options = {"height": cfg["height"], "width": cfg["width"]}
        if cfg["synthetic_ids"]:
            options["ids"] = cfg["synthetic_ids"]
        return get_dataset("synthetic", None, **options)
    try:  # .get: the configs saved by runs from before the option lack it
        return get_dataset(name, cfg["data_root"], **reader_options(cfg.get("skip_misnamed", False),
                                                                    cfg.get("dataset_option"), name, cfg["data_root"]))
    except UnknownDatasetError:
        raise ConfigError(f"--dataset {name!r}: no such dataset; one of {', '.join(list_datasets())}") from None
    except DatasetFormatError as exc:
        if name is not None:
            raise
        # a --data-root alone is read as Market-1501: another dataset's folder fails on Market's naming
        raise DatasetFormatError(f"{exc}. (No --dataset was given, so {cfg['data_root']} was read as market1501; "
                                 f"name its dataset with --dataset: one of {', '.join(list_datasets())})") from None


def run_dataset_name(cfg: dict) -> str:
    """The dataset a run config names: --dataset, else market1501 for a --data-root alone (get_dataset's rule), else
    the synthetic data."""
    return cfg["dataset"] or ("market1501" if cfg["data_root"] else "synthetic")


def default_run_dir(method: str, cfg: dict) -> Path:
    return Path("runs") / f"{method}-{run_dataset_name(cfg)}"


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# The test image lists whose headers this process has read (a digest of each list's paths): a run of several
# stages (FD-GAN's --stage all, DG-Net with the teacher it trains first) builds a Trainer per stage on the same
# query and gallery, and opening their images once is enough.
_CHECKED_TEST_IMAGES: set[str] = set()


def _check_test_images(dataset: ReidDataset) -> None:
    """Opens the query and gallery images far enough to read their headers, once per process for the same files:
    they are read only after training, so a file that is not an image is found now (check_image_headers)."""
    for split in ("query", "gallery"):
        samples = getattr(dataset, split)
        key = hashlib.sha256("\0".join(str(s.path) for s in samples).encode()).hexdigest()
        if key not in _CHECKED_TEST_IMAGES:
            check_image_headers(samples, split)
            _CHECKED_TEST_IMAGES.add(key)


def _check_resumed_length(reached: int, total: int, cfg: dict) -> None:
    """A resumed run's length (--iters, or --epochs times the batches per epoch) cannot end before its checkpoint."""
    if total >= reached:
        return
    asked = f"--iters {cfg['iters']}" if cfg["iters"] is not None else f"--epochs {cfg['epochs']} ({total} iterations)"
    raise ConfigError(f"{asked} ends before iteration {reached}, which the checkpoint has reached: resume with a "
                      f"length of at least {reached} iterations, or leave --iters/--epochs out to keep the run's own")


# What a run writes besides its checkpoints and config.json: a new run in the folder (--overwrite, or a folder whose
# earlier run wrote no checkpoint) starts them afresh instead of appending to, or being shown beside, the old run's.
_RUN_OUTPUTS = ("log.jsonl", "metrics.json", "tensorboard/events.out.tfevents.*", "samples/it*.png")


def _clear_run_outputs(run_dir: Path) -> None:
    for pattern in _RUN_OUTPUTS:
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink()


class Trainer:
    def __init__(self, method_cls: type[Method], cfg: dict, stream=None, dataset: ReidDataset | None = None):
        """`dataset`: what ``method_cls.load_dataset(cfg)`` returned, when the caller has read it already (a
        multi-stage run reads its first stage's before it makes the run folder); None: fit reads it."""
        self.method_cls, self.cfg = method_cls, cfg
        self._given_dataset = dataset
        self.stream = stream or sys.stderr
        self.rank, self.world_size, local_rank = _init_distributed()
        self.main = self.rank == 0
        self.device = resolve_device(cfg["device"], local_rank)
        self.run_dir = Path(cfg["out"]) if cfg["out"] else default_run_dir(method_cls.name, cfg)
        cfg["out"] = str(self.run_dir)
        self.compiled_code: CompiledCodeCache | None = None  # set by fit when compile is on

    def log(self, message: str) -> None:
        if self.main:
            print(message, file=self.stream, flush=True)

    def _checkpoint_state(self, method, progress: _Progress):
        return {
            "method": self.method_cls.name, "iteration": progress.it, "epoch": progress.epoch,
            "epoch_position": progress.position, "config": self.cfg, "train_seconds": progress.train_seconds,
            "dataset": {"name": self.dataset.name, "num_train_pids": self.dataset.num_train_pids},
            "networks": {k: m.state_dict() for k, m in method.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in method.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in method.schedulers.items()},
            "scaler": self.run.scaler.state_dict() if self.run.scaler is not None else None,
            "rng": capture_rng_states(self._generators(method)),
            "loss_window": self._window.state() if self._window is not None else None,
        }

    def _generators(self, method) -> dict:
        return {"run": self.run.generator, **getattr(method, "generators", {})}

    def _check_weights_finite(self, method, it: int) -> None:
        """Stops a diverged run before its weights are written or evaluated: a NaN/Inf state saved over the last
        checkpoint (and at the next save over the previous one too) would lose the run's work. One host wait per
        network, only when a checkpoint or an evaluation is due (once per iteration: the final save and evaluation
        share one check)."""
        if self._finite_at == it:
            return
        bad = []
        for name, net in method.networks.items():
            tensors = [t.detach() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()]
            if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
                bad.append(name)
        if bad:
            lower = "lower the learning rates (--lr and the method's other *-lr options) or try --amp off"
            then = (f"The last checkpoint ({self.run_dir / LATEST}, iteration {self._last_saved}) is kept: {lower}, "
                    f"then --resume from it or start again." if self._last_saved is not None else
                    f"No checkpoint was written: {lower} and start again.")
            raise TrainingDivergedError(f"training diverged: the weights of {', '.join(bad)} hold NaN or Inf at "
                                        f"iteration {it}. {then}")
        self._finite_at = it

    def _save(self, method, progress: _Progress):
        it = progress.it
        self._check_weights_finite(method, it)
        self._last_saved = it
        if self.main:
            # a new run's first checkpoint does not keep an earlier run's (--overwrite) as its previous one, which a
            # corrupted-checkpoint error would offer to resume from
            path = save_checkpoint(self._checkpoint_state(method, progress), self.run_dir,
                                   keep_previous=self._continues_folder)
            self._continues_folder = True
            self.logfile.write({"it": it, "checkpoint": str(path)})
            if self.compiled_code is not None:
                self.compiled_code.save()
        if self.world_size > 1:
            torch.distributed.barrier()

    def _stop_on_request(self, method, progress: _Progress, signum: int, bar) -> None:
        it = progress.it
        if bar is not None:
            bar.close()
        if self._last_saved != it:  # not just written by ckpt_every
            self._save(method, progress)
        self.logfile.close()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"{name}: stopped after iteration {it}; checkpoint written to "
                                  f"{self.run_dir / LATEST}. To continue, run the same command again with --resume.",
                                  signum, it)

    def evaluate(self, method, it: int) -> dict | None:
        from ..eval.features import evaluate_method
        self._check_weights_finite(method, it)
        for m in method.networks.values():
            m.eval()
        try:
            if not self.main:
                return None
            # --backend names the implementation of the ops it has; ranking (rank_eval has no triton kernel) falls
            # back to auto under a backend without it, rather than failing once training is done
            backend = self.cfg["backend"]
            if backend not in ops_backend.IMPLEMENTED.get("rank_eval", ()):
                backend = "auto"
            with ops.use_backend(backend):
                result = evaluate_method(method.embed, self.dataset, self.cfg, self.device,
                                         ap_mode=self.cfg["ap_mode"], metric=method.eval_metric,
                                         **method.feature_options())
        finally:
            for m in method.networks.values():
                m.train()
        self.logfile.write({"it": it, **{f"eval/{k}": v for k, v in result.items() if not isinstance(v, str)}},
                           step=it)
        self.log(f"[eval it {it}] Rank-1 {100 * result['rank1']:.1f}%  Rank-5 {100 * result['rank5']:.1f}%  "
                 f"Rank-10 {100 * result['rank10']:.1f}%  mAP {100 * result['mAP']:.1f}% ({result['ap_mode']} AP, "
                 f"{result['num_valid']} queries)")
        return result

    def fit(self) -> dict:
        cfg = self.cfg
        if cfg["batch_size"] < self.method_cls.min_batch_size:
            raise ConfigError(f"{self.method_cls.name}: batch_size must be at least {self.method_cls.min_batch_size}"
                              f" (its BatchNorm layers need two samples per batch), got {cfg['batch_size']}")
        self._last_saved = None  # the iteration of this run folder's latest checkpoint, once known
        self._finite_at = None  # the iteration at which _check_weights_finite last found the weights finite
        self._window = None  # the loss window of the running _train, which checkpoints keep
        resume_state = self._load_resume_state()
        workers = self._set_threads()
        _seed_everything(cfg["seed"])
        ops.set_backend(cfg["backend"])
        _check_backend(cfg["backend"], self.device)
        self.dataset = self._given_dataset if self._given_dataset is not None else self.method_cls.load_dataset(cfg)
        if self.method_cls.evaluates:
            _check_test_images(self.dataset)
        self.run = Run(cfg, self.device, self.rank, self.world_size, self.log, self.method_cls)
        self.log(f"{self.method_cls.name}: {self.dataset.summary()}")
        method = self.method_cls(self.run, self.dataset)

        batches = ResumableBatches(method.batch_sampler(self.dataset, cfg["seed"]), self.rank, self.world_size)
        iters_per_epoch = len(batches)
        total = cfg["iters"] if cfg["iters"] is not None else cfg["epochs"] * iters_per_epoch
        if resume_state is not None:
            _check_resumed_length(resume_state["iteration"], total, cfg)
        method.configure(total)
        loader = DataLoader(
            method.train_items(self.dataset), batch_sampler=batches,
            num_workers=workers, pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg["seed"]))  # own generator: see the module docstring
        progress, saved_window, resumed = _Progress(), None, resume_state is not None
        self._continues_folder = resumed
        if resumed:
            progress = self._restore(method, resume_state)
            saved_window = resume_state.get("loss_window")
            del resume_state
            finished = self._finished_metrics(progress.it, total)
            if finished is not None:
                self.log(f"{self.method_cls.name}: this run finished at iteration {total}; nothing to train (metrics "
                         f"in {self.run_dir / 'metrics.json'}). To train longer, resume with a larger --iters or "
                         f"--epochs.")
                return finished
        # Everything a run needs is found by now (dataset, networks, teacher, checkpoint): only now is the folder
        # written, so that a mistake in the options leaves no half-made run behind
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resumed:
                _clear_run_outputs(self.run_dir)
            (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        self.logfile = RunLog(self.run_dir, enabled=self.main)
        # compiled code from an earlier run of this folder, perhaps on another machine (compile_cache.py)
        self.compiled_code = CompiledCodeCache(self.run_dir, self.log, writes=self.main) if self.run.compile else None
        if self.compiled_code is not None:
            self.compiled_code.load()
        per_iteration = method.images_per_iteration()  # (DG-Net's batch counts pairs of pairs, FD-GAN's pairs)
        batch = f" (batch size {cfg['batch_size']})" if per_iteration != cfg["batch_size"] else ""
        self.log(f"{self.method_cls.name}: {total} iterations ({iters_per_epoch} per epoch) of {per_iteration} "
                 f"images{batch} at {cfg['height']}x{cfg['width']} on {self.device}"
                 f"{f' x{self.world_size} processes' if self.world_size > 1 else ''}, amp {self.run.amp}, "
                 f"compile {'on' if self.run.compile else 'off'}, {torch.get_num_threads()} threads, "
                 f"preset {cfg['preset']}, run folder {self.run_dir}")
        last_batch = self._train(method, loader, batches, total, progress, saved_window)
        if self._last_saved != progress.it:  # (a run resumed at its end, stopped in its final evaluation, has it)
            self._save(method, progress)
        result = self.evaluate(method, progress.it) if method.evaluates else None
        self._save_samples(method, last_batch, progress.it)
        metrics = self._write_metrics(method, result, progress) if self.main else None
        self.logfile.close()
        if self.world_size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return metrics

    def _finished_metrics(self, it: int, total: int) -> dict | None:
        """metrics.json's dict when this folder's run already ended at `it` = `total` (a resume of a finished run:
        nothing to train, evaluate or write), else None."""
        path = self.run_dir / "metrics.json"
        if it < total or self._last_saved != it or not path.is_file():
            return None
        try:
            metrics = json.loads(path.read_text())
        except ValueError:
            return None
        return metrics if metrics.get("iterations") == it else None

    def _load_resume_state(self) -> dict | None:
        if not self.cfg.get("resume"):
            return None
        path = resolve_checkpoint(self.cfg["resume"], self.run_dir)
        state = load_checkpoint(path, self.method_cls.name)
        if path == self.run_dir / LATEST:
            self._last_saved = state["iteration"]
        self.log(f"resuming from {path} (iteration {state['iteration']})")
        return state

    def _set_threads(self) -> int:
        """Loader workers (--workers, else up to 4 leaving a core) and, on the CPU, the compute threads (--threads,
        else the cores the workers leave to each process). Returns the number of workers."""
        cores = os.cpu_count() or 1
        workers = self.cfg["workers"] if self.cfg["workers"] is not None else min(4, max(0, cores - 1))
        if self.device.type == "cpu":
            torch.set_num_threads(self.cfg["threads"] or max(1, cores // self.world_size - workers))
        return workers

    def _restore(self, method, state: dict) -> _Progress:
        for k, m in method.networks.items():
            try:
                m.load_state_dict(state["networks"][k])
            except RuntimeError as exc:  # size mismatches or missing keys: options that shape the network differ
                raise CheckpointError(_mismatch_message(k, state, self.cfg, exc)) from None
        for k, o in method.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in method.schedulers.items():
            load_scheduler_state(s, state["schedulers"][k])
        if self.run.scaler is not None and state["scaler"] is not None:
            self.run.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"], self._generators(method))
        return _Progress(state["iteration"], state["epoch"], state["epoch_position"], state["train_seconds"])

    def _train(self, method, loader, batches, total: int, progress: _Progress, saved_window: dict | None = None):
        """Iterations until `total`, epoch after epoch, with the periodic logs, checkpoints, evaluations and sample
        grids. Returns the last batch trained on (None when there was none)."""
        bar = ProgressBar(total, progress.it, stream=self.stream) if self.main else None
        window = self._window = _LossWindow(progress.it, saved_window, self.device)
        last_batch = None
        # Compilation is silent and can take minutes: say so, and how long the first iteration took.
        first_step = self.run.compile and progress.it < total
        if first_step:
            self.log(f"compile on ({self.run.compile_mode} mode): the first iteration compiles the networks "
                     "(minutes for the GAN methods on a GPU; later ones may compile more, e.g. DG-Net's when its "
                     "warm-up ends); the compiled code is cached under TORCHINDUCTOR_CACHE_DIR (default in /tmp), so "
                     "the next run on this machine starts sooner, and in the run folder, so that a resumed run "
                     "reuses it on another machine too")
        # Ctrl-C / SIGTERM: finish the running iteration, write a checkpoint there, stop (TrainingInterrupted)
        progress_lines = compile_progress(self.log) if self.run.compile else contextlib.nullcontext()
        with _stop_requests(self.world_size == 1) as stop_requests, progress_lines:
            while progress.it < total:
                batches.set_epoch(progress.epoch, skip=progress.position)
                window.restart_clock(progress.it)  # the rate excludes loader start-up
                try:
                    for batch in _fetch(loader, stop_requests):
                        started = time.perf_counter()
                        last_batch = self._step(method, batch, total, progress, window)
                        if first_step:
                            self.log(f"first iteration, compilation included: {time.perf_counter() - started:.1f} s")
                            first_step = False
                            self.compiled_code.save()
                        if self._after_step(method, last_batch, total, progress, window, bar, stop_requests):
                            break
                    else:  # the epoch ran out (a resumed run at an epoch's end gets here at once, with no batch)
                        progress.epoch, progress.position = progress.epoch + 1, 0
                except _LoaderStopped:  # the stop request reached the loader's workers first
                    self._stop_on_request(method, progress, stop_requests[0], bar)
        if bar is not None:
            bar.close()
        return last_batch

    def _step(self, method, batch: dict, total: int, progress: _Progress, window: _LossWindow) -> dict:
        """One iteration. Returns the batch on the device."""
        t0 = time.perf_counter()
        batch = to_device(batch, self.device)
        losses = self.run.train_iteration(method, batch, progress.it)
        progress.it += 1
        progress.position += 1
        window.add(losses)
        # The device is waited for only where the host reads results (the logged means, every log_every
        # iterations): between those, the host queues the next steps while the GPU runs.
        if self._log_due(progress.it, total) and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        progress.train_seconds += time.perf_counter() - t0
        return batch

    def _log_due(self, it: int, total: int) -> bool:
        return bool(self.cfg["log_every"] and it % self.cfg["log_every"] == 0) or it == total

    def _after_step(self, method, batch, total: int, progress: _Progress, window: _LossWindow, bar,
                    stop_requests: list) -> bool:
        """The log line, checkpoint, evaluation and stop request due after an iteration. True at the last one."""
        cfg, it = self.cfg, progress.it
        if self._log_due(it, total):
            means, rate = window.means(), window.rate(it)
            lrs = {f"lr/{k}": o.param_groups[-1]["lr"] for k, o in method.optimizers.items()}
            self.logfile.write({"it": it, "epoch": progress.epoch, **means, **lrs,
                                "images_per_s": rate * method.images_per_iteration()}, step=it)
            if bar is not None:
                bar.update(it, means, rate, force=True)
            window.reset(it)
        if it >= total:
            return True
        if cfg["ckpt_every"] and it % cfg["ckpt_every"] == 0:
            self._save(method, progress)
        if cfg["eval_every"] and it % cfg["eval_every"] == 0:
            if method.evaluates:
                self.evaluate(method, it)
            self._save_samples(method, batch, it)
        if stop_requests:
            self._stop_on_request(method, progress, stop_requests[0], bar)
        return False

    def _write_metrics(self, method, result: dict | None, progress: _Progress) -> dict:
        # train_seconds counts whole iterations only (data waits, evaluation and checkpoints excluded)
        it, seconds = progress.it, progress.train_seconds
        images_per_s = it * method.images_per_iteration() / seconds if seconds > 0 else 0.0
        metrics = {}
        if result is not None:
            metrics = {"rank1": result["rank1"], "rank5": result["rank5"], "rank10": result["rank10"],
                       "mAP": result["mAP"], "ap_mode": result["ap_mode"],
                       "mAP_by_ap_mode": result["mAP_by_ap_mode"], "metric": result["metric"],
                       "num_queries": result["num_valid"]}
        metrics.update({"dataset": self.dataset.name, "method": self.method_cls.name, "iterations": it,
                        "images_per_s": round(images_per_s, 2), "train_time": format_duration(seconds)})
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        scores = (f"Rank-1 {100 * metrics['rank1']:.1f}%  mAP {100 * metrics['mAP']:.1f}%  "
                  if result is not None else "(not evaluated) ")
        self.log(f"{self.method_cls.name} on {self.dataset.name} after {it} iterations: {scores}"
                 f"({images_per_s:.{0 if images_per_s >= 10 else 2}f} images/s); metrics in "
                 f"{self.run_dir / 'metrics.json'}")
        return metrics

    def _save_samples(self, method, batch, it) -> None:
        if not self.main or batch is None:
            return
        with torch.no_grad():
            grid = method.sample_images(batch)
        if grid is not None:
            save_image_grid(grid, self.run_dir / "samples" / f"it{it:07d}.png")


def train(method_cls: type[Method], cfg: dict, stream=None) -> dict:
    """Train `method_cls` with a resolved config (see :mod:`reidfast.train.config`): every stage of a multi-stage
    method. Returns metrics.json's dict (None on ranks other than 0)."""
    return method_cls.run(cfg, stream)


__all__ = ["Method", "TrainingDivergedError", "TrainingInterrupted", "Run", "WarmupStepSchedule", "LinearDecaySchedule",
           "Trainer", "train", "CheckpointError", "save_image_grid", "ResumableBatches"]
