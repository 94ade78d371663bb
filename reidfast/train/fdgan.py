"""FD-GAN ('FD-GAN: Pose-guided Feature Distilling GAN for Robust Person Re-identification', NeurIPS 2018): its
losses, stages and update order only; the networks are in :mod:`reidfast.models.fdgan`, the rest in the shared loop.

A batch is P pairs (a, o) from :class:`VerificationPairSampler` (per anchor a: one positive, three negatives). Each
image has a target, another image of its identity drawn per pair (:class:`TargetPoseSampler`, as the published
configuration): t_a for the anchor; t_o, the same as t_a in a positive pair and an image of o's identity in a
negative one. A target's keypoints become an 18-channel Gaussian pose map on the device (peak 1, bandwidth drawn
per image from {4, 5, 6} pixels at height 256, scaled with the image height: online pose map augmentation): p_a,
p_o, with p_o = p_a in a positive pair. Both branches of a pair share the noise z ~ N(0, I_256), so positive pairs
share target pose and noise. Below, x = [a; o], t = [t_a; t_o], p = [p_a; p_o] and y = [y_a; y_o] stack the two
branches as the original does.

- Stage I (Siamese baseline): E on a and o, V on (f_a - f_o)^2, cross-entropy on same/different (L_v). SGD, E at
  lr, V at 10x (0.01 / 0.1), momentum 0.9, x0.1 half-way (80 epochs, x0.1 after 40). The published
  baseline's augmentation: a random box of 0.64-1 of the image (height / width 2-3) resized back, erasing, flip.
- Stages II and III augment as the published configuration: the inputs a and o are flipped and erased (p 0.75,
  one random colour), each target is flipped (p 0.5) with its pose map (its channels mirrored in place, not
  swapped left for right).
- Stage II: E and V frozen (requires_grad False, BatchNorm in eval mode). y_a = G(f_a, p_a, z), y_o = G(f_o, p_o,
  z). Each iteration: D_id step, D_pd step, then G step.
  D_id (Siamese, initialised from stage I's E and V): real pairs (x, t), fake pairs (x, y). D_pd: real [t, p],
  fake [y, p]. Sigmoid/BCE with smoothed labels for the discriminators (real ~ U(0.7, 1), fake ~ U(0, 0.3), one
  draw per discriminator call, as the published GAN loss). G: L_id and L_pd (BCE towards 1 on the fakes), L_r =
  L1(y, t) on every image, L_sp = L1(y_a, y_o) on positive pairs. Loss w_id L_id + w_pd L_pd + w_r L_r + w_sp L_sp
  (+ w_v L_v in stage III); ``--loss-weights paper`` gives (w_v, w_id, w_pd, w_r, w_sp) = (1, 0.1, 0.1, 10, 1),
  ``published`` ten times those (the published configuration). G Adam 1e-3, D_id SGD 1e-4, D_pd SGD 1e-2;
  constant for half the stage, then linear decay to 0 (50 + 50 epochs).
- BatchNorm: D_id's layers (backbone and head) keep stage I's running statistics in stages II and III (eval
  mode, their affine parameters training), and in stage III E's and V's too, as the published configuration fixes
  them (its set_bn_fix).
- Stage III: everything jointly, E's BatchNorm statistics frozen (above): L_v + the stage II
  losses train E, V and G; Adam for E, G, V at 1e-6, 1e-6, 1e-5, SGD for D_id, D_pd at 1e-4; 25 + 25 epochs.
  (Adam's betas are (0.5, 0.999) throughout; SGD has weight decay 5e-4 in stage I, 1e-4 for D_id and D_pd as
  in the published configuration.)

Image range: G's output is in [-1, 1] (generator range, pixel = (y + 1) / 2); L_r, L_sp and D_pd compare in that
range, D_id reads ImageNet-normalized images like E (see :mod:`reidfast.models.fdgan`).

Faster without changing the mathematics (``--faithful`` runs the original's order: one call per Siamese branch
and per discriminator input): the two branches of E run as one batched pass, D_id's backbone runs once per step
on the distinct inputs [x, t, y] (x's forward serves both the real and the fake pairs) and D_pd once on [t, y];
BatchNorm statistics stay per call of the original (SplitBatchNorm2d), so the losses are those of separate calls
up to rounding. Plus AMP and torch.compile from the loop: in stages II and III four functions
compile whole, one graph each (the generator pass; D_id's loss; D_pd's loss; the G step's losses), with the backwards
and optimizer steps between them.

Stages and run folders: ``--stage all`` (default) runs stages 1, 2, 3 into RUN/stage1..3, each initialised from
the previous stage's final checkpoint; ``--stage 2`` or ``3`` runs one stage from ``--init CHECKPOINT_OR_RUN``
(default RUN/stage<k-1>). After each stage its checkpoint.pt and metrics.json are copied atomically to RUN, so
RUN is what ``python -m reidfast.eval --checkpoint RUN`` and ``python -m reidfast.generate fdgan --checkpoint RUN``
read. ``--resume`` continues the stage that was running and then the ones after it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import (BatchAugment, BatchedSampler, ImageDataset, RandomResizedRectCrop, VerificationPairSampler,
                    flip_keypoints, keypoints_to_heatmaps, normalize, read_keypoints_csv)
from ..models.baseline import ClassBlock
from ..models.fdgan import (NOISE_FEATURE, IdentityDiscriminator, ImageEncoder, PoseDiscriminator, PoseGenerator,
                            Verifier, from_generator_range, set_batchnorm_eval, to_generator_range)
from ..nn import batchnorm_groups_of
from .checkpoint import (LATEST, CheckpointError, copy_atomically, load_checkpoint, resolve_checkpoint,
                         write_text_atomically)
from .loop import LinearDecaySchedule, Method, Trainer, WarmupStepSchedule, default_run_dir

GRID_COLUMNS = 8
# Loss weights of stages II and III. The published configuration's are the paper's times 10 (its commands give
# L_r 100, L_sp 10, L_v 10 in stage III, and its code weighs both adversarial terms 1): the same mixture of terms,
# and with Adam training E, G and V, the same updates up to Adam's eps.
LOSS_WEIGHTS = {"paper": {"v": 1.0, "id": 0.1, "pd": 0.1, "r": 10.0, "sp": 1.0},
                "published": {"v": 10.0, "id": 1.0, "pd": 1.0, "r": 100.0, "sp": 10.0}}
STAGES = (1, 2, 3)


class TargetPoseSampler(VerificationPairSampler):
    """:class:`VerificationPairSampler`'s (anchor, other) pairs with each image's target: another image of its
    identity (itself only if it has none), whose pose and pixels the generator is asked for, drawn per pair as the
    published configuration draws one per loaded image. In the positive pair the other image takes the anchor's
    target (positive pairs share target pose and noise); in a negative pair it has its own. Yields (anchor, other,
    anchor's target, other's target)."""

    def __iter__(self):
        targets = np.random.default_rng([self.seed, self.epoch, 1])  # a stream of its own: the pairs stay the same
        partner = self._positives.partner
        for anchor, other in super().__iter__():
            target = partner(anchor, targets)
            positive = self.pids[other] == self.pids[anchor]
            yield anchor, other, target, target if positive else partner(other, targets)


def _bce(logits: torch.Tensor, target) -> torch.Tensor:
    logits = logits.float()
    if not torch.is_tensor(target):
        target = torch.full_like(logits, float(target))
    target = target.view(target.shape[0], *([1] * (logits.dim() - 1))).expand_as(logits) \
        if target.dim() == 1 else target
    return F.binary_cross_entropy_with_logits(logits, target)


def _per_sample_l1(x, y) -> torch.Tensor:
    return (x.float() - y.float()).abs().flatten(1).mean(1)


class FDGAN(Method):
    name = "fdgan"
    min_batch_size = 2
    eval_metric = "euclidean"  # E's 2048-d pooled feature, Euclidean distance, no normalization
    eval_l2_normalize = False
    eval_flip = False  # the published evaluation: E's feature of the image alone, no mirror
    defaults = {
        "stage": "all", "init": None, "iters": None, "epochs": None,
        "stage_epochs": [80, 100, 50], "stage_iters": None, "batch_size": 128, "num_negatives": 3,
        "height": 256, "width": 128, "backbone_width": 64, "gan_width": 1.0, "pretrained": "auto",
        "lr": 0.01, "v_lr_mult": 10.0, "momentum": 0.9, "weight_decay": 5e-4, "d_weight_decay": 1e-4, "lr_gamma": 0.1,
        "stage1_decay_at": 0.5, "decay_from": 0.5, "stage1_id_w": 0.0, "warmup_iters": 0,
        "g_lr": 1e-3, "did_lr": 1e-4, "dpd_lr": 1e-2,
        "e_lr3": 1e-6, "g_lr3": 1e-6, "v_lr3": 1e-5, "did_lr3": 1e-4, "dpd_lr3": 1e-4,
        "loss_weights": "paper", "v_w": None, "id_w": None, "pd_w": None, "r_w": None, "sp_w": None,
        "pose_sigmas": [4.0, 5.0, 6.0], "dropout": 0.2, "keypoints": None, "faithful": False,
        "erasing": 0.75, "crop_area": 0.64,
        "ap_mode": "torchreid",
        # set by the run itself (saved with every stage's checkpoint): the stage a folder holds, the top-level
        # run folder, and the run length the user asked for (every stage's, unless one stage is resumed)
        "stage_running": None, "run_root": None, "length_request": None,
    }
    # On 2 CPU cores: width-16 ResNet-50s (512-d features), G and D_pd at 1/4 width, 64x32 images, 120 synthetic
    # identities, 16 pairs per iteration (4 anchors); stage lengths 600 / 80 / 30 iterations. No ImageNet weights
    # exist at width 16, and from scratch the verification loss alone leaves E where it started in a few hundred
    # iterations (measured: Rank-1 7% after 400, as untrained, with V at 10x E's rate diverging), so stage I adds an
    # identification loss (the baseline's ClassBlock head on E's feature, weight 1, 50 warm-up iterations) and V
    # trains at E's rate. G and the discriminators train at the stage-II rates, stage III at 10x the paper's
    # fine-tuning rates so that its 30 iterations move anything. No erasing and no resized crop (a flip only, as
    # the baseline's preset has no erasing): in 600 iterations from scratch the published augmentation costs more
    # than it regularizes (stage I's mAP 10.6% with it, 19.5% without the erasing, 25.4% without either; 11-28).
    options_of_older_runs = {"erasing": 0.75, "crop_area": 0.64}  # the published augmentation, before its options
    presets = {
        "cpu-quick": {"stage_iters": [600, 80, 30], "stage_epochs": None, "batch_size": 16, "height": 64,
                      "width": 32, "backbone_width": 16, "gan_width": 0.25, "synthetic_ids": 120,
                      "erasing": 0.0, "crop_area": 1.0,
                      "stage1_id_w": 1.0, "warmup_iters": 50, "v_lr_mult": 1.0,
                      "e_lr3": 1e-5, "g_lr3": 1e-5, "v_lr3": 1e-4, "did_lr3": 1e-3, "dpd_lr3": 1e-3,
                      "ckpt_every": 100, "log_every": 10},
    }

    @classmethod
    def add_arguments(cls, parser) -> None:
        S = argparse.SUPPRESS
        g = parser.add_argument_group("fdgan")
        g.add_argument("--stage", choices=("1", "2", "3", "all"), default=S,
                       help="all (default): stages I, II, III in RUN/stage1..3, each starting from the previous "
                            "one's result; 1: the Siamese baseline E + V; 2: G, D_id, D_pd with E, V frozen; "
                            "3: everything jointly (E's BatchNorm statistics frozen)")
        g.add_argument("--init", default=S, metavar="CHECKPOINT_OR_RUN",
                       help="--stage 2|3 only: the previous stage's checkpoint or run folder (default "
                            "RUN/stage<k-1>)")
        g.add_argument("--stage-epochs", type=int, nargs=3, default=S, metavar=("I", "II", "III"),
                       help="epochs of each stage (80 100 50); --epochs / --iters set every stage's length")
        g.add_argument("--stage-iters", type=int, nargs=3, default=S, metavar=("I", "II", "III"),
                       help="iterations of each stage instead of --stage-epochs (cpu-quick: 600 80 30)")
        g.add_argument("--loss-weights", choices=tuple(LOSS_WEIGHTS), default=S,
                       help="weights of L_v, L_id, L_pd, L_r, L_sp: paper (1, 0.1, 0.1, 10, 1; default) or "
                            "published (10, 1, 1, 100, 10: the published configuration, the paper's times 10); "
                            "--v-w, --id-w, --pd-w, --r-w, --sp-w override each")
        for name, text in (("v-w", "verification loss L_v"), ("id-w", "identity adversarial loss L_id"),
                           ("pd-w", "pose adversarial L_pd"), ("r-w", "reconstruction L_r"),
                           ("sp-w", "same-pose L_sp")):
            g.add_argument(f"--{name}", type=float, default=S, help=f"weight: {text} (from --loss-weights)")
        g.add_argument("--backbone-width", type=int, default=S, help="E's and D_id's ResNet-50 base width (64)")
        g.add_argument("--gan-width", type=float, default=S, help="channel multiplier of G and D_pd (1: the paper's)")
        g.add_argument("--pretrained", default=S, metavar="PATH",
                       help="torchvision resnet50 weights for stage I's E; auto: the torch hub cache's if present")
        g.add_argument("--v-lr-mult", type=float, default=S, help="stage I: V's lr = X * lr (10: 0.1 vs 0.01)")
        g.add_argument("--stage1-id-w", type=float, default=S,
                       help="stage I: weight of an added identification loss (ClassBlock head on E's feature; 0, "
                            "the paper: verification only; cpu-quick 1, see the preset)")
        g.add_argument("--warmup-iters", type=int, default=S, metavar="N",
                       help="stage I: linear lr warm-up over the first N iterations (0; cpu-quick 50)")
        g.add_argument("--g-lr", type=float, default=S, help="stage II: G's Adam lr (1e-3)")
        g.add_argument("--did-lr", type=float, default=S, help="stage II: D_id's SGD lr (1e-4)")
        g.add_argument("--dpd-lr", type=float, default=S, help="stage II: D_pd's SGD lr (1e-2)")
        for net, label, value in (("e", "E (Adam)", "1e-6"), ("g", "G (Adam)", "1e-6"), ("v", "V (Adam)", "1e-5"),
                                  ("did", "D_id (SGD)", "1e-4"), ("dpd", "D_pd (SGD)", "1e-4")):
            g.add_argument(f"--{net}-lr3", type=float, default=S, help=f"stage III: lr of {label} ({value})")
        g.add_argument("--d-weight-decay", type=float, default=S,
                       help="stages II, III: weight decay of D_id's and D_pd's SGD (1e-4, the published "
                            "configuration's; stage I's SGD has --weight-decay, 5e-4)")
        g.add_argument("--stage1-decay-at", type=float, default=S, metavar="FRAC",
                       help="stage I: the lr is multiplied by --lr-gamma after this fraction of the stage (0.5)")
        g.add_argument("--lr-gamma", type=float, default=S, help="stage I: lr decay factor (0.1)")
        g.add_argument("--decay-from", type=float, default=S, metavar="FRAC",
                       help="stages II, III: constant lr for this fraction of the stage, then linear decay (0.5)")
        g.add_argument("--num-negatives", type=int, default=S, help="negative pairs per positive pair (3)")
        g.add_argument("--erasing", type=float, default=S, metavar="P",
                       help="every stage: probability of erasing a box of each input image (0.75, the published "
                            "configuration's; cpu-quick 0)")
        g.add_argument("--crop-area", type=float, default=S, metavar="MIN",
                       help="stage I: the random box resized back to the image covers U(MIN, 1) of it (0.64, the "
                            "published baseline's; 1: no crop; cpu-quick 1)")
        g.add_argument("--pose-sigmas", type=float, nargs="+", default=S, metavar="PX",
                       help="pose map bandwidths at height 256, one drawn per pair (4 5 6; scaled with the height)")
        g.add_argument("--keypoints", default=S, metavar="CSV",
                       help="keypoints of the training images (name:keypoints_y:keypoints_x, in the pixels of the "
                            "dataset's images); default: the dataset's own (the synthetic data has them)")
        g.add_argument("--faithful", action="store_true", default=S,
                       help="the original's order of operations (one call per Siamese branch and per "
                            "discriminator input): same losses, slower; for comparison")

    # --- networks -------------------------------------------------------------------------------------------
    def __init__(self, run, dataset):
        self.run = run
        cfg = run.cfg
        self.stage = int(cfg["stage_running"] or (1 if cfg["stage"] == "all" else cfg["stage"]))
        if self.stage not in STAGES:
            raise ValueError(f"fdgan: stage must be 1, 2 or 3, got {self.stage}")
        if cfg["loss_weights"] not in LOSS_WEIGHTS:
            raise ValueError(f"fdgan: loss_weights must be one of {', '.join(LOSS_WEIGHTS)}, "
                             f"got {cfg['loss_weights']!r}")
        if run.world_size > 1:
            raise ValueError("fdgan does not run under torchrun yet: train on one device")
        self.faithful = bool(cfg["faithful"])
        # stages II and III take E from the previous stage (configure() says which): no backbone weights to report
        first = self.stage == 1
        self.e = run.place(ImageEncoder(cfg["backbone_width"], pretrained=cfg["pretrained"] if first else "none",
                                        log=run.log if first else (lambda message: None)))
        self.v = run.place(Verifier(self.e.out_features))
        # Stages II and III compile four whole-step functions (the generator pass, D_id's loss, D_pd's loss, the G
        # step's losses), networks and losses in one graph each; stage I and --faithful compile each network on its
        # own (faithful: called once per Siamese branch and discriminator input, as in the original).
        per_network = self.stage == 1 or self.faithful
        wrap = run.wrap if per_network else (lambda module: module)
        whole = (lambda fn: fn) if per_network else run.compiled
        self.train_e, self.train_v = wrap(self.e), wrap(self.v)
        self.networks = {"e": self.e, "v": self.v}
        # the published input augmentation of every stage: its eraser (p 0.75; area 0.02-0.2 of the image, aspect
        # ratio uniform in [0.3, 1/0.3], one random colour; placed at random, where its code pastes the box at an
        # offset equal to the box's own size) and a flip; stage I crops first, stages II and III flip each target
        # with its pose map (_gan_step)
        self.input_augment = BatchAugment(flip_p=0.5, pad=0, erase_p=cfg["erasing"], erase_area=(0.02, 0.2),
                                          erase_ratio=(0.3, 1 / 0.3), erase_ratio_scale="linear",
                                          erase_value="colour")
        sgd = dict(momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        d_sgd = dict(momentum=cfg["momentum"], weight_decay=cfg.get("d_weight_decay", 5e-4))  # (runs saved before it)
        SGD, Adam = torch.optim.SGD, torch.optim.Adam
        if self.stage == 1:
            self.optimizers = {
                "e": run.optimizer(SGD, self.e.parameters(), lr=cfg["lr"], **sgd),
                "v": run.optimizer(SGD, self.v.parameters(), lr=cfg["v_lr_mult"] * cfg["lr"], **sgd)}
            if cfg["stage1_id_w"]:
                self.cls = run.place(ClassBlock(self.e.out_features, dataset.num_train_pids))
                self.networks["cls"] = self.cls
                self.optimizers["cls"] = run.optimizer(SGD, self.cls.parameters(), lr=cfg["lr"], **sgd)
            # the published baseline's box of 0.64-1 of the image (--crop-area), h / w 2-3; 1: no crop
            self.crop = RandomResizedRectCrop((cfg["crop_area"], 1.0)) if cfg["crop_area"] < 1 else None
        else:
            h, w = cfg["height"], cfg["width"]
            self.g = run.place(PoseGenerator(self.e.out_features, h, w, cfg["gan_width"], cfg["dropout"]))
            self.d_id = run.place(IdentityDiscriminator(cfg["backbone_width"]))
            self.d_pd = run.place(PoseDiscriminator(cfg["gan_width"]))
            self.train_g, self.train_did, self.train_dpd = wrap(self.g), wrap(self.d_id.backbone), wrap(self.d_pd)
            self.generator_pass = whole(self._generator_pass)
            self.did_loss, self.dpd_loss = whole(self._did_loss), whole(self._dpd_loss)
            self.generator_losses = whole(self._generator_losses)
            self.networks.update(g=self.g, d_id=self.d_id, d_pd=self.d_pd)
            adam = dict(betas=(0.5, 0.999))
            if self.stage == 2:
                self.e.requires_grad_(False)
                self.v.requires_grad_(False)
                self.optimizers = {
                    "g": run.optimizer(Adam, self.g.parameters(), lr=cfg["g_lr"], **adam),
                    "d_id": run.optimizer(SGD, self.d_id.parameters(), lr=cfg["did_lr"], **d_sgd),
                    "d_pd": run.optimizer(SGD, self.d_pd.parameters(), lr=cfg["dpd_lr"], **d_sgd)}
            else:  # E's BatchNorm statistics frozen (eval mode, _set_modes); its affine parameters train
                self.optimizers = {
                    "e": run.optimizer(Adam, self.e.parameters(), lr=cfg["e_lr3"], **adam),
                    "g": run.optimizer(Adam, self.g.parameters(), lr=cfg["g_lr3"], **adam),
                    "v": run.optimizer(Adam, self.v.parameters(), lr=cfg["v_lr3"], **adam),
                    "d_id": run.optimizer(SGD, self.d_id.parameters(), lr=cfg["did_lr3"], **d_sgd),
                    "d_pd": run.optimizer(SGD, self.d_pd.parameters(), lr=cfg["dpd_lr3"], **d_sgd)}
        self.weights = {name: weight if cfg[f"{name}_w"] is None else float(cfg[f"{name}_w"])
                        for name, weight in LOSS_WEIGHTS[cfg["loss_weights"]].items()}
        if self.stage == 1 and cfg["v_w"] is None:  # the presets weigh stages II and III; stage I is L_v alone
            self.weights["v"] = 1.0
        if not cfg["pose_sigmas"] or any(not float(s) > 0 for s in cfg["pose_sigmas"]):
            raise ValueError(f"fdgan: --pose-sigmas must be positive pixel bandwidths, got {cfg['pose_sigmas']}")
        self.sigmas = torch.tensor([float(s) * cfg["height"] / 256 for s in cfg["pose_sigmas"]], device=run.device)
        self.schedulers = {}

    # --- data -----------------------------------------------------------------------------------------------
    def batch_sampler(self, dataset, seed):
        """P (anchor, other, anchor's target, other's target) per iteration, 1 positive : num_negatives negative
        pairs."""
        return BatchedSampler(TargetPoseSampler(dataset.train, self.run.cfg["num_negatives"], seed),
                              self.run.cfg["batch_size"])

    def train_items(self, dataset):
        size = (self.run.cfg["height"], self.run.cfg["width"])
        if self.stage == 1:  # the Siamese baseline needs no pose
            return ImageDataset(dataset.train, size=size)
        return ImageDataset(dataset.train, size=size, keypoints=self.training_keypoints(dataset),
                            missing_keypoints="empty")

    def training_keypoints(self, dataset) -> dict:
        csv = self.run.cfg["keypoints"] or dataset.keypoints_csv
        if csv is None or not Path(csv).is_file():
            raise ValueError(f"fdgan stages II and III need pose keypoints of the training images: pass --keypoints "
                             f"CSV (name:keypoints_y:keypoints_x); {dataset.name} has none"
                             + (f" ({csv} not found)" if csv else ""))
        keypoints = read_keypoints_csv(csv)
        missing = sum(Path(s.path).name not in keypoints for s in dataset.train)
        if missing:
            self.run.log(f"fdgan: {missing} of {len(dataset.train)} training images have no keypoints in {csv}: "
                         f"their pose maps are empty")
        return keypoints

    def images_per_iteration(self) -> int:
        return 2 * self.run.cfg["batch_size"]  # the two Siamese inputs of every pair

    # --- schedules and the hand-off between stages ----------------------------------------------------------
    def configure(self, total_iters: int) -> None:
        cfg = self.run.cfg
        if self.stage == 1:
            milestones = [max(1, round(cfg["stage1_decay_at"] * total_iters))]
            schedule = lambda: WarmupStepSchedule(cfg["warmup_iters"], milestones, cfg["lr_gamma"])  # noqa: E731
        else:
            schedule = lambda: LinearDecaySchedule(round(cfg["decay_from"] * total_iters), total_iters)  # noqa: E731
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule())
                           for name, opt in self.optimizers.items()}
        if self.stage > 1 and cfg["init"]:
            self.initialize_from(cfg["init"])

    def initialize_from(self, source) -> None:
        """Start this stage from the previous stage's checkpoint: stage II takes E and V (and initialises D_id
        from them), stage III takes every network of stage II."""
        path, state = init_checkpoint(source, self.stage)
        previous = state["config"]["stage_running"]
        for name in (("e", "v") if self.stage == 2 else tuple(self.networks)):
            self.networks[name].load_state_dict(state["networks"][name])
        if self.stage == 2:
            self.d_id.init_from(self.e, self.v)
        self.run.log(f"fdgan: stage {self.stage} starts from {path} (stage {previous}, iteration {state['iteration']})")

    def _set_modes(self) -> None:
        """Frozen parts: stage II's E and V entirely (eval mode); the BatchNorm statistics of D_id in stages II and
        III and of E and V in stage III (eval mode BatchNorm: running statistics used and kept), as the published
        configuration's set_bn_fix. Re-applied every step because the loop's evaluation puts every network back
        into training mode."""
        if self.stage == 2:
            self.e.eval()
            self.v.eval()
        elif self.stage == 3:
            set_batchnorm_eval(self.e)
            set_batchnorm_eval(self.v)
        if self.stage > 1:
            set_batchnorm_eval(self.d_id)

    # --- one iteration --------------------------------------------------------------------------------------
    def _groups(self, **counts):
        """Within the block, the split BatchNorm layers of E (e=g), D_id (d_id=g) and D_pd (d_pd=g) treat a batch as
        g separate calls: the batched passes. Set around a whole (compiled) step function, whose graph holds each
        count as a constant; nothing under --faithful (one call per input)."""
        if self.faithful:
            return contextlib.nullcontext()
        return batchnorm_groups_of([(getattr(self, name), count) for name, count in counts.items()])

    def _encode(self, a, o, grad: bool):
        """f_a, f_o: E's Siamese branches, as one batched pass (BatchNorm per branch, under _groups(e=2)) or two
        calls."""
        with torch.set_grad_enabled(grad):
            if self.faithful:
                return self.train_e(a), self.train_e(o)
            return self.train_e(torch.cat([a, o])).chunk(2)

    def _did_features(self, *groups):
        """D_id's backbone features of several image groups, each a call of the original (both branches' inputs,
        their targets, their generated images): one pass with per-group BatchNorm (under
        _groups(d_id=len(groups))), or a call each. The D step's pass (3 groups, D_id trainable) and the G step's
        (2 groups, D_id frozen, input needs grad) belong to different whole-step graphs: one shared pass would make
        every G step compute D_id's weight gradients and the targets' features."""
        if self.faithful:
            return [self.train_did(x).mean((2, 3)) for x in groups]
        return list(self.train_did(torch.cat(groups)).mean((2, 3)).chunk(len(groups)))

    def _dpd(self, images, pose):
        """D_pd's patch logits for several image groups in the same pose maps (under _groups(d_pd=len(images)))."""
        if self.faithful:
            return [self.train_dpd(x, pose) for x in images]
        return list(self.train_dpd(torch.cat(images), pose.repeat(len(images), 1, 1, 1)).chunk(len(images)))

    def train_step(self, batch, it):
        self._set_modes()
        return self._stage1_step(batch) if self.stage == 1 else self._gan_step(batch)

    def _stage1_step(self, batch):
        run = self.run
        images = batch["image"][:, :2]  # (P, 2, 3, H, W): anchor, other
        x = images.flatten(0, 1)
        x = run.images(self.input_augment(self.crop(x, run.generator) if self.crop else x, run.generator))
        x = x.view(images.shape[:2] + x.shape[1:])
        same = (batch["pid"][:, 0] == batch["pid"][:, 1]).long()
        with run.autocast(), self._groups(e=2):
            f_a, f_o = self._encode(x[:, 0], x[:, 1], grad=True)
            logits = self.train_v(f_a, f_o)
            if "cls" in self.networks:
                id_logits = self.cls(torch.cat([f_a, f_o]))[0]
        out = {"v": F.cross_entropy(logits.float(), same)}
        loss = self.weights["v"] * out["v"]
        if "cls" in self.networks:
            out["cls"] = F.cross_entropy(id_logits.float(), batch["pid"][:, :2].T.reshape(-1))
            loss = loss + self.run.cfg["stage1_id_w"] * out["cls"]
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        run.backward(loss)
        for opt in self.optimizers.values():
            run.step(opt)
        accuracy = (logits.detach().argmax(1) == same).float().mean()
        return {**{k: v.detach() for k, v in out.items()}, "acc": accuracy, "loss": loss.detach()}

    def pose_maps(self, keypoints: torch.Tensor, sigma=None) -> torch.Tensor:
        """(B, 18, H, W) pose maps of (B, 18, 2) keypoints; sigma (B,) in pixels, default the middle bandwidth."""
        cfg = self.run.cfg
        if sigma is None:
            sigma = self.sigmas[len(self.sigmas) // 2]
        # check_sigma=False: every sigma is one of self.sigmas, checked positive above; checking again would wait
        # on the GPU once per step.
        return keypoints_to_heatmaps(keypoints.float(), cfg["height"], cfg["width"], sigma, check_sigma=False)

    def _draws(self, pairs: int, device) -> dict:
        """Every random number of a stage II/III step, in one fixed order (so both orders of operations and a
        resumed run draw the same): the bandwidths of both branches' pose maps ([anchor's; other's]), the noise
        (one per pair, both branches), label smoothing for D_id and D_pd (one label per call, expanded to both
        branches' real or fake inputs),
        the targets' flips ([anchor's; other's])."""
        g = self.run.generator

        def uniform(n, lo, hi):
            return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device).to(device)

        sigma = self.sigmas[torch.randint(len(self.sigmas), (2 * pairs,), generator=g, device=g.device).to(device)]
        noise = torch.randn(pairs, NOISE_FEATURE, generator=g, device=g.device).to(device)
        return {"sigma": sigma, "noise": noise,
                # one smoothed label per discriminator call, real or fake, as the published GAN loss draws them
                **{name: uniform(1, lo, hi).expand(2 * pairs) for name, lo, hi in (
                    ("id_real", 0.7, 1.0), ("id_fake", 0.0, 0.3), ("pd_real", 0.7, 1.0), ("pd_fake", 0.0, 0.3))},
                "target_flip": uniform(2 * pairs, 0.0, 1.0) < 0.5}

    @staticmethod
    def _share(same: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        """[v_a; v_o] with a positive pair's v_o replaced by its v_a (the other branch takes the anchor's target)."""
        v_a, v_o = both.chunk(2)
        return torch.cat([v_a, torch.where(same.view(-1, *[1] * (v_a.dim() - 1)), v_a, v_o)])

    def target_poses(self, keypoints: torch.Tensor, same: torch.Tensor, sigma: torch.Tensor,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
        """[p_a; p_o] (2P, 18, H, W): the pose maps of both targets from (P, 4, 18, 2) keypoints (anchor, other,
        anchor's target, other's target), (2P,) bandwidths and (2P,) flips (None: none). A positive pair's other
        branch takes the anchor's map (its target's keypoints, bandwidth and flip). A flipped map is mirrored
        without swapping the left and right channels, as the published code flips its maps with its targets."""
        sigma, points = self._share(same, sigma), self._share(same, torch.cat([keypoints[:, 2], keypoints[:, 3]]))
        if flip is not None:
            flip = self._share(same, flip)
            mirrored = flip_keypoints(points, self.run.cfg["width"], swap_left_right=False)
            points = torch.where(flip.view(-1, 1, 1), mirrored, points)
        return self.pose_maps(points, sigma)

    # --- stages II and III: the four parts of a step (each one compiled graph) ------------------------------------
    def _generator_pass(self, a, o, pose, noise):
        """(V's logits on (f_a, f_o) in stage III, else None; G's images [y_a; y_o] of both branches, each in its
        target's pose, pose = [p_a; p_o]), E with gradient in stage III only."""
        joint = self.stage == 3
        f_a, f_o = self._encode(a, o, grad=joint)
        logits = self.train_v(f_a, f_o) if joint else None
        fake = self.train_g(torch.cat([f_a, f_o]), pose, noise.repeat(2, 1))
        return logits, fake

    def _did_loss(self, x, t, fake, id_real, id_fake):
        """D_id's loss: real pairs (x, t), fake pairs (x, y); x = [a; o], t = [t_a; t_o], fake = [y_a; y_o] in
        generator range."""
        h_x, h_t, h_y = self._did_features(x, t, from_generator_range(fake))
        return _bce(self.d_id.head(h_x, h_t), id_real) + _bce(self.d_id.head(h_x, h_y), id_fake)

    def _dpd_loss(self, t_gen, fake, pose, pd_real, pd_fake):
        """D_pd's loss: real [t, p], fake [y, p] (t_gen, fake and pose of both branches stacked)."""
        real_pd, fake_pd = self._dpd([t_gen, fake], pose)
        return _bce(real_pd, pd_real) + _bce(fake_pd, pd_fake)

    def _generator_losses(self, x, fake, t_gen, pose, same, logits):
        """The G step's unweighted losses (the discriminators frozen by the caller); in stage III also L_v and V's
        accuracy from the generator pass's logits. x = [a; o], fake = [y_a; y_o], t_gen = [t_a; t_o] in generator
        range, pose = [p_a; p_o]."""
        out = {}
        g_x, g_y = self._did_features(x, from_generator_range(fake))
        out["id"] = _bce(self.d_id.head(g_x, g_y), 1.0)
        (fake_pd,) = self._dpd([fake], pose)
        out["pd"] = _bce(fake_pd, 1.0)
        out["r"] = _per_sample_l1(fake, t_gen).mean()  # every generated image has its target
        y_a, y_o = fake.chunk(2)
        positive = same.float()
        out["sp"] = (_per_sample_l1(y_a, y_o) * positive).sum() / positive.sum().clamp(min=1)
        if logits is not None:
            out["v"] = F.cross_entropy(logits.float(), same.long())
            out["acc"] = (logits.detach().argmax(1) == same.long()).float().mean()
        return out

    def _gan_step(self, batch):
        run, w = self.run, self.weights
        images = batch["image"]  # (P, 4, 3, H, W): anchor, other, anchor's target, other's target
        pairs = images.shape[0]
        same = (batch["pid"][:, 0] == batch["pid"][:, 1])
        r = self._draws(pairs, images.device)
        # both branches stacked as the original does: x = [a; o] (erased and flipped), t = [t_a; t_o] (a positive
        # pair's branches share the target), each target flipped with its pose map
        x = run.images(self.input_augment(images[:, :2].transpose(0, 1).flatten(0, 1), run.generator))
        a, o = x.chunk(2)
        flip = self._share(same, r["target_flip"]).view(-1, 1, 1, 1)
        t = self._share(same, torch.cat([images[:, 2], images[:, 3]]))
        t = run.images(normalize(torch.where(flip, t.flip(-1), t)))
        pose = self.target_poses(batch["keypoints"], same, r["sigma"], r["target_flip"])
        joint = self.stage == 3
        with run.autocast(), self._groups(e=2):
            logits, fake = self.generator_pass(a, o, pose, r["noise"])
        t_gen = to_generator_range(t)

        # D_id step: real pairs (x, t), fake pairs (x, y)
        self.d_id.requires_grad_(True)
        with run.autocast(), self._groups(d_id=3):
            loss_did = self.did_loss(x, t, fake.detach(), r["id_real"], r["id_fake"])
        self.optimizers["d_id"].zero_grad(set_to_none=True)
        run.backward(loss_did)
        run.step(self.optimizers["d_id"])

        # D_pd step: real [t, p], fake [y, p]
        self.d_pd.requires_grad_(True)
        with run.autocast(), self._groups(d_pd=2):
            loss_dpd = self.dpd_loss(t_gen, fake.detach(), pose, r["pd_real"], r["pd_fake"])
        self.optimizers["d_pd"].zero_grad(set_to_none=True)
        run.backward(loss_dpd)
        run.step(self.optimizers["d_pd"])

        # G step (+ E and V in stage III); the discriminators keep no gradients
        self.d_id.requires_grad_(False)
        self.d_pd.requires_grad_(False)
        with run.autocast(), self._groups(d_id=2, d_pd=1):
            out = self.generator_losses(x, fake, t_gen, pose, same, logits)
        loss = w["id"] * out["id"] + w["pd"] * out["pd"] + w["r"] * out["r"] + w["sp"] * out["sp"]
        names = ("g",)
        if joint:
            loss = loss + w["v"] * out["v"]
            names = ("e", "g", "v")
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        run.backward(loss)
        for name in names:
            run.step(self.optimizers[name])
        self.d_id.requires_grad_(True)
        self.d_pd.requires_grad_(True)
        return {"d_id": loss_did.detach(), "d_pd": loss_dpd.detach(), **{k: v.detach() for k, v in out.items()},
                "loss": loss.detach()}

    # --- test time ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images):
        with self.run.autocast():
            return self.e(images)

    @torch.no_grad()
    def verifier_distances(self, query_features, gallery_features, topk: int = 100, chunk: int = 16384):
        """The verification cascade: each query's top-`topk` gallery items by Euclidean distance, re-ordered by
        V's probability of 'same person' (highest first); the rest keep their Euclidean order behind them.
        Returns a (Q, G) distance matrix for ``rank_eval(distmat=...)``; V runs batched on V's device."""
        device = next(self.v.parameters()).device
        qf, gf = query_features.to(device).float(), gallery_features.to(device).float()
        dist = torch.cdist(qf, gf).square()
        k = min(int(topk), gf.shape[0])
        if k < 1:
            return dist.cpu()
        top = dist.topk(k, dim=1, largest=False).indices  # (Q, k)
        q_index = torch.arange(qf.shape[0], device=device).unsqueeze(1).expand(-1, k).reshape(-1)
        g_index = top.reshape(-1)
        was_training = self.v.training
        self.v.eval()
        try:
            prob = torch.cat([self.v.same_probability(qf[q_index[i:i + chunk]], gf[g_index[i:i + chunk]])
                              for i in range(0, q_index.numel(), chunk)])
        finally:
            self.v.train(was_training)
        # behind every re-scored item: the Euclidean order, shifted past the largest re-scored value (1)
        rescored = dist - dist.min(1, keepdim=True).values + 2.0
        rescored.scatter_(1, top, (1.0 - prob).view(-1, k))
        return rescored.cpu()

    @torch.no_grad()
    def generate(self, images, pose, noise=None):
        """Generated images (generator range) of normalized `images` in `pose` maps, G in eval mode."""
        if self.stage == 1:
            raise ValueError("fdgan: this is a stage I checkpoint (E and V only): generation needs stage II or III")
        modes = [m.training for m in (self.e, self.g)]
        self.e.eval()
        self.g.eval()
        try:
            if noise is None:
                g = torch.Generator(device=images.device).manual_seed(0)
                noise = torch.randn(images.shape[0], NOISE_FEATURE, generator=g, device=images.device)
            with self.run.autocast():
                return self.g(self.e(images), pose, noise).float()
        finally:
            for m, mode in zip((self.e, self.g), modes):
                m.train(mode)

    @torch.no_grad()
    def sample_images(self, batch):
        """Rows of 8: inputs a, target pose maps, generated images, ground truth t (stages II and III)."""
        if self.stage == 1:
            return None
        n = min(GRID_COLUMNS, batch["image"].shape[0])
        device = self.run.device
        a = normalize(batch["image"][:n, 0].to(device))
        t = normalize(batch["image"][:n, 2].to(device))
        pose = self.pose_maps(batch["keypoints"][:n, 2].to(device))
        fake = from_generator_range(self.generate(a, pose))
        rows = torch.stack([a, pose_picture(pose), fake, t])  # (4, n, 3, H, W)
        if n < GRID_COLUMNS:
            rows = torch.cat([rows, rows.new_zeros((4, GRID_COLUMNS - n) + rows.shape[2:])], dim=1)
        return rows.flatten(0, 1).float()

    # --- the whole run: stages, run folders, resume -------------------------------------------------------
    @classmethod
    def run(cls, cfg, stream=None):
        root = run_root(cfg)
        stages = list(STAGES) if str(cfg["stage"]) == "all" else [int(cfg["stage"])]
        keypoints = Path(cfg["keypoints"]).expanduser() if cfg["keypoints"] is not None else None
        if keypoints is not None and not keypoints.is_file():  # found now, not after stage I has trained
            raise ValueError(f"--keypoints {cfg['keypoints']}: " + (
                "is a folder; expected the 18-point OpenPose CSV file (name:keypoints_y:keypoints_x)"
                if keypoints.is_dir() else "no such file"))
        resume = cfg.get("resume")
        resumed_stage = int(cfg["stage_running"]) if resume and cfg.get("stage_running") else None
        given = set(cfg.get("resumed_with") or ()) if resume else set()
        if cfg.get("length_request") is None:  # a fresh run: remember the length asked for
            cfg["length_request"] = {"iters": cfg["iters"], "epochs": cfg["epochs"]}
        elif given & {"stage_iters", "stage_epochs"}:  # stage lengths given with --resume replace the run's length
            cfg["length_request"] = {"iters": None, "epochs": None}
        metrics, config_written = None, resumed_stage is not None
        for stage in stages:
            if resumed_stage is not None and stage < resumed_stage:
                continue  # finished before the interruption
            stage_cfg = cls.stage_config(cfg, stage, root, resumed=stage == resumed_stage)
            if not config_written:  # once the first stage's inputs are found (a missing --init writes nothing)
                root.mkdir(parents=True, exist_ok=True)
                (root / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
                config_written = True
            folder = Path(stage_cfg["out"])
            # a resumed stage that had finished trains on only if given a longer length now (the loop says so)
            stage_cfg["resume"] = resume if stage == resumed_stage else None
            metrics = Trainer(cls, stage_cfg, stream).fit()
            publish(folder, root)
        return metrics

    @classmethod
    def run_folder(cls, cfg: dict) -> Path:
        return run_root(cfg)

    @classmethod
    def unused_options(cls, given: set[str], cfg: dict) -> list[str]:
        """--init starts a single stage II or III; --stage 1 has no checkpoint to start from, and --stage all starts
        each stage from the one before it."""
        if "init" in given and cfg.get("init") and str(cfg["stage"]) in ("1", "all"):
            then = "starts from no checkpoint" if str(cfg["stage"]) == "1" else \
                "starts stages II and III from its own stages I and II"
            return [f"fdgan: --init starts --stage 2 or 3 on its own; --stage {cfg['stage']} {then} (ignored)"]
        return []

    @classmethod
    def existing_checkpoints(cls, cfg: dict) -> list[Path]:
        """Those of the stages this run trains (--stage 2 after --stage 1 in the same folder is not in the way)."""
        stages = list(STAGES) if str(cfg["stage"]) == "all" else [int(cfg["stage"])]
        found = [cls.run_folder(cfg) / f"stage{stage}" / LATEST for stage in stages]
        return [path for path in found if path.is_file()]

    @classmethod
    def stage_config(cls, cfg: dict, stage: int, root: Path, resumed: bool = False) -> dict:
        c = dict(cfg, stage_running=stage, run_root=str(root), out=str(root / f"stage{stage}"))
        # a resumed stage keeps its saved length, unless --resume gives it one: --iters/--epochs (that stage's,
        # already in cfg) or --stage-iters/--stage-epochs (every stage's)
        given = set(cfg.get("resumed_with") or ())
        if not resumed or (given & {"stage_iters", "stage_epochs"} and not given & {"iters", "epochs"}):
            request = cfg["length_request"] or {}
            if request.get("iters") or request.get("epochs"):
                c["iters"], c["epochs"] = request.get("iters"), request.get("epochs")
            elif cfg.get("stage_iters"):
                c["iters"], c["epochs"] = int(cfg["stage_iters"][stage - 1]), None
            else:
                c["iters"], c["epochs"] = None, int(cfg["stage_epochs"][stage - 1])
        if not resumed:
            if stage > 1:
                if str(cfg["stage"]) == "all" or not cfg.get("init"):
                    c["init"] = str(root / f"stage{stage - 1}")
                if not (Path(c["init"]).is_file() or (Path(c["init"]) / LATEST).is_file()):
                    raise ValueError(f"fdgan stage {stage} starts from stage {stage - 1}'s checkpoint: none at "
                                     f"{c['init']} (run --stage {stage - 1} first, or pass --init CHECKPOINT_OR_RUN)")
                if str(cfg["stage"]) != "all":  # a single stage: its start checked before the run folder is written
                    init_checkpoint(c["init"], stage)
            else:
                c["init"] = None
        return c

    @classmethod
    def resume_dir(cls, run_dir: Path) -> Path:
        """The latest stage folder with a checkpoint (RUN/stage3, then 2, then 1); RUN itself for a stage folder."""
        run_dir = Path(run_dir)
        for stage in reversed(STAGES):
            folder = run_dir / f"stage{stage}"
            if (folder / LATEST).is_file():
                return folder
        return run_dir


def init_checkpoint(source, stage: int) -> tuple[Path, dict]:
    """The checkpoint that --init (or the previous stage's folder) names for `stage`, and its contents: an error
    unless it is an FD-GAN checkpoint of the stage before."""
    path = resolve_checkpoint(source, source, flag="--init")
    state = load_checkpoint(path, "fdgan", flag="--init")
    previous = state["config"].get("stage_running")
    if previous != stage - 1:
        raise CheckpointError(f"--init: fdgan stage {stage} starts from a stage {stage - 1} checkpoint; {path} "
                              f"holds stage {previous}")
    return path, state


def run_root(cfg: dict) -> Path:
    """The top-level run folder (holding stage1..3). A resumed stage's saved config has out = its stage folder."""
    out = Path(cfg["out"]) if cfg["out"] else default_run_dir("fdgan", cfg)
    root, stage = cfg.get("run_root"), cfg.get("stage_running")
    if root and stage and out == Path(root) / f"stage{stage}":
        return Path(root)
    return out


def publish(stage_dir: Path, root: Path) -> None:
    """Copy a finished stage's checkpoint.pt and metrics.json (with its stage) up to the run folder, atomically:
    the run folder always holds the result of the last finished stage."""
    stage = int(stage_dir.name.removeprefix("stage"))
    copy_atomically(stage_dir / LATEST, root / LATEST)
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    write_text_atomically(root / "metrics.json", json.dumps({**metrics, "stage": stage}, indent=2) + "\n")


def pose_picture(pose: torch.Tensor) -> torch.Tensor:
    """(B, 18, H, W) pose maps -> (B, 3, H, W) normalized images showing their maximum (white = 1)."""
    return normalize(pose.amax(1, keepdim=True).clamp(0, 1).expand(-1, 3, -1, -1))
