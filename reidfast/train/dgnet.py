"""DG-Net (Zheng et al., CVPR 2019): joint discriminative and generative re-id learning. Its losses and update
order only; the networks are in :mod:`reidfast.models.dgnet`, everything else in the shared loop.

An iteration takes 2B same-identity pairs: (a, p) for the first B, (b, q) for the other B (the paper's two
loaders of B = 8). Es encodes structure s, Ea appearance f; G(s_b, f_a) = x_ba has a's identity in b's structure.

1. Generator pass: x_ba, x_ab (swaps), x_aa, x_bb (self reconstruction), x_ap, x_bq (same-identity
   reconstruction, G(s_a, f_p)), in one batched call (Es, G and D have no batch-dependent normalization, so
   batching their passes changes nothing but the speed).
2. D step: LSGAN on real [a, b] vs the swaps, per scale, plus R1 (weight 0.01 per scale) on the real images.
3. G + Ea step (one backward, both optimizers step):
   - image reconstruction L1 (self and same-identity), weight 5;
   - code reconstruction L1 of s (Es of the swaps) and f (Ea of the swaps), and cycle reconstruction
     G(Es(x_ab), Ea(x_ba)) = x_a, ramped in after the warm-up to 1, 1 and 2;
   - identity loss of the swaps (cross-entropy of the primary head to the appearance donor's id), weight 0.5;
   - adversarial (LSGAN), weight 2 per scale;
   - Ea: cross-entropy on real images (both heads); primary feature learning: KL divergence of the primary
     head to the teacher's soft label (the mean of its softmax over the swap and its mirror), lambda_prim ramped
     0 -> 2 after the warm-up; fine-grained mining: cross-entropy of the fine head to the structure donor's id,
     lambda_fine = 0.2 lambda_prim.
   The appearance code is detached from the generator losses: the generator-side losses see Ea through a
   functional call on detached parameters (BatchNorm in batch-statistics mode, running statistics untouched)
   instead of a per-iteration deep copy, so only the identity losses train Ea. Random erasing (p 0.5) is
   applied to the inputs of the identity losses only.

The paper's settings are the defaults (256x128, 100k iterations, SGD for Ea at 0.002 / heads 0.02, Adam 1e-4 for
Es, G, the MLPs and D, x0.1 at 60k and 90k, warm-up 30k, ramps of 0.0005 per iteration). The cpu-quick preset
scales everything down (see :attr:`DGNet.presets`) so that the CPU finishes in minutes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..data import BatchAugment, BatchedSampler, SameIdentityPairSampler, normalize
from ..models.baseline import ReidBaseline
from ..models.dgnet import AppearanceEncoder, Generator, MultiScaleDiscriminator
from .checkpoint import CheckpointError, LATEST, load_checkpoint, resolve_checkpoint
from .loop import Method, WarmupStepSchedule

GRID_COLUMNS = 8  # what the loop's save_image_grid puts in a row
CPU_QUICK_ITERS = 300
PAPER_ITERS = 100_000


def ramp(it: int, start: int, per_iter: float, maximum: float) -> float:
    """A loss weight that is 0 before iteration `start` (0-based) and grows by `per_iter` per iteration from
    there (per_iter at `start` itself) up to `maximum`: the paper's warm-up ramps."""
    return 0.0 if it < start else min(maximum, per_iter * (it - start + 1))


class DGNet(Method):
    name = "dgnet"
    defaults = {
        "iters": PAPER_ITERS, "epochs": None, "batch_size": 8, "lr": 0.002, "head_lr_mult": 10.0,
        "gen_lr": 1e-4, "dis_lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "lr_decay_at": [0.6, 0.9],
        "lr_gamma": 0.1, "height": 256, "width": 128, "backbone_width": 64, "gan_width": 1.0, "pretrained": "auto",
        "pad": 10, "erasing": 0.5, "teacher": None, "teacher_iters": 600,
        "warm_iters": 30_000, "ramp_per_iter": 0.0005,
        "recon_x_w": 5.0, "recon_f_w": 1.0, "recon_s_w": 1.0, "cycle_w": 2.0, "id_w": 1.0, "id_gen_w": 0.5,
        "prim_w": 2.0, "fine_ratio": 0.2, "adv_w": 2.0, "r1_w": 0.01, "ap_mode": "market",
    }
    # 300 iterations with the schedule's fractions kept: warm-up at 30%, ramps 333x faster (full weight
    # 2000 / 333 = 6 iterations after it, as 2000 iterations are after 30k in the paper), decay at 60% and 90%.
    # From scratch (no ImageNet weights at width 16) Ea trains at 0.01 everywhere, as the baseline's preset.
    presets = {
        "cpu-quick": {"iters": CPU_QUICK_ITERS, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                      "pad": 4, "synthetic_ids": 120, "lr": 0.01, "head_lr_mult": 1.0, "gen_lr": 1e-3,
                      "dis_lr": 1e-3, "warm_iters": int(0.3 * CPU_QUICK_ITERS),
                      "ramp_per_iter": 0.0005 * PAPER_ITERS / CPU_QUICK_ITERS, "teacher_iters": 600,
                      "ckpt_every": 100, "log_every": 10},
    }

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
        g.add_argument("--erasing", type=float, default=S, help="random erasing probability on id-loss inputs")
        g.add_argument("--pad", type=int, default=S, help="zero padding before the random crop, pixels (10)")
        for name, text in (("recon-x-w", "image reconstruction (5)"), ("recon-f-w", "appearance code recon (1)"),
                           ("recon-s-w", "structure code recon (1)"), ("cycle-w", "cycle reconstruction (2)"),
                           ("id-w", "identity loss on real images (1)"), ("id-gen-w", "identity loss on swaps (0.5)"),
                           ("prim-w", "lambda_prim, primary feature learning (2)"),
                           ("fine-ratio", "lambda_fine / lambda_prim (0.2)"), ("adv-w", "G adversarial, per scale (2)"),
                           ("r1-w", "R1 penalty, per scale (0.01)")):
            g.add_argument(f"--{name}", type=float, default=S, help=f"weight: {text}")

    def __init__(self, run, dataset):
        self.run = run
        cfg = run.cfg
        self.num_classes = dataset.num_train_pids
        ea = AppearanceEncoder(self.num_classes, backbone_width=cfg["backbone_width"], pretrained=cfg["pretrained"],
                               log=run.log)
        self.ea = run.place(ea)
        self.gen = run.place(Generator(ea.code_features, cfg["gan_width"]))
        self.dis = run.place(MultiScaleDiscriminator(cfg["gan_width"]))
        if run.world_size > 1:  # the shared Ea/G modules are called in several roles per step
            raise ValueError("dgnet does not run under torchrun yet: train on one device")
        # training-time callables (compiled when on): Es, G (decoding), D and Ea
        self.train_es, self.train_dec = run.wrap(self.gen.encoder), run.wrap(self.gen)
        self.train_ea, self.train_dis = run.wrap(self.ea), run.wrap(self.dis)
        backbone_lr = cfg["lr"]
        if cfg["pretrained"] in ("none", None) or getattr(ea.backbone, "pretrained_from", None) is None:
            run.log("dgnet: Ea starts from scratch")
        heads = list(self.ea.primary.parameters()) + list(self.ea.fine.parameters())
        self.opt_ea = torch.optim.SGD(
            [{"params": self.ea.backbone.parameters(), "lr": backbone_lr},
             {"params": heads, "lr": cfg["head_lr_mult"] * backbone_lr}],
            lr=backbone_lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=True)
        adam = dict(betas=(0.0, 0.999), weight_decay=cfg["weight_decay"])
        self.opt_gen = torch.optim.Adam(self.gen.parameters(), lr=cfg["gen_lr"], **adam)
        self.opt_dis = torch.optim.Adam(self.dis.parameters(), lr=cfg["dis_lr"], **adam)
        self.augment = BatchAugment(pad=cfg["pad"], erase_p=0.0)
        # erasing alone, on images that are already normalized (identity mean/std: no second normalization)
        self.erase = BatchAugment(flip_p=0.0, pad=0, erase_p=cfg["erasing"], mean=(0.0, 0.0, 0.0),
                                  std=(1.0, 1.0, 1.0))
        self.teacher = None
        self.networks = {"ea": self.ea, "gen": self.gen, "dis": self.dis}
        self.optimizers = {"ea": self.opt_ea, "gen": self.opt_gen, "dis": self.opt_dis}
        self.schedulers = {}

    # --- setup -----------------------------------------------------------------------------------------------
    def batch_sampler(self, dataset, seed):
        """2B (image, same-identity image) pairs per iteration: the first B are (a, p), the last B (b, q)."""
        return BatchedSampler(SameIdentityPairSampler(dataset.train, seed), 2 * self.run.cfg["batch_size"])

    def images_per_iteration(self) -> int:
        return 4 * self.run.cfg["batch_size"]  # a, p, b, q

    def configure(self, total_iters: int) -> None:
        cfg = self.run.cfg
        milestones = sorted({max(1, round(f * total_iters)) for f in cfg["lr_decay_at"]})
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, WarmupStepSchedule(0, milestones,
                                                                                         cfg["lr_gamma"]))
                           for name, opt in self.optimizers.items()}
        self.teacher = self._load_teacher(self._teacher_dir())

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
        if not (folder / LATEST).is_file():
            if self.run.world_size > 1:
                raise ValueError("dgnet under torchrun needs --teacher RUN_DIR (train the baseline first)")
            self.run.log(f"dgnet: no --teacher given: training a short baseline teacher first "
                         f"({cfg['teacher_iters']} iterations) in {folder}")
            self._train_teacher(folder)
        cfg["teacher"] = str(folder)  # saved with the checkpoint: a resumed run reuses this teacher
        return folder

    def _train_teacher(self, folder: Path) -> None:
        from .baseline import Baseline  # the teacher is the baseline method's run
        from .config import resolve_config
        from .loop import train
        cfg = self.run.cfg
        flags = {key: cfg[key] for key in ("dataset", "data_root", "synthetic_ids", "height", "width", "device",
                                           "seed", "workers", "threads", "amp", "compile", "backend")}
        # the teacher reads as many images per iteration as DG-Net does (a, p, b, q): 32 in both cpu-quick presets
        flags.update(out=str(folder), iters=cfg["teacher_iters"], ckpt_every=0, backbone_width=cfg["backbone_width"],
                     last_stride=1, pretrained=cfg["pretrained"], preset=cfg["preset"],
                     batch_size=self.images_per_iteration())
        teacher_cfg = resolve_config(Baseline.defaults, Baseline.presets, {}, flags,
                                     device_is_cpu=self.run.device.type == "cpu")
        train(Baseline, teacher_cfg)

    def _load_teacher(self, folder: Path) -> ReidBaseline:
        path = resolve_checkpoint(folder, folder)
        state = load_checkpoint(path, "baseline")
        if state["dataset"]["num_train_pids"] != self.num_classes:
            raise CheckpointError(f"--teacher {folder}: trained on {state['dataset']['num_train_pids']} identities, "
                                  f"this run has {self.num_classes} (train the teacher on the same dataset)")
        tcfg = state["config"]
        teacher = ReidBaseline(self.num_classes, last_stride=tcfg["last_stride"], width=tcfg["backbone_width"],
                               dropout=tcfg["dropout"], pretrained="none", log=lambda message: None)
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

    def frozen_ea(self, images: torch.Tensor):
        """Ea with detached parameters (no gradient reaches Ea; inputs still get theirs), BatchNorm in batch-
        statistics mode on copies of its running statistics, which stay untouched."""
        params = {k: p.detach() for k, p in self.ea.named_parameters()}
        buffers = {k: b.clone() for k, b in self.ea.named_buffers()}
        return functional_call(self.ea, {**params, **buffers}, (images,))

    @torch.no_grad()
    def teacher_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's soft label: its softmax averaged over the image and its mirror."""
        logits, _ = self.teacher(torch.cat([images, images.flip(3)]))
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

    def train_step(self, batch, it):
        run, cfg = self.run, self.run.cfg
        w = self.loss_weights(it)
        x_a, x_p, x_b, x_q, y_a, y_b = self._split(batch)
        n = x_a.shape[0]
        real = torch.cat([x_a, x_b])
        y_ab = torch.cat([y_a, y_b])  # the appearance donors of the swaps [x_ba, x_ab]
        y_ba = torch.cat([y_b, y_a])  # their structure donors
        code_on = w["recon_f"] > 0 or w["recon_s"] > 0 or w["cycle"] > 0

        with run.autocast():
            # appearance codes of the real images, detached from the generator losses
            with torch.no_grad():
                f_a, f_p, f_b, f_q = self.frozen_ea(torch.cat([x_a, x_p, x_b, x_q]))[0].chunk(4)
            s_a, s_b = self.train_es(real).chunk(2)
            fakes = self.train_dec(torch.cat([s_b, s_a, s_a, s_b, s_a, s_b]),
                                          torch.cat([f_a, f_b, f_a, f_b, f_p, f_q]))
        swaps, self_recon, pair_recon = fakes[:2 * n], fakes[2 * n:4 * n], fakes[4 * n:]

        # D step
        self.dis.requires_grad_(True)
        real_in = real.detach().requires_grad_(cfg["r1_w"] > 0)
        with run.autocast():
            d_real = self.train_dis(real_in)
            d_fake = self.train_dis(swaps.detach())
        loss_d = sum(o.float().square().mean() + (r.float() - 1).square().mean() for o, r in zip(d_fake, d_real))
        r1 = torch.zeros((), device=real.device)
        if cfg["r1_w"] > 0:
            for r in d_real:
                grad, = torch.autograd.grad(r.float().sum(), real_in, create_graph=True)
                r1 = r1 + grad.square().flatten(1).sum(1).mean()
        self.opt_dis.zero_grad(set_to_none=True)
        run.backward(loss_d + cfg["r1_w"] * r1)
        run.step(self.opt_dis)

        # G + Ea step
        self.dis.requires_grad_(False)  # G's adversarial loss must not leave gradients in D
        out = {}
        zero = torch.zeros((), device=real.device)
        with run.autocast():
            target = torch.cat([x_a, x_b])
            out["recon_x"] = (F.l1_loss(self_recon.float(), target.float())
                              + F.l1_loss(pair_recon.float(), target.float()))
            out["adv"] = sum((o.float() - 1).square().mean() for o in self.train_dis(swaps))
            _, prim_swap, _ = self.frozen_ea(self.erase(swaps, run.generator))
            out["id_gen"] = F.cross_entropy(prim_swap.float(), y_ab)
            out["recon_f"] = out["recon_s"] = out["cycle"] = zero
            if code_on:  # all three weights are 0 during the warm-up: skip the passes
                f_rec = self.frozen_ea(swaps)[0]
                s_rec = self.train_es(swaps)
                out["recon_f"] = F.l1_loss(f_rec.float(), torch.cat([f_a, f_b]).float())
                out["recon_s"] = F.l1_loss(s_rec.float(), torch.cat([s_b, s_a]).float())
                s_ab_rec, s_ba_rec = s_rec.chunk(2)[1], s_rec.chunk(2)[0]
                f_a_rec, f_b_rec = f_rec.chunk(2)
                cycle = self.train_dec(torch.cat([s_ab_rec, s_ba_rec]), torch.cat([f_a_rec, f_b_rec]))
                out["cycle"] = F.l1_loss(cycle.float(), target.float())
            # Ea: identity on real images (both heads), then primary and fine-grained learning on the swaps
            _, prim_real, fine_real = self.train_ea(self.erase(real, run.generator))
            out["id"] = F.cross_entropy(prim_real.float(), y_ab) + F.cross_entropy(fine_real.float(), y_ab)
            out["prim"] = out["fine"] = zero
            if w["prim"] > 0:
                soft = self.teacher_labels(swaps.detach())
                _, prim_gen, fine_gen = self.train_ea(self.erase(swaps.detach(), run.generator))
                out["prim"] = F.kl_div(prim_gen.float().log_softmax(1), soft, reduction="batchmean")
                out["fine"] = F.cross_entropy(fine_gen.float(), y_ba)
        loss = (cfg["recon_x_w"] * out["recon_x"] + w["recon_f"] * out["recon_f"] + w["recon_s"] * out["recon_s"]
                + w["cycle"] * out["cycle"] + cfg["id_gen_w"] * out["id_gen"] + cfg["adv_w"] * out["adv"]
                + cfg["id_w"] * out["id"] + w["prim"] * out["prim"] + w["fine"] * out["fine"])
        self.opt_gen.zero_grad(set_to_none=True)
        self.opt_ea.zero_grad(set_to_none=True)
        run.backward(loss)
        run.step(self.opt_gen)
        run.step(self.opt_ea)
        self.dis.requires_grad_(True)

        accuracy = (prim_real.detach().argmax(1) == y_ab).float().mean()
        return {"d": loss_d.detach(), "r1": r1.detach(), **{k: v.detach() for k, v in out.items()},
                "loss": loss.detach(), "acc": accuracy, **{f"w/{k}": torch.tensor(v) for k, v in w.items()}}

    @torch.no_grad()
    def embed(self, images):
        with self.run.autocast():
            return self.ea.features(images)

    @torch.no_grad()
    def sample_images(self, batch):
        """A Figure-1 style grid: row i keeps image i's appearance, column j image j's structure; the first row
        holds the inputs and the diagonal is the reconstruction."""
        images = normalize(batch["image"][:, 0][:GRID_COLUMNS].to(self.run.device))
        was_training = [m.training for m in (self.ea, self.gen)]
        self.ea.eval()
        self.gen.eval()
        try:
            with self.run.autocast():
                codes = self.ea.appearance(images)
                structure = self.gen.encode(images)
                n = images.shape[0]
                rows = [images]
                for i in range(n):
                    rows.append(self.gen.decode(structure, codes[i:i + 1].expand(n, -1)).float())
        finally:
            for m, mode in zip((self.ea, self.gen), was_training):
                m.train(mode)
        grid = torch.stack(rows)  # (1 + n, n, 3, H, W)
        if n < GRID_COLUMNS:  # the saved grid has GRID_COLUMNS per row: pad with blank (mean-colour) images
            grid = torch.cat([grid, grid.new_zeros((grid.shape[0], GRID_COLUMNS - n) + grid.shape[2:])], dim=1)
        return grid.flatten(0, 1).float()
