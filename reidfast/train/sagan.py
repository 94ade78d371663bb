"""SA-GAN ('Spatial-Aware GAN for Unsupervised Person Re-identification'): adapt labelled source images to an
unlabelled target domain at the spatial and the pixel level, then train a re-id model on the adapted images.
Networks in :mod:`reidfast.models.sagan`; here only the losses, the update order and the stages.

Stages (``--stage``, default ``all`` = the three in order, each in its own sub-folder of the run folder):

1. ``adapt`` (RUN/adapt): one iteration takes B source images x (with binary human masks) and B target images y.
   S1 (X -> Y) warps x with T_xy predicted from [x, mask] and a spatial code z ~ N(0, I): x_s = S1(x); G1 changes
   its pixels: x_a = G1(x_s). S2 and G2 do the same for y (T_yx, y_s, y_a).
   Generator step (S1, S2, G1, G2 and SiaNet, one backward):
   - adversarial: Wasserstein critics D1 (x_a vs real y) and D2 (y_a vs real x), weight ``--adv-w``; and the
     spatial critic D_T, which tells T_xy from (T_yx)^-1: both STMs minimize its estimate of the Wasserstein
     distance between the two (weight ``--spatial-adv-w``);
   - disentangled cycle consistency, L_cyc = SCL + lambda_pcl PCL per side (weight ``--cyc-w``):
     SCL = ||(T_xy)^-1 - T_yx|| with T_yx = S2's prediction on x_a (same code), matrices scaled to H[2, 2] = 1;
     PCL = ||x' - x|| with x' = G2(warp(x_a, (T_xy)^-1)): the exact inverse undoes the spatial step, so only
     pixel differences remain; the L1 mean is taken over the pixels the round trip keeps (inside the image);
   - mask identity ||G1(S1(x)) * M - S1(x) * M|| (M the warped mask; and the same for y), weight ``--mask-w``;
   - contrastive loss through SiaNet (positives x & S1(x), x & x_a; negatives x & S2(y), x & y; margin
     ``--margin``), weight ``--con-w``; SiaNet learns from the same loss.
   Critic step (D1, D2, D_T): the Wasserstein objective with a gradient penalty (WGAN-GP, weight ``--gp-w`` on
   (||grad|| - 1)^2 at random interpolates of real and generated samples), on the generator step's outputs.
   Adam (lr 2e-4, betas 0.5 / 0.999) for all, the STMs at 0.1x (``--stm-lr-mult``), the lr constant for the
   first half and then linearly to zero (CycleGAN's schedule). Homography parameters are bounded
   (``--stm-bound``). The loop writes no re-id metrics for this stage.
2. ``translate`` (RUN/translate): every source training image is adapted under ``--codes`` M spatial codes and the
   M variants are written as a Market-1501 layout dataset (bounding_box_train: pid, folded camera, the code index
   as the sequence number; query and bounding_box_test: the source's own test split, not adapted, so that every
   reader accepts the folder), plus translation.csv (file, source image, pid, camera, code) and translation.json.
3. ``reid`` (RUN/reid): the ID baseline (:mod:`reidfast.train.baseline`) with IDE's head (dropout and the last FC
   from the pool-5 feature to the source identities, ``--bottleneck 0``; the cpu-quick preset keeps the baseline's
   512-d bottleneck) trained on the translated images with
   the source labels (the paper: batch 128, SGD lr 0.01 divided by 10 after 25 of 50 epochs), evaluated on the
   TARGET's query and gallery with Euclidean distance on the pool-5 feature (not L2-normalized).
   ``--no-adapt`` trains it on the raw source images instead: direct transfer, the comparison the paper makes.

Ablations (the paper's Table III): ``--no-spatial`` (no STMs, no SCL, no D_T), ``--no-pixel`` (no generators:
x_a = S1(x)), ``--no-disentangled-cycle`` (the conventional cycle x -> S1 -> G1 -> S2 -> G2 with the reverse STM's
own prediction, L1 to x, no SCL), ``--codes M``.

The loop's run-length, batch and lr options (``--iters/--epochs/--batch-size/--lr``) are the re-id stage's;
the adaptation stage has ``--adapt-iters``, ``--adapt-batch-size``, ``--gen-lr`` and ``--dis-lr``.

Run folder: RUN/config.json (the whole run's configuration), RUN/stages.json (each stage's folder and status),
RUN/{adapt,translate,reid}/, and RUN/checkpoint.pt + RUN/metrics.json: copies of the last finished training
stage's (the re-id model's once it is done), replaced atomically, so that ``python -m reidfast.eval --checkpoint
RUN`` and ``python -m reidfast.generate sagan --checkpoint RUN`` take the run folder. ``--resume`` continues the
stage that was running exactly (its saved configuration; flags given now override it) and runs the stages after
it with RUN/config.json; finished stages are skipped, except a finished run's last stage, which trains on
when --resume gives it a longer length.

``--faithful`` runs every network once per input (real and generated images through a critic in two calls, each
direction's warps, each SiaNet pair, each spatial code of the translation separately) as the original code does;
the default batches those calls, which changes nothing but the speed (every network here is batch-independent).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import (BatchedSampler, ImageDataset, MaskReader, ReidDataset, UnpairedDomainSampler,
                    denormalize, get_dataset, normalize, read_market1501, reader_options)
from ..data.registry import dataset_option_key, reader_option_names
from ..models.sagan import Critic, ResnetGenerator, SiaNet, SpatialTransformer, TransformCritic, homography_vector
from ..ops import homography_adjugate, homography_warp
from .baseline import Baseline
from .checkpoint import LATEST, PREVIOUS, copy_atomically, load_checkpoint, write_text_atomically
from .config import ConfigError
from .loop import LinearDecaySchedule, Method, Trainer, TrainingInterrupted, default_run_dir, torchrun_rank
from .penalties import input_gradient

STAGES = ("adapt", "translate", "reid")
GRID_COLUMNS = 8
SAMPLE_CODES = 3  # fully adapted rows of the sample grid
MARKET_CAMERAS = 6  # the Market-1501 reader's camera range


# --- data ----------------------------------------------------------------------------------------------------------
def read_domain(name: str | None, root, cfg: dict) -> ReidDataset:
    """A source or target dataset. ``synthetic`` / ``synthetic-a`` and ``synthetic-b`` are the synthetic
    generator's two domains (generated at the run's image size, in the user cache unless a root is given)."""
    key = (name or "synthetic-a").strip().lower()
    if key in ("synthetic", "synthetic-a", "synthetic-market", "synthetic-b"):
        options = {"height": cfg["height"], "width": cfg["width"], "domain": "b" if key == "synthetic-b" else "a"}
        if cfg.get("synthetic_ids"):
            options["ids"] = cfg["synthetic_ids"]
        return get_dataset("synthetic", root, **options)
    if root is None:
        raise ValueError(f"sagan: dataset {name!r} needs a root (--source-root / --target-root DIR)")
    known = reader_option_names(name, root)  # each --dataset-option goes to the readers that take it
    items = [item for item in cfg.get("dataset_option") or () if dataset_option_key(item) in known]
    return get_dataset(name, root, **reader_options(cfg.get("skip_misnamed", False), items, name, root))


def _check_dataset_options(cfg: dict) -> None:
    """Every --dataset-option is taken by the source's or the target's reader (else it would be ignored)."""
    names = [cfg[side] for side in ("source", "target")
             if cfg.get(f"{side}_root") is not None and not str(cfg[side]).lower().startswith("synthetic")]
    known = {key for name in names for key in reader_option_names(name, "root")}
    for item in cfg.get("dataset_option") or ():
        if "=" not in str(item) or dataset_option_key(item) not in known:
            readers = " and ".join(f"{n} ({', '.join(reader_option_names(n, 'root')) or 'none'})" for n in names)
            raise ConfigError(f"--dataset-option {item}: expected KEY=VALUE with a KEY that the source's or the "
                              f"target's reader takes; their options: {readers or 'none (synthetic data)'}")


def _check_masks(side: str, domain: ReidDataset, masks: MaskReader) -> None:
    """Every training image of a domain has a mask file (one file test per image)."""
    missing = [s.path for s in domain.train if masks.find(s.path) is None]
    if missing:
        tried = ", ".join(str(p) for p in masks.candidates(missing[0]))
        raise ValueError(f"sagan: {len(missing)} of {len(domain.train)} {side} training images of {domain.name} have "
                         f"no mask (the first, {missing[0]}: looked for {tried}). Give the masks' folder with "
                         f"--{side}-masks DIR, or --missing-masks ones to treat the whole box as the person")


class DomainPairItems(Dataset):
    """(source index, target index) -> one flat dict: the source item's keys as they are, the target's prefixed
    with ``target_`` (the loop moves top-level tensors to the device)."""

    def __init__(self, source: Dataset, target: Dataset):
        self.source, self.target = source, target

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __getitem__(self, index):
        i, j = index
        return {**self.source[i], **{f"target_{k}": v for k, v in self.target[j].items()}}


# --- losses --------------------------------------------------------------------------------------------------------
def normalized_inverse(T: torch.Tensor) -> torch.Tensor:
    """(T)^-1 scaled so that its [2, 2] entry is 1, the form every predicted homography has. From the adjugate,
    which is T^-1 up to scale: torch.linalg.inv would wait on the GPU to check for a singular T, three times a step.
    """
    adj = homography_adjugate(T.float() if T.dtype not in (torch.float32, torch.float64) else T)
    return adj / adj[:, 2:3, 2:3]


def spatial_cycle_loss(T_forward: torch.Tensor, T_backward: torch.Tensor) -> torch.Tensor:
    """SCL = mean |(T_forward)^-1 - T_backward| over the 9 entries (both scaled to H[2, 2] = 1): zero when the
    backward prediction is the exact inverse of the forward one."""
    back = T_backward / T_backward[:, 2:3, 2:3]
    return (normalized_inverse(T_forward) - back).abs().mean()


def masked_l1(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the pixels where `valid` (N, 1, H, W) is set, all channels."""
    weight = valid.expand_as(a)
    return ((a - b).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def contrastive(e1: torch.Tensor, e2: torch.Tensor, positive: bool, margin: float) -> torch.Tensor:
    """The contrastive loss of embedding pairs: d^2 for positives, max(0, margin - d)^2 for negatives."""
    d = (e1 - e2).pow(2).sum(1).add(1e-12).sqrt()
    return d.pow(2).mean() if positive else (margin - d).clamp_min(0).pow(2).mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean (||grad critic(mix)|| - 1)^2 at mix = e real + (1 - e) fake, e (N,) ~ U(0, 1) per sample; the
    gradient by penalties.input_gradient, which compiles."""
    e = e.view((-1,) + (1,) * (real.dim() - 1)).to(real.dtype)
    grad, _ = input_gradient(critic, e * real.detach() + (1 - e) * fake.detach())
    return (grad.float().flatten(1).norm(dim=1) - 1).pow(2).mean()


# --- the adaptation stage ------------------------------------------------------------------------------------------
class AdaptStage(Method):
    """The adaptation stage's loop method (networks: s1, s2, g1, g2, d1, d2, dt, sia)."""

    name = "sagan"
    evaluates = False

    @classmethod
    def cuda_compile_mode(cls, cfg: dict) -> str:
        # The step waits on the host's launches (8 networks, two whole-step graphs, batch 8): replayed as CUDA graphs
        # it ran 2.79x the reference's images/s on an H100 against 1.71x compiled in the default mode (40.1 and
        # 70.8 ms per iteration against 111.7 and 121.3; bench/results/*.run8.train-sagan.md, .run7.).
        return "reduce-overhead"

    @classmethod
    def load_dataset(cls, cfg: dict) -> ReidDataset:
        """Source train (with masks) for training; the target's train for the unpaired target batches; the
        target's query/gallery are carried along (the loop reads them only in evaluating stages)."""
        _check_dataset_options(cfg)
        source = read_domain(cfg["source"], cfg["source_root"], cfg)
        target = read_domain(cfg["target"], cfg["target_root"], cfg)
        if cfg["missing_masks"] == "error":  # found now, not by a loader worker after the run has started
            for side, domain in (("source", source), ("target", target)):
                _check_masks(side, domain, MaskReader.for_dataset(domain, cfg[f"{side}_masks"], "error"))
        return ReidDataset(f"{source.name}->{target.name}", source.root, source.train, target.query, target.gallery,
                           masks_dir=source.masks_dir, info={"source": source, "target": target})

    def __init__(self, run, dataset):
        refuse_under_torchrun(("adapt",), run.world_size)
        self.run = run
        cfg = run.cfg
        self.spatial, self.pixel = not cfg["no_spatial"], not cfg["no_pixel"]
        self.disentangled, self.faithful = not cfg["no_disentangled_cycle"], bool(cfg["faithful"])
        if not (self.spatial or self.pixel):
            raise ValueError("sagan: --no-spatial and --no-pixel together leave nothing to adapt")
        if cfg["codes"] < 1:
            raise ValueError(f"sagan: --codes must be at least 1, got {cfg['codes']}")
        self.code_dim = cfg["code_dim"]
        stm = lambda: run.place(SpatialTransformer(3, cfg["code_dim"], cfg["stm_hidden"], cfg["stm_bound"] or None))
        gen = lambda: run.place(ResnetGenerator(3, cfg["ngf"], cfg["gen_blocks"]))
        self.s1, self.s2, self.g1, self.g2 = stm(), stm(), gen(), gen()
        self.d1, self.d2 = (run.place(Critic(3, cfg["ndf"])) for _ in range(2))
        self.dt = run.place(TransformCritic(cfg["dt_hidden"]))
        self.sia = run.place(SiaNet(3, cfg["sianet_width"], cfg["sianet_dim"]))
        # Compiled: the generator step's whole forward (STMs, both warps, G1 and G2 twice, the critics' scores with
        # their parameters frozen, D_T, SiaNet and every loss) as one graph, and the critic step's (scores and
        # gradient penalties) as another: the step was bound by the host's launches on an H100 (46 ms of GPU time
        # per iteration under 112 ms of wall time with one compiled callable per network and the rest eager).
        self.generator_losses = run.compiled(self._generator_losses)
        self.critic_losses = run.compiled(self._critic_losses)
        betas = (cfg["adam_beta1"], cfg["adam_beta2"])
        stm_params = [p for m in (self.s1, self.s2) for p in m.parameters()]
        gen_params = [p for m in (self.g1, self.g2) for p in m.parameters()]
        groups = [{"params": gen_params, "lr": cfg["gen_lr"]},
                  {"params": stm_params, "lr": cfg["stm_lr_mult"] * cfg["gen_lr"]}]
        self.opt_gen = run.optimizer(torch.optim.Adam, groups, lr=cfg["gen_lr"], betas=betas)
        self.opt_sia = run.optimizer(torch.optim.Adam, self.sia.parameters(), lr=cfg["gen_lr"], betas=betas)
        dis_params = [p for m in (self.d1, self.d2, self.dt) for p in m.parameters()]
        self.opt_dis = run.optimizer(torch.optim.Adam, dis_params, lr=cfg["dis_lr"], betas=betas)
        self.critics = (self.d1, self.d2, self.dt)
        self.networks = {"s1": self.s1, "s2": self.s2, "g1": self.g1, "g2": self.g2, "d1": self.d1, "d2": self.d2,
                         "dt": self.dt, "sia": self.sia}
        self.optimizers = {"gen": self.opt_gen, "sia": self.opt_sia, "dis": self.opt_dis}
        self.schedulers = {}

    # --- setup ---------------------------------------------------------------------------------------------------
    def train_items(self, dataset):
        cfg = self.run.cfg
        size = (cfg["height"], cfg["width"])
        source, target = dataset.info["source"], dataset.info["target"]
        masks = lambda side, domain: MaskReader.for_dataset(domain, cfg[f"{side}_masks"], cfg["missing_masks"])
        return DomainPairItems(ImageDataset(source.train, size, masks=masks("source", source)),
                               ImageDataset(target.train, size, masks=masks("target", target)))

    def batch_sampler(self, dataset, seed):
        target = dataset.info["target"]
        pairs = UnpairedDomainSampler(len(dataset.train), len(target.train), seed=seed)
        return BatchedSampler(pairs, self.run.cfg["batch_size"])

    def images_per_iteration(self) -> int:
        return 2 * self.run.cfg["batch_size"]  # B source + B target

    def configure(self, total_iters: int) -> None:
        schedule = LinearDecaySchedule(round(self.run.cfg["adapt_decay_from"] * total_iters), total_iters)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule)
                           for name, opt in self.optimizers.items()}

    # --- the two levels ------------------------------------------------------------------------------------------
    def _codes(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.code_dim, generator=self.run.generator, device=self.run.device)

    def _identity(self, n: int) -> torch.Tensor:
        return torch.eye(3, device=self.run.device).expand(n, 3, 3)

    def _spatial(self, stm, image, mask, code):
        """(warped image, warped mask, T) of one direction; the identity under --no-spatial."""
        if not self.spatial:
            return image, mask, self._identity(image.shape[0])
        return stm(image, mask, code)

    def _spatial_both(self, x, mx, z1, y, my, z2):
        """Both directions' spatial step; the fast path warps the two directions in one homography_warp call."""
        if self.faithful or not self.spatial:
            return self._spatial(self.s1, x, mx, z1) + self._spatial(self.s2, y, my, z2)
        T_xy, T_yx = self.s1.predict(x, mx, z1), self.s2.predict(y, my, z2)
        both = homography_warp(torch.cat([torch.cat([x, mx.to(x.dtype)], 1), torch.cat([y, my.to(y.dtype)], 1)]),
                               torch.cat([T_xy, T_yx]), padding_mode=self.s1.padding_mode)
        n = x.shape[0]
        return both[:n, :3], both[:n, 3:], T_xy, both[n:, :3], both[n:, 3:], T_yx

    def _undo(self, images, inverses):
        """[(warp(image, T^-1), valid)] for each (image, T^-1) pair: the pixels whose sample point T^-1 p lies
        inside the warped image are those where a channel of ones, warped along, stays 1 (the round trip keeps
        them). Both directions in one homography_warp call, or one call each under --faithful."""
        with_ones = [torch.cat([im, torch.ones_like(im[:, :1])], 1) for im in images]
        if self.faithful:
            backs = [homography_warp(im, inv) for im, inv in zip(with_ones, inverses)]
        else:
            backs = homography_warp(torch.cat(with_ones), torch.cat(list(inverses))).chunk(len(images))
        return [(b[:, :-1], (b[:, -1:] > 0.999).to(b.dtype)) for b in backs]

    def _critic_pair(self, critic, real, fake):
        """(critic(real), critic(fake)): one batched call, or two under --faithful."""
        if self.faithful:
            return critic(real), critic(fake)
        scores = critic(torch.cat([real, fake]))
        return scores[:real.shape[0]], scores[real.shape[0]:]

    def _sia(self, x, xs, xa, ys, y):
        """SiaNet embeddings of the contrastive pairs: ((x, x_s), (x, x_a)) positive, ((x, y_s), (x, y)) negative."""
        if self.faithful:
            pairs = [(self.sia(x), self.sia(b)) for b in (xs, xa, ys, y)]
            return pairs[:2], pairs[2:]
        e = self.sia(torch.cat([x, xs, xa, ys, y])).chunk(5)
        return [(e[0], e[1]), (e[0], e[2])], [(e[0], e[3]), (e[0], e[4])]

    # --- one iteration -------------------------------------------------------------------------------------------
    def _generator_losses(self, x, mx, z1, y, my, z2):
        """The generator step's forward (critics frozen by the caller): (losses, x_a, y_a, T_xy, T_yx)."""
        cfg = self.run.cfg
        zero = x.new_zeros((), dtype=torch.float32)
        out = {}
        xs, mxs, T_xy, ys, mys, T_yx = self._spatial_both(x, mx, z1, y, my, z2)
        xa = self.g1(xs) if self.pixel else xs
        ya = self.g2(ys) if self.pixel else ys
        # cycle consistency
        if self.disentangled:
            inv_xy, inv_yx = normalized_inverse(T_xy), normalized_inverse(T_yx)
            (xb, valid_x), (yb, valid_y) = self._undo([xa, ya], [inv_xy, inv_yx])
            x_rec = self.g2(xb) if self.pixel else xb
            y_rec = self.g1(yb) if self.pixel else yb
            out["pcl"] = masked_l1(x_rec.float(), x.float(), valid_x) + masked_l1(y_rec.float(), y.float(), valid_y)
            out["scl"] = zero
            if self.spatial:
                out["scl"] = spatial_cycle_loss(T_xy, self.s2.predict(xa, mxs, z1)) + \
                    spatial_cycle_loss(T_yx, self.s1.predict(ya, mys, z2))
            out["cyc"] = out["scl"] + cfg["pcl_w"] * out["pcl"]
        else:  # the conventional cycle through the reverse networks' own predictions
            xb, _, _ = self._spatial(self.s2, xa, mxs, z1)
            yb, _, _ = self._spatial(self.s1, ya, mys, z2)
            x_rec = self.g2(xb) if self.pixel else xb
            y_rec = self.g1(yb) if self.pixel else yb
            out["scl"] = out["pcl"] = zero
            out["cyc"] = (x_rec.float() - x.float()).abs().mean() + (y_rec.float() - y.float()).abs().mean()
        out["adv"] = -(self.d1(xa).float().mean() + self.d2(ya).float().mean())
        out["adv_t"] = zero
        if self.spatial:
            fake_t, real_t = self._critic_pair(self.dt, T_xy, normalized_inverse(T_yx))
            out["adv_t"] = real_t.float().mean() - fake_t.float().mean()
        out["mask"] = zero
        if self.pixel:
            out["mask"] = (((xa.float() - xs.float()) * mxs).abs().mean()
                           + ((ya.float() - ys.float()) * mys).abs().mean())
        positives, negatives = self._sia(x, xs, xa, ys, y)
        out["con"] = sum(contrastive(a.float(), b.float(), True, cfg["margin"]) for a, b in positives) / 2 + \
            sum(contrastive(a.float(), b.float(), False, cfg["margin"]) for a, b in negatives) / 2
        out["loss"] = (cfg["adv_w"] * out["adv"] + cfg["spatial_adv_w"] * out["adv_t"] + cfg["cyc_w"] * out["cyc"]
                       + cfg["mask_w"] * out["mask"] + cfg["con_w"] * out["con"])
        return out, xa, ya, T_xy, T_yx

    def _critic_losses(self, x, y, xa, ya, T_xy, T_yx, e1, e2, e_t):
        """The critic step's losses on the generator step's (detached) outputs: (Wasserstein estimate of D1 + D2,
        that of D_T, the sum of the gradient penalties); e1, e2, e_t: the penalties' interpolation weights."""
        real1, fake1 = self._critic_pair(self.d1, y, xa)
        real2, fake2 = self._critic_pair(self.d2, x, ya)
        w_dist = (real1.float().mean() - fake1.float().mean()) + (real2.float().mean() - fake2.float().mean())
        gp = gradient_penalty(self.d1, y, xa, e1) + gradient_penalty(self.d2, x, ya, e2)
        if not self.spatial:
            return w_dist, torch.zeros_like(w_dist), gp
        real_t, fake_t = homography_vector(normalized_inverse(T_yx)), homography_vector(T_xy)
        rt, ft = self._critic_pair(self.dt.body, real_t, fake_t)
        return w_dist, rt.float().mean() - ft.float().mean(), gp + gradient_penalty(self.dt.body, real_t, fake_t, e_t)

    def train_step(self, batch, it):
        run, cfg = self.run, self.run.cfg
        x, y = run.images(normalize(batch["image"])), run.images(normalize(batch["target_image"]))
        mx, my = batch["mask"].float(), batch["target_mask"].float()
        n = x.shape[0]
        z1, z2 = self._codes(n), self._codes(n)
        for critic in self.critics:
            critic.requires_grad_(False)
        with run.autocast():
            out, xa, ya, T_xy, T_yx = self.generator_losses(x, mx, z1, y, my, z2)
        loss = out.pop("loss")
        self.opt_gen.zero_grad(set_to_none=True)
        self.opt_sia.zero_grad(set_to_none=True)
        run.backward(loss)
        run.step(self.opt_gen)
        run.step(self.opt_sia)
        for critic in self.critics:
            critic.requires_grad_(True)

        # critic step: WGAN-GP on the generator step's outputs (the interpolation weights drawn here, from the
        # run's generator, which a compiled graph cannot take)
        xa, ya, T_xy, T_yx = xa.detach(), ya.detach(), T_xy.detach(), T_yx.detach()
        e1, e2 = (torch.rand(n, generator=run.generator, device=run.device) for _ in range(2))
        e_t = torch.rand(n, generator=run.generator, device=run.device) if self.spatial else None
        with run.autocast():
            w_dist, w_t, gp = self.critic_losses(x, y, xa, ya, T_xy, T_yx, e1, e2, e_t)
        loss_d = -(w_dist + w_t) + cfg["gp_w"] * gp
        self.opt_dis.zero_grad(set_to_none=True)
        run.backward(loss_d)
        run.step(self.opt_dis)
        shift = (homography_vector(T_xy) - homography_vector(self._identity(n))).abs().mean()
        return {**{k: v.detach() for k, v in out.items()}, "loss": loss.detach(), "d": loss_d.detach(),
                "w": w_dist.detach(), "gp": gp.detach(), "w_t": w_t.detach(), "t_shift": shift}

    # --- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def adapt(self, images: torch.Tensor, masks: torch.Tensor, codes: torch.Tensor):
        """(spatially adapted, fully adapted) X -> Y images, each (N, M, 3, H, W), of N images under their own M
        codes (codes (N, M, code_dim)). One batched pass for all codes, or one pass per code under --faithful."""
        n, m = codes.shape[:2]
        if self.faithful:
            parts = [self._adapt_once(images, masks, codes[:, k]) for k in range(m)]
            return torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1)
        rep = lambda t: t.repeat_interleave(m, 0)
        xs, xa = self._adapt_once(rep(images), rep(masks), codes.reshape(n * m, -1))
        return xs.view(n, m, *xs.shape[1:]), xa.view(n, m, *xa.shape[1:])

    def _adapt_once(self, images, masks, code):
        with self.run.autocast():
            xs, _, _ = self._spatial(self.s1, images, masks.float(), code)
            xa = self.g1(xs) if self.pixel else xs
        return xs.float(), xa.float()

    def embed(self, images):
        raise ValueError("sagan: the adaptation stage has no re-id model; evaluate the re-id stage's run folder "
                         "(RUN or RUN/reid after python -m reidfast.train sagan --stage reid)")

    @torch.no_grad()
    def sample_images(self, batch):
        """Rows: source images, spatially adapted (code 1), fully adapted under SAMPLE_CODES codes, target images.
        The codes come from a fixed generator, not the run's (samples never change the training's random draws)."""
        x = normalize(batch["image"][:GRID_COLUMNS]).to(self.run.device)
        mx = batch["mask"][:GRID_COLUMNS].to(self.run.device)
        y = normalize(batch["target_image"][:GRID_COLUMNS]).to(self.run.device)
        g = torch.Generator(device=self.run.device).manual_seed(self.run.cfg["seed"])
        codes = torch.randn(x.shape[0], SAMPLE_CODES, self.code_dim, generator=g, device=self.run.device)
        modes = [m.training for m in self.networks.values()]
        for m in self.networks.values():
            m.eval()
        try:
            xs, xa = self.adapt(x, mx, codes)
        finally:
            for m, mode in zip(self.networks.values(), modes):
                m.train(mode)
        rows = [x, xs[:, 0]] + [xa[:, k] for k in range(SAMPLE_CODES)] + [y[:x.shape[0]]]
        grid = torch.stack([r.float() for r in rows])
        if grid.shape[1] < GRID_COLUMNS:
            grid = torch.cat([grid, grid.new_zeros((grid.shape[0], GRID_COLUMNS - grid.shape[1]) + grid.shape[2:])], 1)
        return grid.flatten(0, 1)


# --- the translation stage -----------------------------------------------------------------------------------------
def _market_name(pid: int, cam: int, seq: int, frame: int, ext: str) -> str:
    return f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s{seq}_{frame:06d}_00{ext}"


def _fold_camera(camid: int) -> int:
    """A 0-based camera id as a 1-based Market-1501 camera (1..6); ids beyond 6 are folded (recorded in
    translation.csv). Training reads only pids; evaluating on a folded test split would change the protocol."""
    return camid % MARKET_CAMERAS + 1


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _adapt_method(folder: Path, device: torch.device, flag: str = "--checkpoint"):
    """The adaptation stage's method from a run folder: RUN/adapt, RUN (stages.json names the adapt folder) or a
    checkpoint file of the adapt stage. `flag`: the option that named it, for the errors."""
    from .methods import load_trained_method
    folder = Path(folder)
    record = folder / "stages.json" if folder.is_dir() else None
    if record is not None and record.is_file() and (folder / "adapt" / LATEST).is_file():
        folder = folder / "adapt"
    method, cfg = load_trained_method(folder, device, log=lambda message: None, flag=flag)
    if not isinstance(method, AdaptStage):
        what = f"the SA-GAN {cfg.get('current_stage')} stage's" if type(method).name == "sagan" else \
            f"a {type(method).name} run's"
        raise ValueError(f"{flag} {folder}: not an SA-GAN adaptation stage (its checkpoint is {what})")
    return method, cfg


@torch.no_grad()
def translate(cfg: dict, out: Path, log=print) -> dict:
    """Write the adapted source training set (M variants per image) as a Market-1501 layout dataset into `out`
    (atomically: built in a temporary sibling folder, then renamed). Returns translation.json's dict."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(cfg["device"] if cfg["device"] != "auto" else auto)
    adapt_dir = Path(cfg["adapt_run"]) if cfg.get("adapt_run") else Path(cfg["run_folder"]) / "adapt"
    method, acfg = _adapt_method(adapt_dir, device, "--adapt-run")  # (RUN/adapt without it: what it defaults to)
    method.faithful = bool(cfg["faithful"])
    source = read_domain(acfg["source"], acfg["source_root"], acfg)
    size = (acfg["height"], acfg["width"])
    m = int(cfg["codes"])
    masks = MaskReader.for_dataset(source, acfg["source_masks"], acfg["missing_masks"])
    items = ImageDataset(source.train, size, masks=masks)
    loader = DataLoader(items, batch_size=cfg["eval_batch_size"], shuffle=False, num_workers=0)
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    folded = any(s.camid >= MARKET_CAMERAS for split in (source.train, source.query, source.gallery) for s in split)
    try:
        train_dir = tmp / "bounding_box_train"
        train_dir.mkdir()
        rows = []
        from PIL import Image
        for batch in loader:
            images = normalize(batch["image"].to(device))
            codes = torch.randn(images.shape[0], m, method.code_dim, generator=generator, device=device)
            _, adapted = method.adapt(images, batch["mask"].to(device), codes)
            pixels = (denormalize(adapted.flatten(0, 1)) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)
            pixels = pixels.view(images.shape[0], m, *pixels.shape[1:]).cpu().numpy()
            for row, index in enumerate(batch["index"].tolist()):
                sample = source.train[index]
                for k in range(m):
                    name = _market_name(sample.pid + 1, _fold_camera(sample.camid), k + 1, index, ".jpg")
                    Image.fromarray(pixels[row, k]).save(train_dir / name, quality=95)
                    rows.append((f"bounding_box_train/{name}", sample.path, sample.pid + 1, sample.camid, k + 1))
        for split, folder in (("query", "query"), ("gallery", "bounding_box_test")):
            (tmp / folder).mkdir()
            for index, sample in enumerate(getattr(source, split)):
                name = _market_name(sample.pid, _fold_camera(sample.camid), 1, index, Path(sample.path).suffix.lower())
                _link_or_copy(sample.path, tmp / folder / name)
                rows.append((f"{folder}/{name}", sample.path, sample.pid, sample.camid, 0))
        with open(tmp / "translation.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "source_image", "pid", "source_camid", "code"])
            writer.writerows(rows)
        info = {"source": source.name, "source_root": str(source.root), "adapt_run": str(adapt_dir), "codes": m,
                "train_images": len(source.train) * m, "height": size[0], "width": size[1],
                "cameras_folded": folded,
                "note": "bounding_box_train: the source's training images adapted to the target (sequence number = "
                        "spatial code); query and bounding_box_test: the source's own test split, not adapted"}
        (tmp / "translation.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"sagan: translated {len(source.train)} source images x {m} spatial codes into {out}")
    return info


# --- the re-id stage -----------------------------------------------------------------------------------------------
class ReidStage(Baseline):
    """The ID baseline on the adapted (or, with --no-adapt, raw) source images, tested on the target with the
    paper's protocol: Euclidean distance on the flip-averaged pool-5 feature, not normalized."""

    name = "sagan"
    eval_metric = "euclidean"
    eval_l2_normalize = False

    @classmethod
    def test_dataset_name(cls, cfg: dict) -> str:
        return cfg.get("dataset") or cfg["target"]  # as load_dataset reads it

    @classmethod
    def load_dataset(cls, cfg: dict) -> ReidDataset:
        """Train on the translated (or raw) source; test on the target, or on the dataset that ``--dataset`` /
        ``--data-root`` name (what ``python -m reidfast.eval --checkpoint RUN --dataset ...`` sets)."""
        if cfg.get("dataset") or cfg.get("data_root"):
            target = read_domain(cfg.get("dataset") or "market1501", cfg.get("data_root"), cfg)
        else:
            target = read_domain(cfg["target"], cfg["target_root"], cfg)
        if cfg["no_adapt"]:
            train = read_domain(cfg["source"], cfg["source_root"], cfg)
            trained_on = f"raw {train.name} (direct transfer)"
        else:
            folder = Path(cfg["translated"]) if cfg.get("translated") else Path(cfg["run_folder"]) / "translate"
            if not (folder / "translation.json").is_file():
                raise ValueError(f"sagan: no translated dataset at {folder} (run --stage translate first, pass "
                                 f"--translated DIR, or --no-adapt for direct transfer)")
            train = read_market1501(folder)
            trained_on = f"{train.root} (adapted source)"
        return ReidDataset(target.name, target.root, train.train, target.query, target.gallery,
                           info={"trained_on": trained_on})

    @torch.no_grad()
    def embed(self, images):
        with self.run.autocast():
            return self.model.pooled(images)


# --- the method: stages and the run folder -------------------------------------------------------------------------
class StageRecord:
    """RUN/stages.json: the stages this run does, each one's folder and status (running / done)."""

    def __init__(self, root: Path, write: bool = True):
        self.path, self.write = Path(root) / "stages.json", write  # write: False on torchrun's ranks but 0
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": [], "status": {},
                                                                                    "folders": {}}

    def reset(self, stages) -> None:
        """A new run of `stages`: their statuses are cleared; other stages' records (an earlier command's adapt
        stage, say) are kept."""
        listed = set(self.data["stages"]) | set(stages)
        self.data = {"stages": [s for s in STAGES if s in listed],
                     "status": {s: v for s, v in self.data["status"].items() if s not in stages},
                     "folders": {s: s for s in listed}}
        self._write()

    def status(self, stage: str) -> str | None:
        return self.data["status"].get(stage)

    def set(self, stage: str, status: str) -> None:
        self.data["status"][stage] = status
        self.data["folders"][stage] = stage
        self._write()

    def _write(self) -> None:
        if not self.write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps(self.data, indent=2) + "\n")


def refuse_under_torchrun(stages, world_size: int) -> None:
    """The adapt and translate stages run in one process: under torchrun (world_size > 1) they are refused, with
    the commands to run instead. Every rank would translate into the same folder, and the adaptation runs G1 and
    G2 twice per step (translation and cycle)."""
    if world_size > 1 and stages:
        steps = ", then ".join(f"--stage {stage}" for stage in stages)
        raise ValueError(f"sagan: the {' and '.join(stages)} stage cannot run under torchrun "
                         f"({'each runs' if len(stages) > 1 else 'it runs'} in one process): run {steps} without "
                         f"torchrun, then --stage reid under torchrun, with the same --out")


def stages_of(stage: str) -> tuple[str, ...]:
    if stage == "all":
        return STAGES
    if stage not in STAGES:
        raise ValueError(f"sagan: --stage must be one of {', '.join(STAGES)}, all; got {stage!r}")
    return (stage,)


def resumed_options(cfg: dict) -> dict:
    """The options given with --resume (cfg: the configuration --resume resolved), for the run's configuration. A
    new length (--iters or --epochs) replaces both."""
    given = {k: cfg[k] for k in cfg.get("resumed_with") or () if k in cfg and k not in _STAGE_KEYS}
    if given.keys() & {"iters", "epochs"}:
        given.update(iters=cfg["iters"], epochs=cfg["epochs"])
    return given


def _check_finished_adaptation(top: dict, given: dict, record, root: Path) -> None:
    """A new --adapt-iters given with --resume cannot reach an adaptation that finished before the stages after it
    began: refused before anything is written, instead of being saved and silently not applied."""
    pipeline = stages_of(top["stage"])
    if ("adapt_iters" not in given or "adapt" not in pipeline or pipeline[-1] == "adapt"
            or record.status("adapt") != "done" or not (root / "adapt" / LATEST).is_file()):
        return
    reached = load_checkpoint(root / "adapt" / LATEST, "sagan")["iteration"]
    if given["adapt_iters"] != reached:
        raise ValueError(f"sagan: --adapt-iters {given['adapt_iters']}: this run's adaptation stage finished at "
                         f"iteration {reached} and the stages after it start from that result; train a new run "
                         f"(--out DIR) with --adapt-iters {given['adapt_iters']}, or resume without --adapt-iters. "
                         f"Nothing was written.")


# what stage_config sets, never one of the run's own options
_STAGE_KEYS = {"current_stage", "out", "run_folder", "resume", "resumed_with"}


def stage_config(top: dict, stage: str, root: Path) -> dict:
    """A stage's configuration: the run's, with the stage's folder; the adaptation stage takes its length, batch
    and lr from the adapt_* options (the loop's own belong to the re-id stage)."""
    cfg = {**top, "current_stage": stage, "out": str(root / stage), "run_folder": str(root), "resume": None}
    if stage == "adapt":
        cfg.update(iters=top["adapt_iters"], epochs=None, batch_size=top["adapt_batch_size"], lr=top["gen_lr"])
    return cfg


class SAGAN(Method):
    """``SAGAN(run, dataset)`` builds the loop method of the stage ``run.cfg["current_stage"]`` names (an
    :class:`AdaptStage` or a :class:`ReidStage`): what evaluation and generation get from a stage's checkpoint.
    ``SAGAN.run(cfg)`` runs the stages ``--stage`` asks for."""

    name = "sagan"
    defaults = {
        # the run
        "stage": "all", "current_stage": None, "run_folder": None,
        "source": "synthetic-a", "source_root": None, "target": "synthetic-b", "target_root": None,
        "source_masks": None, "target_masks": None, "missing_masks": "error",
        "adapt_run": None, "translated": None, "no_adapt": False,
        # the re-id stage (the IDE baseline: ResNet-50, dropout, the last FC from pool-5 to the source identities,
        # no bottleneck; the paper: batch 128, SGD lr 0.01 / 10 after 25 of 50 epochs)
        "epochs": 50, "batch_size": 128, "lr": 0.01, "backbone_lr_mult": 1.0, "momentum": 0.9, "weight_decay": 5e-4,
        "lr_decay_at": [0.5], "lr_gamma": 0.1, "height": 256, "width": 128, "backbone_width": 64, "last_stride": 2,
        "dropout": 0.5, "label_smoothing": 0.0, "erasing": 0.0, "pad": 10, "pretrained": "auto", "warmup_iters": 0,
        "ap_mode": "market", "bottleneck": 0,
        # the adaptation stage
        "adapt_iters": 50_000, "adapt_batch_size": 8, "gen_lr": 2e-4, "dis_lr": 2e-4, "adam_beta1": 0.5,
        "adam_beta2": 0.999, "adapt_decay_from": 0.5, "ngf": 64, "gen_blocks": 9, "ndf": 64, "stm_hidden": 32,
        "stm_bound": 0.3, "stm_lr_mult": 0.1, "code_dim": 8, "dt_hidden": 64, "sianet_width": 64, "sianet_dim": 128,
        "codes": 10,
        "adv_w": 1.0, "spatial_adv_w": 1.0, "cyc_w": 10.0, "pcl_w": 1.0, "mask_w": 5.0, "con_w": 2.0, "margin": 2.0,
        "gp_w": 10.0, "no_spatial": False, "no_pixel": False, "no_disentangled_cycle": False, "faithful": False,
    }
    # CPU, synthetic a -> b: the baseline's cpu-quick re-id settings (quarter-width ResNet-50 from scratch, 64x32,
    # 600 iterations of 32) on the adapted images; narrow adaptation networks trained for 400 iterations of 8 + 8
    # at the default lrs (1e-3 made the STMs fold the images within 300 iterations), 4 codes. The STMs learn at
    # 0.3x with parameters bounded by 0.2, and the mask identity weight is 1: at 5 the generators keep the
    # people's domain-a colours, while domain b's people are as dark as its backgrounds (measured on the synthetic
    # format-2 domain b: mAP 5.2% at these settings, 3.9% with the weight 5 and the STMs at 0.1x, bound 0.2).
    # The re-id model keeps the baseline's 512-d ClassBlock bottleneck: the numbers in the README were measured with
    # it (not yet again with the paper's IDE head).
    presets = {
        "cpu-quick": {"epochs": None, "iters": 600, "batch_size": 32, "lr": 0.01, "height": 64, "width": 32,
                      "backbone_width": 16, "pad": 4, "synthetic_ids": 120, "ckpt_every": 200, "log_every": 20,
                      "warmup_iters": 50, "bottleneck": 512,
                      "adapt_iters": 400, "adapt_batch_size": 8, "ngf": 8, "gen_blocks": 2,
                      "ndf": 8, "stm_hidden": 16, "stm_bound": 0.2, "stm_lr_mult": 0.3, "mask_w": 1.0,
                      "dt_hidden": 32, "sianet_width": 8, "sianet_dim": 32, "codes": 4},
    }

    @classmethod
    def cuda_compile_mode(cls, cfg: dict) -> str:
        """The mode of the stage's method (the loop runs AdaptStage or ReidStage; this class stands for both)."""
        return (AdaptStage if cfg.get("current_stage") == "adapt" else ReidStage).cuda_compile_mode(cfg)

    @classmethod
    def unused_options(cls, given: set[str], cfg: dict) -> list[str]:
        """The loop's run-length, batch and lr options are the re-id stage's: with --stage adapt or translate they
        set nothing (a warning, not an error: one command line may serve every stage run separately)."""
        unused = [f"--{k.replace('_', '-')}" for k in ("iters", "epochs", "batch_size", "lr") if k in given]
        if not unused or "reid" in stages_of(cfg["stage"]):
            return []
        verb = "is an option" if len(unused) == 1 else "are options"
        return [f"sagan: {', '.join(unused)} {verb} of the re-id stage, which --stage {cfg['stage']} does not run "
                f"(ignored); the adaptation stage's length, batch and learning rates are --adapt-iters "
                f"({cfg['adapt_iters']}), --adapt-batch-size ({cfg['adapt_batch_size']}), --gen-lr ({cfg['gen_lr']:g}) "
                f"and --dis-lr ({cfg['dis_lr']:g})"]

    def __new__(cls, run, dataset):
        stage = run.cfg.get("current_stage")
        if stage not in ("adapt", "reid"):
            raise ValueError(f"sagan: a configuration of the adapt or reid stage is needed, got stage {stage!r}")
        return (AdaptStage if stage == "adapt" else ReidStage)(run, dataset)

    @classmethod
    def add_arguments(cls, parser) -> None:
        Baseline.add_arguments(parser)  # the re-id stage's flags
        S = argparse.SUPPRESS
        g = parser.add_argument_group("sagan")
        g.add_argument("--stage", choices=STAGES + ("all",), default=S,
                       help="adapt, translate, reid, or all three in order (default), each in RUN/<stage>")
        g.add_argument("--source", default=S, metavar="NAME",
                       help="labelled source dataset (default synthetic-a: the synthetic generator's domain a)")
        g.add_argument("--source-root", default=S, metavar="DIR", help="folder of the source dataset")
        g.add_argument("--target", default=S, metavar="NAME",
                       help="unlabelled target dataset (default synthetic-b: the synthetic generator's domain b)")
        g.add_argument("--target-root", default=S, metavar="DIR", help="folder of the target dataset")
        g.add_argument("--source-masks", default=S, metavar="DIR",
                       help="binary human masks of the source: DIR/<the image's path under the dataset folder, "
                            "suffix .png> (DIR/bounding_box_train/<stem>.png; MSMT17: DIR/train/<pid>/<stem>.png); "
                            "default: the dataset's masks/ folder, else <image>_mask.png beside each image")
        g.add_argument("--target-masks", default=S, metavar="DIR", help="the same for the target")
        g.add_argument("--missing-masks", choices=("error", "ones"), default=S,
                       help="an image without a mask: error (default) or an all-foreground mask")
        g.add_argument("--adapt-run", default=S, metavar="DIR",
                       help="translate with this adaptation run (default RUN/adapt)")
        g.add_argument("--translated", default=S, metavar="DIR",
                       help="re-id stage: train on this translated dataset (default RUN/translate)")
        g.add_argument("--no-adapt", action="store_true", default=S,
                       help="re-id stage on the raw source images (direct transfer, the paper's comparison)")
        g.add_argument("--adapt-iters", type=int, default=S, metavar="N", help="adaptation iterations (50000)")
        g.add_argument("--adapt-batch-size", type=int, default=S, metavar="B",
                       help="source (and as many target) images per adaptation iteration (8)")
        g.add_argument("--gen-lr", type=float, default=S, help="Adam lr of S1, S2, G1, G2 and SiaNet (2e-4)")
        g.add_argument("--dis-lr", type=float, default=S, help="Adam lr of D1, D2 and D_T (2e-4)")
        g.add_argument("--adapt-decay-from", type=float, default=S, metavar="FRAC",
                       help="fraction of the adaptation after which its lrs decay linearly to 0 (0.5)")
        g.add_argument("--ngf", type=int, default=S, help="generator base width (64)")
        g.add_argument("--gen-blocks", type=int, default=S, help="generator residual blocks (9)")
        g.add_argument("--ndf", type=int, default=S, help="critic base width (64)")
        g.add_argument("--stm-hidden", type=int, default=S, help="width of the STMs' localization networks (32)")
        g.add_argument("--stm-bound", type=float, default=S, metavar="B",
                       help="each homography parameter is B tanh(raw / B) (0.3; 0: unbounded)")
        g.add_argument("--stm-lr-mult", type=float, default=S, metavar="X",
                       help="the STMs' lr = X * --gen-lr (0.1: localization networks learn slower than the "
                            "generators, as usual for spatial transformers)")
        g.add_argument("--code-dim", type=int, default=S, help="size of the spatial code z (8)")
        g.add_argument("--dt-hidden", type=int, default=S, help="width of D_T's MLP (64)")
        g.add_argument("--sianet-width", type=int, default=S, help="SiaNet base width (64)")
        g.add_argument("--sianet-dim", type=int, default=S, help="SiaNet embedding size (128)")
        g.add_argument("--adam-beta1", type=float, default=S, help="Adam beta1 of the adaptation networks (0.5)")
        g.add_argument("--adam-beta2", type=float, default=S, help="Adam beta2 of the adaptation networks (0.999)")
        g.add_argument("--codes", type=int, default=S, metavar="M",
                       help="spatial codes per source image in the translated dataset (the paper's M = 10)")
        g.add_argument("--no-spatial", action="store_true", default=S,
                       help="ablation: no spatial level (no STMs, SCL or D_T)")
        g.add_argument("--no-pixel", action="store_true", default=S, help="ablation: no pixel level (no G1, G2)")
        g.add_argument("--no-disentangled-cycle", action="store_true", default=S,
                       help="ablation: the conventional cycle loss instead of SCL + PCL")
        g.add_argument("--faithful", action="store_true", default=S,
                       help="one network call per input as the original code (same losses, slower)")
        for name, text in (("adv-w", "pixel-level adversarial (1)"), ("spatial-adv-w", "spatial adversarial (1)"),
                           ("cyc-w", "cycle loss L_cyc (10)"), ("pcl-w", "lambda_pcl inside L_cyc (1)"),
                           ("mask-w", "mask identity loss (5)"), ("con-w", "contrastive loss (2)"),
                           ("gp-w", "WGAN gradient penalty (10)")):
            g.add_argument(f"--{name}", type=float, default=S, help=f"weight: {text}")
        g.add_argument("--margin", type=float, default=S, help="the contrastive loss's margin m (2)")

    @classmethod
    def load_dataset(cls, cfg: dict) -> ReidDataset:
        stage = cfg.get("current_stage")
        return (AdaptStage if stage == "adapt" else ReidStage).load_dataset(cfg)

    @classmethod
    def test_dataset_name(cls, cfg: dict) -> str:
        return ReidStage.test_dataset_name(cfg)  # the adaptation stage is not tested

    @classmethod
    def resume_dir(cls, run_dir: Path) -> Path:
        """The folder of the stage that was running (if it wrote a checkpoint), else the last finished stage's."""
        record = StageRecord(run_dir)
        found = Path(run_dir)
        for stage in record.data["stages"]:
            folder = Path(run_dir) / record.data["folders"].get(stage, stage)
            if (folder / LATEST).is_file() and record.status(stage) in ("running", "done"):
                found = folder
                if record.status(stage) == "running":
                    break
        return found

    @classmethod
    def run_folder(cls, cfg: dict) -> Path:
        """--out, else runs/sagan-synthetic or, for real data, runs/sagan-SOURCE-to-TARGET (--resume needs --out
        then)."""
        root = Path(cfg["out"]) if cfg["out"] else default_run_dir(cls.name, cfg)
        if not cfg["out"] and any(cfg[k] for k in ("source_root", "target_root")):
            root = root.parent / f"sagan-{cfg['source']}-to-{cfg['target']}"
        return root

    @classmethod
    def existing_checkpoints(cls, cfg: dict) -> list[Path]:
        """Those of the stages this run trains (--stage reid after --stage adapt in the same folder is not in the
        way; translate writes a dataset, replaced atomically, not a checkpoint)."""
        found = [cls.run_folder(cfg) / stage / LATEST for stage in stages_of(cfg["stage"])]
        return [path for path in found if path.is_file()]

    @classmethod
    def run(cls, cfg: dict, stream=None) -> dict | None:
        import sys
        stream = stream or sys.stderr
        # under torchrun (the re-id stage) every rank runs the stages, but only rank 0 writes the run folder's own
        # files (config.json, stages.json, the copies of the last stage's checkpoint and metrics) and the messages,
        # as the loop does for a stage's folder: the ranks would race for the same temporary files
        rank, world_size = torchrun_rank()
        main = rank == 0
        log = lambda message: print(message, file=stream, flush=True) if main else None
        resuming = bool(cfg.get("resume"))
        root = cls.run_folder(cfg)
        if resuming:  # the run folder holding the checkpoint (wherever the run folder has been moved since)
            folder = Path(cfg["resume"]).parent
            root = folder.parent if folder.name in STAGES and (folder.parent / "stages.json").is_file() else folder
        record = StageRecord(root, write=main)
        saved = None  # config.json as it was before the options given with --resume were written into it

        def fit(stage: str, scfg: dict, dataset: ReidDataset | None = None) -> dict | None:
            """The stage's training (on `dataset` when it has been read already); options the loop refuses before
            it trains (a length that ends before the checkpoint) leave config.json as it was, so that the next
            --resume does not meet them again."""
            nonlocal saved
            try:
                result = Trainer(AdaptStage if stage == "adapt" else ReidStage, scfg, stream, dataset).fit()
            except ConfigError:
                if saved is not None:
                    write_text_atomically(root / "config.json", saved)
                raise
            saved = None  # trained with them: they stay
            return result

        def publish(stage: str) -> None:
            """The run folder's checkpoint and metrics: the last finished training stage's."""
            if main:
                copy_atomically(root / stage / LATEST, root / LATEST)
                copy_atomically(root / stage / "metrics.json", root / "metrics.json")

        if resuming and (root / "config.json").is_file():
            top = json.loads((root / "config.json").read_text())
            given = resumed_options(cfg)
            _check_finished_adaptation(top, given, record, root)
            if given:  # the options given with --resume, as if given at the start: saved for a later --resume too
                top.update(given)
                if main:
                    saved = (root / "config.json").read_text()
                    write_text_atomically(root / "config.json", json.dumps(top, indent=2) + "\n")
        else:
            top = {**cfg, "current_stage": None, "run_folder": str(root), "out": str(root), "resume": None}
        pipeline = stages_of(top["stage"])
        one_process = [s for s in pipeline if s != "reid" and not (resuming and record.status(s) == "done")]
        refuse_under_torchrun(one_process, world_size)
        if top["no_adapt"] and pipeline != ("reid",):
            raise ValueError("sagan: --no-adapt trains the re-id stage on the raw source: use it with --stage reid")
        first_dataset = None
        if not resuming:
            # the first stage's datasets are found before the run folder is written: a wrong root or name leaves
            # nothing behind (the later stages' inputs are what the earlier ones write); the stage trains on them
            first = stage_config(top, pipeline[0], root)
            if pipeline[0] != "translate":
                first_dataset = (AdaptStage if pipeline[0] == "adapt" else ReidStage).load_dataset(first)
            elif first.get("adapt_run"):  # what translate reads, found before anything is written
                _adapt_method(Path(first["adapt_run"]), torch.device("cpu"), "--adapt-run")
            root.mkdir(parents=True, exist_ok=True)
            if main:
                (root / "config.json").write_text(json.dumps(top, indent=2) + "\n")
            record.reset(pipeline)
        metrics = None
        for stage in pipeline:
            if resuming and record.status(stage) == "done":
                if stage == pipeline[-1] and stage != "translate" and (root / stage / LATEST).is_file():
                    # the run's last stage, finished: like any finished run, it trains on if a longer length is
                    # given now, and otherwise says there is nothing to train (the loop decides)
                    scfg = stage_config(top, stage, root)
                    scfg["resume"] = str(root / stage / LATEST)
                    before = (root / stage / LATEST).stat().st_mtime_ns
                    metrics = fit(stage, scfg)
                    if (root / stage / LATEST).stat().st_mtime_ns != before:  # (trained on: else nothing written)
                        publish(stage)
                    continue
                log(f"sagan: stage {stage} finished earlier in {root / stage}: skipped")
                continue
            # the stage's configuration derives from the run's (the adapt stage's length, batch and lr from the
            # adapt_* options), resumed or not: flags given with --resume reach every stage they are meant for
            scfg = stage_config(top, stage, root)
            if resuming and record.status(stage) == "running" and (root / stage / LATEST).is_file():
                scfg["resume"] = str(root / stage / LATEST)  # the stage that was running continues
            else:
                for name in (LATEST, PREVIOUS):  # a fresh stage never resumes an older run's checkpoint
                    (root / stage / name).unlink(missing_ok=True)
            record.set(stage, "running")
            log(f"sagan: stage {stage} in {root / stage}")
            if stage == "translate":
                try:
                    translate(scfg, root / stage, log)
                except KeyboardInterrupt:  # (the loop's own Ctrl-C handling covers the training stages)
                    raise TrainingInterrupted(
                        "SIGINT: stopped in the translate stage, which keeps nothing of a partial translation. To "
                        "continue, run the same command again with --resume: translation starts again.",
                        signal.SIGINT, 0) from None
            else:
                metrics = fit(stage, scfg, first_dataset if stage == pipeline[0] else None)
                publish(stage)
            record.set(stage, "done")
        return metrics
