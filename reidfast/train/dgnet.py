"""DG-Net ('Joint Discriminative and Generative Learning for Person Re-identification', CVPR 2019): its
losses and update order only; the networks are in :mod:`reidfast.models.dgnet`, everything else in the shared loop.

An iteration takes 2B same-identity pairs: (a, p) for the first B, (b, q) for the other B (the paper's two
loaders of B = 8). Es encodes structure s, Ea appearance f; G(s_b, f_a) = x_ba has a's identity in b's structure.

1. Generator pass: x_ba, x_ab (swaps), x_aa, x_bb (self reconstruction), x_ap, x_bq (same-identity
   reconstruction, G(s_a, f_p)). Es, G and D have no batch-dependent normalization, so their several passes run
   as one batched call each, which changes nothing but the speed. Ea's passes batch as well: its BatchNorm layers
   are split (reidfast.nn.SplitBatchNorm1d/2d), so a call over several loader batches normalizes each by its own
   statistics and steps the running statistics once per batch, in order, as the original's one call per batch
   does (3 calls of Ea an iteration: its codes of a, p, b, q, without gradient; the frozen view's code and primary
   logits of the two swaps; the identity losses on a, b, p, q and the two swaps; where the original makes 16 on
   batches of B). The clean real images step Ea's running statistics as the original's calls do (4 of its 6
   such updates: its D step encodes a and b once more, which the shared pass does not repeat).
   The teacher's view is split the same way: it labels both swaps and their mirrors in one call (4 in the
   original).
   The swaps of this one pass serve both steps below. ``--faithful`` reproduces the original's order instead: a
   gradient-free generator pass for D's step and a second one for G's, one call per pass, a deep copy of Ea.
2. D step: LSGAN on real [a, b] vs the swaps, per scale, plus R1 (weight 0.01 per scale) on the real images.
3. G + Ea step (one backward, both optimizers step):
   - image reconstruction L1 (self and same-identity), weight 5;
   - code reconstruction L1 of s (Es of the swaps) and f (Ea of the swaps) to the codes as encoded (detached
     targets), and cycle reconstruction G(Es(x_ab), Ea(x_ba)) = x_a, ramped in after the warm-up to 1, 1 and 2.
     Es's pass over the swaps, whose codes both reconstructions use, follows the published use_encoder_again
     (--encoder-again P, 0.5): a coin per iteration, for both swaps. Up (probability P), Es encodes the swaps
     detached and its parameters are trained (the encoder tuned, the input fixed); down, a frozen Es encodes the
     live swaps and the gradient reaches G through them, not Es's parameters (the encoder fixed, the input tuned).
     The coin is drawn from the run's generator outside compiled code (so a resumed run draws the same coins) and
     enters the G + Ea losses as a tensor: the fast order runs one Es pass whose parameters and input pass their
     gradients times the coin and times 1 - coin (exact for 1 and 0; one compiled graph for both values);
     --faithful runs the original's branches (Es on detached swaps, or a deep copy of Es). Logged as es_tuned
     (per logged window, the fraction of iterations with the coin up);
   - identity loss of the swaps (cross-entropy of the primary head of Ea's frozen view to the appearance
     donor's id), weight 0.5;
   - adversarial (LSGAN), weight 2 per scale;
   - Ea on real images (the published configuration's): L_id = CE(primary(a), y_a) + CE(primary(b), y_b)
     + lambda_fine [CE(fine(a), y_a) + CE(fine(b), y_b)], weight 1 (logged as id; the fine head learns nothing
     from real images before the warm-up ends), and L_pid = CE(primary(p), y_a) + CE(primary(q), y_b) of the
     same-identity partners, weight 1 (--pid-w; logged as pid);
   - Ea on the swaps: primary feature learning: KL divergence of the primary head to the teacher's soft label
     (the mean of its softmax over the swap and its mirror), lambda_prim ramped 0 -> 2 after the warm-up;
     fine-grained mining: cross-entropy of the fine head to the structure donor's id, lambda_fine = 0.2
     lambda_prim. The teacher normalizes by the statistics of the batch it is given (the published
     configuration's train_bn: the swap batch, or its mirror, as one call each) through a frozen view of it
     without running statistics (made when first needed): no gradient reaches it, and its running statistics
     stay as trained.
   The appearance code is detached from the generator losses: the generator-side losses see Ea through a
   frozen view made once (Ea's parameter storage, detached, so it follows every update; its BatchNorm layers
   normalize by the batch's statistics and keep none, Ea's running statistics untouched; its heads' dropout off,
   as the published copy in eval mode with BatchNorm in training mode) instead of a per-iteration deep copy, so
   only the identity losses train Ea.
   Random erasing (p 0.5) is applied to the inputs of the real-image identity losses only (a, b, p, q); the
   generator, D, the teacher and the generated-image losses (identity of the swaps, primary, fine-grained) see
   images unerased.

With compile on, the fast order compiles three functions whole: the generator pass (1), D's losses (2) and the
G + Ea step's losses (3), each one graph; the backwards and optimizer steps run between them. Their random draws
(random erasing's, Es's coin) are made from the run's generator before them and enter as tensors.

The paper's settings are the defaults (256x128, 100k iterations, SGD for Ea at 0.002 / heads 0.02, Adam 1e-4 for
Es, G, the MLPs and D, x0.1 at 60k and 90k, warm-up 30k, ramps of 0.0005 per iteration). The cpu-quick preset
scales everything down (see :attr:`DGNet.presets`) so that the CPU finishes in minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import signal
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchAugment, BatchedSampler, SameIdentityPairSampler, normalize
from ..models.baseline import ReidBaseline
from ..models.dgnet import AppearanceEncoder, Generator, MultiScaleDiscriminator
from ..nn import batchnorm_groups_of, split_batchnorm
from .checkpoint import CheckpointError, LATEST, load_checkpoint, resolve_checkpoint
from .loop import Method, WarmupStepSchedule
from .penalties import input_gradient

GRID_COLUMNS = 8  # what the loop's save_image_grid puts in a row
CPU_QUICK_ITERS = 200
PAPER_ITERS = 100_000


def code_l1(reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code reconstruction loss: L1 to the code as encoded, a fixed target (detached, as the published code's
    reconstruction criterion has it). Only the reconstruction is pulled: Es is not also trained to move the
    structure code toward what the swap gives back."""
    return F.l1_loss(reconstructed.float(), target.detach().float())


def routed(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x's value, with its gradient multiplied by `keep`, a 0-dim tensor of 1 (passed on) or 0 (stopped):
    x.detach() + keep * (x - x.detach()). Exact at both: the forward adds an exact 0 to x, the backward multiplies
    by exactly 1 or 0. A tensor, where an `if` on a number would make a compiled graph per value."""
    fixed = x.detach()
    return fixed + keep * (x - fixed)


def ramp(it: int, start: int, per_iter: float, maximum: float) -> float:
    """A loss weight that is 0 before iteration `start` (0-based) and grows by `per_iter` per iteration from
    there (per_iter at `start` itself) up to `maximum`: the paper's warm-up ramps."""
    return 0.0 if it < start else min(maximum, per_iter * (it - start + 1))


def frozen_view(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters are its parameters detached (same storage: in-place updates of the
    original, by its optimizer or load_state_dict, show through; no gradient reaches them) and whose BatchNorm layers
    keep no running statistics: they always normalize by the batch's statistics, as the original's BatchNorm does in
    training mode, and have nothing to update (no running-statistics write and no counter increment per layer and
    call). Made once, instead of a copy per use."""
    view = copy.deepcopy(module)
    for original, copied in zip(module.modules(), view.modules()):
        for name, param in original.named_parameters(recurse=False):
            setattr(copied, name, nn.Parameter(param.detach(), requires_grad=False))
        if isinstance(copied, nn.modules.batchnorm._BatchNorm):
            copied.track_running_stats = False
            copied.running_mean = copied.running_var = copied.num_batches_tracked = None
    return view


def _per_group(outputs: list[torch.Tensor], sizes: list[int]) -> list[list[torch.Tensor]]:
    """The outputs of a batched call (D's one per scale, Ea's code and logits, each over the groups'
    concatenation) as [group][output]."""
    return [list(per_group) for per_group in zip(*[o.split(sizes) for o in outputs])]


class DGNet(Method):
    name = "dgnet"
    min_batch_size = 2
    resize_filter = "bicubic"  # the published pipeline resizes training and test images bicubically
    eval_flip = False  # Ea.features sums the image's and its mirror's views itself (the published test feature)
    defaults = {
        "iters": PAPER_ITERS, "epochs": None, "batch_size": 8, "lr": 0.002, "head_lr_mult": 10.0,
        "gen_lr": 1e-4, "dis_lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "lr_decay_at": [0.6, 0.9],
        "lr_gamma": 0.1, "height": 256, "width": 128, "backbone_width": 64, "gan_width": 1.0, "pretrained": "auto",
        "pad": 10, "erasing": 0.5, "teacher": None, "teacher_iters": 600,
        "warm_iters": 30_000, "ramp_per_iter": 0.0005,
        "recon_x_w": 5.0, "recon_f_w": 1.0, "recon_s_w": 1.0, "cycle_w": 2.0, "id_w": 1.0, "pid_w": 1.0,
        "id_gen_w": 0.5,
        "prim_w": 2.0, "fine_ratio": 0.2, "adv_w": 2.0, "r1_w": 0.01, "ap_mode": "market",
        "faithful": False, "ea_init": "pretrained", "encoder_again": 0.5,
    }
    # 200 iterations with the schedule's fractions kept: warm-up at 30%, ramps 500x faster (full weight
    # 2000 / 500 = 4 iterations after it, as 2000 iterations are after 30k in the paper), decay at 60% and 90%.
    # No ImageNet weights exist at width 16: Ea's ResNet-50 starts from the teacher's (the baseline preset's,
    # 600 iterations) and fine-tunes at a quarter of the paper's rates (0.0005, heads 0.005: at the paper's,
    # batch-8 heads from scratch overshoot here, the identity loss rising above chance); G and D train at 10x
    # the paper's rate to learn something in 200 iterations.
    presets = {
        "cpu-quick": {"iters": CPU_QUICK_ITERS, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                      "pad": 4, "synthetic_ids": 120, "lr": 0.0005, "gen_lr": 1e-3,
                      "dis_lr": 1e-3, "warm_iters": int(0.3 * CPU_QUICK_ITERS),
                      "ramp_per_iter": 0.0005 * PAPER_ITERS / CPU_QUICK_ITERS, "teacher_iters": 600,
                      "ckpt_every": 100, "log_every": 10, "ea_init": "teacher"},
    }

    @classmethod
    def unused_options(cls, given: set[str], cfg: dict) -> list[str]:
        if "teacher_iters" in given and cfg["teacher"]:
            return [f"dgnet: --teacher-iters sets the length of the teacher trained when no --teacher is given; "
                    f"this run uses the teacher {cfg['teacher']} (ignored)"]
        return []

    @classmethod
    def add_arguments(cls, parser) -> None:
        S = argparse.SUPPRESS
        g = parser.add_argument_group("dgnet")
        g.add_argument("--teacher", default=S, metavar="RUN_DIR",
                       help="a baseline run folder (python -m reidfast.train baseline) whose soft labels drive "
                            "primary feature learning; without it the synthetic preset trains a short one first")
        g.add_argument("--teacher-iters", type=int, default=S, metavar="N",
                       help="iterations of the baseline teacher trained when no --teacher is given")
        g.add_argument("--backbone-width", type=int, default=S, help="Ea's ResNet-50 base width (64: ResNet-50)")
        g.add_argument("--gan-width", type=float, default=S,
                       help="channel multiplier of Es, G, the AdaIN MLPs and D (1: the paper's)")
        g.add_argument("--pretrained", default=S, metavar="PATH",
                       help="torchvision resnet50 weights for Ea; auto: the torch hub cache's if present; none")
        g.add_argument("--head-lr-mult", type=float, default=S, help="Ea heads' lr = X * lr (10: 0.02 vs 0.002)")
        g.add_argument("--gen-lr", type=float, default=S, help="Adam lr of Es, G and the AdaIN MLPs (1e-4)")
        g.add_argument("--dis-lr", type=float, default=S, help="Adam lr of D (1e-4)")
        g.add_argument("--lr-decay-at", type=float, nargs="+", default=S, metavar="FRAC",
                       help="fractions of the run after which every lr is multiplied by --lr-gamma (0.6 0.9)")
        g.add_argument("--warm-iters", type=int, default=S, metavar="N",
                       help="iterations before the code/cycle reconstruction and teacher losses ramp in (30000)")
        g.add_argument("--ramp-per-iter", type=float, default=S, help="ramp increment per iteration (0.0005)")
        g.add_argument("--faithful", action="store_true", default=S,
                       help="the original's order of operations (a separate generator pass for D's step, one "
                            "call per pass of Es, G and D, a deep copy of Ea): same losses, slower; for comparison")
        g.add_argument("--ea-init", choices=("pretrained", "teacher"), default=S,
                       help="Ea's ResNet-50 starts from --pretrained (the paper: ImageNet), or from the teacher's "
                            "backbone (cpu-quick: no ImageNet weights exist at its reduced width)")
        g.add_argument("--encoder-again", type=float, default=S, metavar="P",
                       help="probability per iteration that Es is trained on the detached swaps for the structure "
                            "code and cycle reconstructions; otherwise a frozen Es encodes the live swaps and the "
                            "gradient reaches G (0.5, the published use_encoder_again; 1: always the first, 0: never)")
        g.add_argument("--erasing", type=float, default=S,
                       help="random erasing probability on the inputs of the real-image identity losses (a, b, p, q) "
                            "(0.5)")
        g.add_argument("--pad", type=int, default=S,
                       help="edge padding (the border pixels repeated) before the random crop, pixels (10)")
        for name, text in (("recon-x-w", "image reconstruction (5)"), ("recon-f-w", "appearance code recon (1)"),
                           ("recon-s-w", "structure code recon (1)"), ("cycle-w", "cycle reconstruction (2)"),
                           ("id-w", "identity loss on real images a, b (1)"),
                           ("pid-w", "identity loss of the same-identity partners p, q (1)"),
                           ("id-gen-w", "identity loss on swaps (0.5)"),
                           ("prim-w", "lambda_prim, primary feature learning (2)"),
                           ("fine-ratio", "lambda_fine / lambda_prim (0.2)"), ("adv-w", "G adversarial, per scale (2)"),
                           ("r1-w", "R1 penalty, per scale (0.01)")):
            g.add_argument(f"--{name}", type=float, default=S, help=f"weight: {text}")

    def __init__(self, run, dataset):
        self.run = run
        cfg = run.cfg
        self.num_classes = dataset.num_train_pids
        self.faithful = bool(cfg["faithful"])
        ea = AppearanceEncoder(self.num_classes, backbone_width=cfg["backbone_width"], pretrained=cfg["pretrained"],
                               log=run.log)
        split_batchnorm(ea)  # batch statistics per loader batch: Ea's calls over several batches batch exactly
        self.ea = run.place(ea)
        self.gen = run.place(Generator(ea.code_features, cfg["gan_width"]))
        self.dis = run.place(MultiScaleDiscriminator(cfg["gan_width"]))
        if run.world_size > 1:  # the shared Ea/G modules are called in several roles per step
            raise ValueError("dgnet does not run under torchrun yet: train on one device")
        self.frozen_ea = frozen_view(self.ea)  # Ea as the generator-side losses see it (module docstring)
        self._ea_copy = None  # --faithful: the iteration's deep copy of Ea in its place
        # The fast order's step is three functions of the networks, each compiled as one graph when compile is on:
        # the generator pass, D's losses (R1 included) and the G + Ea step's losses; the backwards, the optimizer
        # steps and the losses' weights run between them. The step waits on the host's launches (the reference's
        # profile on an H100: 274 ms of GPU time per step, against 542-579 ms of wall time unprofiled), as SA-GAN's
        # did until its steps compiled whole (1.0x -> 1.75x); a graph per network also compiled Es, G and Ea again
        # per batch size and per requires_grad of their inputs. --faithful compiles each network on its own,
        # called once per loader batch as in the original.
        wrap = run.wrap if self.faithful else (lambda module: module)
        whole = (lambda fn: fn) if self.faithful else run.compiled
        self.es, self.dec, self.ea_call, self.dis_call = (wrap(m) for m in (self.gen.encoder, self.gen, self.ea,
                                                                            self.dis))
        self.frozen_call = wrap(self.frozen_ea)
        self.r1_call = run.compiled(self.real_scores_and_r1) if self.faithful else self.real_scores_and_r1
        self.generator_pass = whole(self._generator_pass)
        self.discriminator_losses = whole(self._discriminator_losses)
        self.generator_losses = whole(self._generator_losses)
        self._teacher_view = (None, None, None)  # (teacher, its batch-statistics view, its callable): _teacher_labeler
        backbone_lr = cfg["lr"]
        if cfg["ea_init"] not in ("pretrained", "teacher"):
            raise ValueError(f"dgnet: ea_init must be 'pretrained' or 'teacher', got {cfg['ea_init']!r}")
        heads = list(self.ea.primary.parameters()) + list(self.ea.fine.parameters())
        self.opt_ea = run.optimizer(
            torch.optim.SGD,
            [{"params": self.ea.backbone.parameters(), "lr": backbone_lr},
             {"params": heads, "lr": cfg["head_lr_mult"] * backbone_lr}],
            lr=backbone_lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=True)
        adam = dict(betas=(0.0, 0.999), weight_decay=cfg["weight_decay"])
        self.opt_gen = run.optimizer(torch.optim.Adam, self.gen.parameters(), lr=cfg["gen_lr"], **adam)
        self.opt_dis = run.optimizer(torch.optim.Adam, self.dis.parameters(), lr=cfg["dis_lr"], **adam)
        self.augment = BatchAugment(pad=cfg["pad"], erase_p=0.0, pad_mode="edge")  # the published edge padding
        # erasing alone, on images that are already normalized (identity mean/std: no second normalization), as
        # the published random erasing: area 0.02-0.4, aspect ratio uniform in [0.3, 3.33], filled with 0
        self.erase = BatchAugment(flip_p=0.0, pad=0, erase_p=cfg["erasing"], mean=(0.0, 0.0, 0.0),
                                  std=(1.0, 1.0, 1.0), erase_ratio=(0.3, 1 / 0.3), erase_ratio_scale="linear")
        self.teacher = None  # loaded by configure() (training only), unless already set (benchmarks)
        self.networks = {"ea": self.ea, "gen": self.gen, "dis": self.dis}
        self.optimizers = {"ea": self.opt_ea, "gen": self.opt_gen, "dis": self.opt_dis}
        self.schedulers = {}

    # --- setup -----------------------------------------------------------------------------------------------
    def batch_sampler(self, dataset, seed):
        """2B (image, same-identity image) pairs per iteration: the first B are (a, p), the last B (b, q)."""
        return BatchedSampler(SameIdentityPairSampler(dataset.train, seed), 2 * self.run.cfg["batch_size"])

    def images_per_iteration(self) -> int:
        return 4 * self.run.cfg["batch_size"]  # a, p, b, q

    @classmethod
    def continues_without_checkpoint(cls, run_dir: Path) -> bool:
        """A run stopped while training its own teacher (RUN/teacher holds a checkpoint but no metrics yet): it has
        no checkpoint of its own, and running it again continues the teacher."""
        teacher = Path(run_dir) / "teacher"
        return (not (Path(run_dir) / LATEST).is_file() and (teacher / LATEST).is_file()
                and not (teacher / "metrics.json").is_file())

    def configure(self, total_iters: int) -> None:
        cfg = self.run.cfg
        if total_iters <= cfg["warm_iters"]:
            self.run.log(f"dgnet: warning: the run ends at iteration {total_iters}, before the warm-up does "
                         f"(--warm-iters {cfg['warm_iters']}): the code and cycle reconstruction, primary and "
                         f"fine-grained losses stay off for the whole run")
        milestones = sorted({max(1, round(f * total_iters)) for f in cfg["lr_decay_at"]})
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, WarmupStepSchedule(0, milestones,
                                                                                         cfg["lr_gamma"]))
                           for name, opt in self.optimizers.items()}
        if self.teacher is None:
            self.teacher = self._load_teacher(self._teacher_dir())
            if cfg["ea_init"] == "teacher":
                self.ea.backbone.load_state_dict(self.teacher.backbone.state_dict())
                self.run.log("dgnet: Ea's ResNet-50 starts from the teacher's (--ea-init teacher)")

    def _teacher_dir(self) -> Path:
        cfg = self.run.cfg
        if cfg["teacher"]:
            return Path(cfg["teacher"]).expanduser()
        synthetic = cfg["dataset"] in ("synthetic", "synthetic-market") or (cfg["dataset"] is None
                                                                            and cfg["data_root"] is None)
        if not synthetic:
            raise ValueError("dgnet needs a teacher on real data: train one with python -m reidfast.train baseline "
                             "(same dataset) and pass --teacher RUN_DIR")
        folder = Path(cfg["out"]) / "teacher"
        # finished: the loop writes metrics.json last; a checkpoint without it is a teacher stopped part-way
        if not (folder / "metrics.json").is_file():
            if self.run.world_size > 1:
                raise ValueError("dgnet under torchrun needs --teacher RUN_DIR (train the baseline first)")
            resume = (folder / LATEST).is_file()
            self.run.log(f"dgnet: no --teacher given: {'continuing' if resume else 'training'} a short baseline "
                         f"teacher first ({cfg['teacher_iters']} iterations) in {folder}")
            self._train_teacher(folder, resume)
        cfg["teacher"] = str(folder)  # saved with the checkpoint: a resumed run reuses this teacher
        return folder

    def _train_teacher(self, folder: Path, resume: bool) -> None:
        from .baseline import Baseline  # the teacher is the baseline method's run
        from .config import resolve_config
        from .loop import TrainingInterrupted, train
        cfg = self.run.cfg
        flags = {key: cfg[key] for key in ("dataset", "data_root", "synthetic_ids", "height", "width", "device",
                                           "seed", "workers", "threads", "amp", "compile", "backend")}
        # the teacher reads as many images per iteration as DG-Net does (a, p, b, q): 32 in both cpu-quick presets
        flags.update(out=str(folder), iters=cfg["teacher_iters"], ckpt_every=0, backbone_width=cfg["backbone_width"],
                     last_stride=1, pretrained=cfg["pretrained"], preset=cfg["preset"],
                     batch_size=self.images_per_iteration())
        if resume:
            flags["resume"] = True
        teacher_cfg = resolve_config(Baseline.defaults, Baseline.presets, {}, flags,
                                     device_is_cpu=self.run.device.type == "cpu")
        try:
            train(Baseline, teacher_cfg)
        except TrainingInterrupted as exc:  # this dgnet run has no checkpoint yet: --resume would find none
            name = signal.Signals(exc.signal_number).name
            raise TrainingInterrupted(f"{name}: stopped after iteration {exc.iteration} of the teacher; its "
                                      f"checkpoint is in {folder}. To continue, run the same command again: the "
                                      f"teacher continues from it.", exc.signal_number, exc.iteration) from None

    def _load_teacher(self, folder: Path) -> ReidBaseline:
        path = resolve_checkpoint(folder, folder, flag="--teacher")
        state = load_checkpoint(path, "baseline", flag="--teacher")
        if state["dataset"]["num_train_pids"] != self.num_classes:
            raise CheckpointError(f"--teacher {folder}: trained on {state['dataset']['num_train_pids']} identities, "
                                  f"this run has {self.num_classes} (train the teacher on the same dataset)")
        tcfg = state["config"]
        teacher = ReidBaseline(self.num_classes, last_stride=tcfg["last_stride"], width=tcfg["backbone_width"],
                               dropout=tcfg["dropout"], pretrained="none", log=lambda message: None,
                               bottleneck=tcfg.get("bottleneck", 512))
        teacher.load_state_dict(state["networks"]["model"])
        teacher.requires_grad_(False)
        self.run.log(f"dgnet: teacher {path} (baseline, iteration {state['iteration']})")
        return self.run.place(teacher).eval()

    # --- the pieces of an iteration -------------------------------------------------------------------------
    def loss_weights(self, it: int) -> dict:
        cfg = self.run.cfg
        start, rate = cfg["warm_iters"], cfg["ramp_per_iter"]
        prim = ramp(it, start, rate, cfg["prim_w"])
        return {"recon_f": ramp(it, start, rate, cfg["recon_f_w"]), "recon_s": ramp(it, start, rate, cfg["recon_s_w"]),
                "cycle": ramp(it, start, rate, cfg["cycle_w"]), "prim": prim, "fine": cfg["fine_ratio"] * prim}

    # --- Ea as the generator losses see it (no gradient reaches Ea) -------------------------------------------
    def _code(self, x, live: bool = True):
        """The appearance code of a real image: Ea's own in training mode, without gradient, as the original
        encodes the real images, so that they also step Ea's running statistics (batch statistics either way: the
        same code as the frozen view's). live=False (--faithful's D-step pass) takes it from the iteration's deep
        copy, whose statistics are thrown away: the running statistics then see the same updates, in the same
        order, as in the fast order."""
        return self.ea_call(x)[0] if live else self._ea_copy.appearance(x)

    def _loader_batches(self, **groups):
        """Within the block, the split BatchNorm layers of Ea (ea=g), of its frozen view (frozen=g) and of the
        teacher's view (teacher=g) treat a batch as g loader batches: the fast order's batched calls. Set around a
        whole (compiled) step function, whose graph holds each count as a constant; nothing under --faithful (one
        call per loader batch)."""
        if self.faithful:
            return contextlib.nullcontext()
        modules = {"ea": self.ea, "frozen": self.frozen_ea, "teacher": self._teacher_view[1]}
        return batchnorm_groups_of([(modules[name], count) for name, count in groups.items()])

    # --- Es, G, D and Ea over several inputs: one batched call, or one call each (--faithful) -------------
    def _batched(self, fn, *inputs):
        """fn over several aligned input groups, e.g. _batched(G, [s1, s2], [f1, f2]) -> [G(s1, f1), G(s2, f2)].
        Ea and its frozen view take each group's own batch statistics under _loader_batches."""
        if self.faithful:
            return [fn(*args) for args in zip(*inputs)]
        sizes = [x.shape[0] for x in inputs[0]]
        out = fn(*[torch.cat(group) for group in inputs])
        if isinstance(out, (list, tuple)):  # D: one output per scale; Ea: code, primary and fine logits
            return _per_group(out, sizes)
        return list(out.split(sizes))

    def real_scores_and_r1(self, images: torch.Tensor, sizes: list[int]):
        """D's score maps on real images (one per scale) and their R1 penalty, the sum over scales and over the
        input groups of `sizes` of the group's mean ||grad_x sum D_scale(x)||^2. Each scale's input gradient, and
        its scores, by penalties.input_gradient (which compiles) through that scale's branch: the downsampling to
        its scale, then its network."""
        scores, r1 = [], images.new_zeros((), dtype=torch.float32)
        for i, branch in enumerate(self.dis.scales):
            def to_scale(x, i=i):
                for _ in range(i):
                    x = MultiScaleDiscriminator.downsample(x)
                return x

            grad, out = input_gradient(branch, images, to_scale)
            scores.append(out)
            r1 = r1 + sum(g.float().square().flatten(1).sum(1).mean() for g in grad.split(sizes))
        return scores, r1

    def _real_scores(self, reals: list[torch.Tensor], r1: bool):
        """(D's outputs per real image group and scale, as _batched gives them; the R1 penalty or zero)."""
        if not r1:
            return self._batched(self.dis_call, reals), reals[0].new_zeros((), dtype=torch.float32)
        if self.faithful:  # one call per group, as the original
            parts = [self.r1_call(x, [x.shape[0]]) for x in reals]
            return [p[0] for p in parts], sum(p[1] for p in parts)
        sizes = [x.shape[0] for x in reals]
        scores, penalty = self.r1_call(torch.cat(reals), sizes)
        return _per_group(scores, sizes), penalty

    def _teacher_labeler(self):
        """The teacher as it labels the swaps, made when first needed (configure() or a benchmark sets the teacher)
        and again if the teacher is replaced: a frozen view of it (its parameters detached, no gradient) in eval
        mode (dropout off) whose BatchNorm layers keep no running statistics and so normalize by the statistics
        of the batch they are given, as the published configuration's teacher does (train_bn: true), while the
        teacher's own running statistics stay as trained. Its BatchNorm layers are split, so that the fast order
        labels several loader batches and their mirrors in one call, each normalized by its own statistics.
        Returns the callable (under --faithful the run's compiled module, as every network there)."""
        if self._teacher_view[0] is not self.teacher:
            view = split_batchnorm(frozen_view(self.teacher)).eval()
            self._teacher_view = (self.teacher, view, self.run.wrap(view) if self.faithful else view)
        return self._teacher_view[2]

    @torch.no_grad()
    def teacher_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's soft label: its softmax averaged over the image and its mirror, each normalized by its
        own batch statistics (see _teacher_labeler): under --faithful one call each, as the original; in the fast
        order one call over the images and their mirrors, whose loader batches the caller sets
        (_loader_batches(teacher=2 * batches))."""
        teacher = self._teacher_labeler()
        if self.faithful:
            logits = torch.cat([teacher(images)[0], teacher(images.flip(3))[0]])
        else:
            logits, _ = teacher(torch.cat([images, images.flip(3)]))
        return logits.float().softmax(1).view(2, images.shape[0], -1).mean(0)

    def _split(self, batch):
        run = self.run
        images = batch["image"]  # (2B, 2, 3, H, W): (image, same-identity partner)
        pairs = images.shape[0]
        if pairs < 2 or pairs % 2:
            raise ValueError(f"dgnet: a batch needs an even number of pairs, got {pairs}")
        x = run.images(self.augment(images.flatten(0, 1), run.generator)).view(images.shape[:2] + (-1,) +
                                                                                tuple(images.shape[-2:]))
        half = pairs // 2
        pids = batch["pid"][:, 0]
        return x[:half, 0], x[:half, 1], x[half:, 0], x[half:, 1], pids[:half], pids[half:]

    def _generator_pass(self, x_a, x_p, x_b, x_q, live_codes: bool = True):
        """Codes of the real images (_code, live or not) and the generator pass: ((f_a, f_b, f_p, f_q), (s_a, s_b),
        swaps [x_ba, x_ab], self reconstructions [x_aa, x_bb], same-identity reconstructions [x_ap, x_bq])."""
        with torch.no_grad():  # the appearance code is detached from the generator losses
            f_a, f_p, f_b, f_q = self._batched(lambda x: self._code(x, live=live_codes), [x_a, x_p, x_b, x_q])
        s_a, s_b = self._batched(self.es, [x_a, x_b])
        x_ba, x_ab, x_aa, x_bb, x_ap, x_bq = self._batched(self.dec, [s_b, s_a, s_a, s_b, s_a, s_b],
                                                           [f_a, f_b, f_a, f_b, f_p, f_q])
        return (f_a, f_b, f_p, f_q), (s_a, s_b), (x_ba, x_ab), (x_aa, x_bb, x_ap, x_bq)

    def _discriminator_losses(self, x_a, x_b, x_ba, x_ab):
        """D's step: (LSGAN of x_a vs x_ba and x_b vs x_ab summed over the scales, the R1 penalty on x_a and x_b, or
        zero when its weight is 0). D has no normalization: its generated and real halves may run as separate calls."""
        d_fake = self._batched(self.dis_call, [x_ba, x_ab])
        d_real, r1 = self._real_scores([x_a, x_b], self.run.cfg["r1_w"] > 0)
        loss_d = sum(o.float().square().mean() + (r.float() - 1).square().mean()
                     for fake, real in zip(d_fake, d_real) for o, r in zip(fake, real))
        return loss_d, r1

    def _generator_losses(self, x_a, x_p, x_b, x_q, y_a, y_b, codes, structures, swaps, recons, erase_draws,
                          fine_w, tune_es, code_on: bool, prim_on: bool):
        """The G + Ea step's unweighted losses (D frozen by the caller; "id" carries its fine-head term weighted by
        the tensor fine_w, lambda_fine) and Ea's accuracy on the real images. erase_draws: random erasing's draws
        (BatchAugment.erase_draws) for a, b, p and q, B rows each in that order: the inputs of the real-image
        identity losses, the only erased images. tune_es: the iteration's coin for Es's second pass
        (_structure_again), a 0-dim tensor. code_on: the code and cycle reconstructions are on (their passes
        skipped while all their weights are 0); prim_on: primary and fine-grained learning on the swaps are on."""
        f_a, f_b = codes[:2]
        s_a, s_b = structures
        x_ba, x_ab = swaps
        x_aa, x_bb, x_ap, x_bq = recons
        out = {}
        zero = torch.zeros((), device=x_a.device)
        ce = lambda logits, y: F.cross_entropy(logits.float(), y)  # noqa: E731
        l1 = lambda a, b: F.l1_loss(a.float(), b.float())  # noqa: E731
        out["recon_x"] = l1(x_aa, x_a) + l1(x_bb, x_b) + l1(x_ap, x_a) + l1(x_bq, x_b)
        out["adv"] = sum((o.float() - 1).square().mean() for d in self._batched(self.dis_call, swaps) for o in d)
        # The generated-image losses see the swaps as generated (not erased). Ea's frozen view gives the code (for
        # the code reconstruction) and the primary logits (for id_gen) of each swap in one call (the original: one
        # call per swap); the fast order runs both swaps in one. Generated images are bf16 under AMP and real ones
        # fp32: Es and Ea take the real images' dtype (exact for bf16), the dtype their other calls see.
        generated = [x.to(x_a.dtype) for x in swaps]
        if self.faithful:
            frozen = [self._ea_copy(x)[:2] for x in generated]
        else:
            frozen = [o[:2] for o in self._batched(self.frozen_call, generated)]
        (f_a_rec, logits_ba), (f_b_rec, logits_ab) = frozen
        out["id_gen"] = ce(logits_ba, y_a) + ce(logits_ab, y_b)  # x_ba shows a's identity, x_ab b's
        out["recon_f"] = out["recon_s"] = out["cycle"] = zero
        if code_on:
            s_b_rec, s_a_rec = self._structure_again(generated, tune_es)
            out["recon_f"] = code_l1(f_a_rec, f_a) + code_l1(f_b_rec, f_b)
            out["recon_s"] = code_l1(s_a_rec, s_a) + code_l1(s_b_rec, s_b)
            x_aba, x_bab = self._batched(self.dec, [s_a_rec, s_b_rec], [f_a_rec, f_b_rec])
            out["cycle"] = l1(x_aba, x_a) + l1(x_bab, x_b)
        # Ea: identity on the real images a, b, p, q (erased: the only inputs that are), then primary and
        # fine-grained learning on the swaps (not erased); one call over all of them (the original: one each, in
        # this order, which the running statistics follow)
        inputs, softs = [self.erase.erase_with(x, d) for x, d in zip((x_a, x_b, x_p, x_q),
                                                                     erase_draws.split(x_a.shape[0]))], []
        if prim_on:
            # the teacher (BatchNorm by batch statistics, running statistics untouched) labels both swaps
            softs = self._batched(self.teacher_labels, [x_ba.detach(), x_ab.detach()])
            inputs += [swap.detach() for swap in generated]
        heads = self._batched(self.ea_call, inputs)
        (_, primary_a, fine_a), (_, primary_b, fine_b), (_, primary_p, _), (_, primary_q, _) = heads[:4]
        out["id"] = ce(primary_a, y_a) + ce(primary_b, y_b) + fine_w * (ce(fine_a, y_a) + ce(fine_b, y_b))
        out["pid"] = ce(primary_p, y_a) + ce(primary_q, y_b)  # the same-identity partners: p is a's, q is b's
        accuracy = sum((primary.detach().argmax(1) == y).float().mean() for primary, y in
                       ((primary_a, y_a), (primary_b, y_b))) / 2
        out["prim"] = out["fine"] = zero
        # x_ba shows a's identity in b's structure: fine-grained mining targets the structure donor
        for (_, primary, fine), soft, structure_donor in zip(heads[4:], softs, (y_b, y_a)):
            out["prim"] = out["prim"] + F.kl_div(primary.float().log_softmax(1), soft, reduction="batchmean")
            out["fine"] = out["fine"] + ce(fine, structure_donor)
        return out, accuracy

    def _structure_again(self, swaps, tune_es):
        """Es of the swaps [x_ba, x_ab], for the structure code and the cycle reconstructions (the published
        use_encoder_again): with tune_es 1 Es encodes the swaps detached, its parameters trained (the encoder tuned,
        the input fixed); with 0 a frozen Es encodes the live swaps, the gradient reaching G through them and not
        Es's parameters (the encoder fixed, the input tuned). Es has instance norm only: no mode or statistics to
        mind. --faithful: the original's two branches, Es on detached copies of the swaps or a deep copy of Es.
        The fast order: one batched pass that routes the gradient by the tensor (`routed`), so that the compiled
        step is one graph for both values: Es's parameters pass tune_es times their gradient, the swaps
        1 - tune_es times theirs; each branch's gradients are exactly the original's."""
        if self.faithful:
            if bool(tune_es):
                return [self.es(x.detach()) for x in swaps]
            frozen = copy.deepcopy(self.gen.encoder).requires_grad_(False)
            return [frozen(x) for x in swaps]
        es = self.gen.encoder
        params = {name: routed(p, tune_es) for name, p in es.named_parameters()}
        codes = torch.func.functional_call(es, params, (routed(torch.cat(swaps), 1 - tune_es),))
        return list(codes.split([x.shape[0] for x in swaps]))

    def train_step(self, batch, it):
        run, cfg = self.run, self.run.cfg
        w = self.loss_weights(it)
        x_a, x_p, x_b, x_q, y_a, y_b = self._split(batch)
        code_on = w["recon_f"] > 0 or w["recon_s"] > 0 or w["cycle"] > 0
        prim_on = w["prim"] > 0
        # random erasing of the real-image identity losses' inputs (a, b, p, q), drawn here: a compiled graph cannot
        # take the run's generator
        erase_draws = self.erase.erase_draws(4 * x_a.shape[0], run.generator, x_a.device)
        # lambda_fine as a tensor: a graph input, where a float would be a constant compiled again at every value
        # (torch.full: a fill on the device, where torch.tensor would copy from the host and wait for the GPU)
        fine_w = torch.full((), w["fine"], dtype=torch.float32, device=x_a.device)
        # the coin of Es's second pass (_structure_again): 1 with probability --encoder-again, every iteration
        # (whether or not the reconstructions are on yet), from the run's generator (checkpointed, so a resumed
        # run draws the same coins); a tensor, a graph input as fine_w
        draw = torch.rand((), generator=run.generator, device=run.generator.device)
        tune_es = (draw < cfg["encoder_again"]).to(device=x_a.device, dtype=torch.float32)
        if prim_on:
            self._teacher_labeler()  # made here, outside the compiled function that calls it
        if self.faithful:  # the original's per-iteration deep copy of Ea, for the generator-side losses: in eval
            # mode (its heads' dropout off) with its BatchNorm layers in training mode (the published train_bn)
            self._ea_copy = copy.deepcopy(self.ea).requires_grad_(False).eval()
            for m in self._ea_copy.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        elif self.frozen_ea.training:  # in eval mode as the copy: dropout off; its BatchNorm keeps batch statistics
            self.frozen_ea.eval()

        with run.autocast():
            if self.faithful:  # the original: D's step runs its own generator pass without gradients
                with torch.no_grad():
                    swaps = self.generator_pass(x_a, x_p, x_b, x_q, live_codes=False)[2]
            else:  # the swaps of this one pass serve both steps
                with self._loader_batches(ea=4):
                    generated = self.generator_pass(x_a, x_p, x_b, x_q)
                swaps = generated[2]
            # D step: LSGAN on (x_ba vs x_a) and (x_ab vs x_b), R1 on the real images, every scale
            self.dis.requires_grad_(True)
            loss_d, r1 = self.discriminator_losses(x_a, x_b, swaps[0].detach(), swaps[1].detach())
        self.opt_dis.zero_grad(set_to_none=True)
        run.backward(loss_d + cfg["r1_w"] * r1)
        run.step(self.opt_dis)

        # G + Ea step
        self.dis.requires_grad_(False)  # G's adversarial loss must not leave gradients in D
        with run.autocast():
            if self.faithful:
                generated = self.generator_pass(x_a, x_p, x_b, x_q)
            # Ea: a, b, p, q (+ the two swaps); its frozen view: the two swaps; the teacher: the swaps and mirrors
            groups = dict(frozen=2, ea=6, teacher=4) if prim_on else dict(frozen=2, ea=4)
            with self._loader_batches(**groups):
                out, accuracy = self.generator_losses(x_a, x_p, x_b, x_q, y_a, y_b, *generated, erase_draws, fine_w,
                                                      tune_es, code_on, prim_on)
        self._ea_copy = None
        loss = (cfg["recon_x_w"] * out["recon_x"] + w["recon_f"] * out["recon_f"] + w["recon_s"] * out["recon_s"]
                + w["cycle"] * out["cycle"] + cfg["id_gen_w"] * out["id_gen"] + cfg["adv_w"] * out["adv"]
                + cfg["id_w"] * out["id"] + cfg["pid_w"] * out["pid"] + w["prim"] * out["prim"]
                + w["fine"] * out["fine"])
        self.opt_gen.zero_grad(set_to_none=True)
        self.opt_ea.zero_grad(set_to_none=True)
        run.backward(loss)
        run.step(self.opt_gen)
        run.step(self.opt_ea)
        self.dis.requires_grad_(True)
        return {"d": loss_d.detach(), "r1": r1.detach(), **{k: v.detach() for k, v in out.items()},
                "loss": loss.detach(), "acc": accuracy, "es_tuned": tune_es,
                **{f"w/{k}": torch.tensor(v) for k, v in w.items()}}

    @torch.no_grad()
    def embed(self, images):
        with self.run.autocast():
            return self.ea.features(images)

    @torch.no_grad()
    def swap_codes(self, appearance_images: torch.Tensor, structure_images: torch.Tensor) -> torch.Tensor:
        """(Na, Ns, 3, H, W) normalized images: [i, j] is G(Es(structure_images[j]), Ea(appearance_images[i])),
        appearance_images[i]'s appearance in structure_images[j]'s structure. Eval mode, restored after."""
        was_training = [m.training for m in (self.ea, self.gen)]
        self.ea.eval()
        self.gen.eval()
        try:
            with self.run.autocast():
                codes = self.ea.appearance(appearance_images)
                structure = self.gen.encode(structure_images)
                n = structure_images.shape[0]
                rows = [self.gen.decode(structure, codes[i:i + 1].expand(n, -1)).float()
                        for i in range(codes.shape[0])]
        finally:
            for m, mode in zip((self.ea, self.gen), was_training):
                m.train(mode)
        return torch.stack(rows)

    @torch.no_grad()
    def sample_images(self, batch):
        """A Figure-1 style grid: row i keeps image i's appearance, column j image j's structure; the first row
        holds the inputs and the diagonal is the reconstruction."""
        images = normalize(batch["image"][:, 0][:GRID_COLUMNS].to(self.run.device))
        n = images.shape[0]
        grid = torch.cat([images[None].float(), self.swap_codes(images, images)])  # (1 + n, n, 3, H, W)
        if n < GRID_COLUMNS:  # the saved grid has GRID_COLUMNS per row: pad with blank (mean-colour) images
            grid = torch.cat([grid, grid.new_zeros((grid.shape[0], GRID_COLUMNS - n) + grid.shape[2:])], dim=1)
        return grid.flatten(0, 1).float()
