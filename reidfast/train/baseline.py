"""The ID-classification baseline (and DG-Net's teacher): ResNet-50 + ClassBlock, cross-entropy, SGD.

Paper settings (the widely used PyTorch re-id baseline): 256x128 input, pad 10 + random crop + flip, batch 32,
SGD with momentum 0.9, Nesterov, weight decay 5e-4, lr 0.05 for the new head and 0.1x that (0.005) for the
ImageNet-initialised backbone, 60 epochs with the lr divided by 10 after epoch 40, dropout 0.5, last stride 2
(1 is the common stronger option), random erasing off, no label smoothing. A backbone trained from scratch
(no ImageNet weights, or a reduced width) gets the full lr: 0.1x is a fine-tuning rate.

The cpu-quick preset (the default on the CPU with synthetic data) trains a quarter-width ResNet-50 (width 16,
512-d pooled features) from scratch on 64x32 images of a 120-identity synthetic set: 600 iterations of 32
at lr 0.01 (0.05 diverges from scratch) with 50 warm-up iterations, a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from ..data import BatchAugment
from ..models.baseline import ReidBaseline
from .loop import Method, WarmupStepSchedule


def _auto_or_multiplier(text: str):
    """--backbone-lr-mult: "auto" or a number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected auto or a finite number >= 0, got {text!r}")
    return value


class Baseline(Method):
    name = "baseline"
    min_batch_size = 2
    defaults = {
        "epochs": 60, "batch_size": 32, "lr": 0.05, "backbone_lr_mult": "auto", "momentum": 0.9,
        "weight_decay": 5e-4, "lr_decay_at": [2 / 3], "lr_gamma": 0.1, "height": 256, "width": 128,
        "backbone_width": 64, "last_stride": 2, "dropout": 0.5, "label_smoothing": 0.0, "erasing": 0.0,
        "pad": 10, "pretrained": "auto", "ap_mode": "market", "warmup_iters": 0, "bottleneck": 512,
    }
    presets = {
        "cpu-quick": {"epochs": None, "iters": 600, "lr": 0.01, "height": 64, "width": 32, "backbone_width": 16,
                      "pad": 4, "synthetic_ids": 120, "ckpt_every": 200, "log_every": 20, "warmup_iters": 50},
    }

    @classmethod
    def add_arguments(cls, parser) -> None:
        S = argparse.SUPPRESS
        g = parser.add_argument_group("baseline")
        g.add_argument("--backbone-width", type=int, default=S,
                       help="ResNet-50 base width: 64 is ResNet-50 proper (paper); cpu-quick uses 16")
        g.add_argument("--last-stride", type=int, choices=(1, 2), default=S,
                       help="stride of ResNet-50's last stage (2 as ImageNet; 1 doubles the final map)")
        g.add_argument("--pretrained", default=S, metavar="PATH",
                       help="torchvision resnet50 state dict to start from; auto (default): the torch hub cache's "
                            "resnet50-*.pth if present (never downloaded), else from scratch; none: from scratch")
        g.add_argument("--backbone-lr-mult", type=_auto_or_multiplier, default=S, metavar="X",
                       help="backbone lr = X * lr; auto (default): 0.1 with ImageNet weights, 1 from scratch")
        g.add_argument("--momentum", type=float, default=S, help="SGD momentum (0.9)")
        g.add_argument("--weight-decay", type=float, default=S, help="SGD weight decay (5e-4)")
        g.add_argument("--lr-decay-at", type=float, nargs="+", default=S, metavar="FRAC",
                       help="fractions of the run after which the lr is multiplied by --lr-gamma (2/3: epoch 40 of 60)")
        g.add_argument("--lr-gamma", type=float, default=S, help="lr decay factor (0.1)")
        g.add_argument("--dropout", type=float, default=S, help="ClassBlock dropout before the classifier (0.5)")
        g.add_argument("--bottleneck", type=int, default=S, metavar="D",
                       help="ClassBlock's Linear + BatchNorm1d bottleneck before the classifier (512); 0: none, the "
                            "last FC on the pooled feature (IDE)")
        g.add_argument("--label-smoothing", type=float, default=S, help="cross-entropy label smoothing (0)")
        g.add_argument("--erasing", type=float, default=S, help="random erasing probability (0)")
        g.add_argument("--pad", type=int, default=S, help="zero padding before the random crop, pixels (10)")
        g.add_argument("--warmup-iters", type=int, default=S, metavar="N",
                       help="linear lr warm-up over the first N iterations (0; cpu-quick 50, for the network "
                            "trained from scratch)")

    def __init__(self, run, dataset):
        self.run = run
        cfg = run.cfg
        self.num_classes = dataset.num_train_pids
        model = ReidBaseline(self.num_classes, last_stride=cfg["last_stride"], width=cfg["backbone_width"],
                             dropout=cfg["dropout"], pretrained=cfg["pretrained"], log=run.log,
                             bottleneck=cfg.get("bottleneck", 512))  # runs saved before the option: 512
        self.model = run.place(model)
        self.train_model = run.wrap(self.model)
        mult = cfg["backbone_lr_mult"]
        if mult == "auto":
            mult = 0.1 if getattr(model.backbone, "pretrained_from", None) else 1.0
        lr = cfg["lr"]
        self.optimizer = run.optimizer(
            torch.optim.SGD,
            [{"params": self.model.backbone.parameters(), "lr": float(mult) * lr},
             {"params": self.model.head.parameters(), "lr": lr}],
            lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=True)
        self.augment = BatchAugment(pad=cfg["pad"], erase_p=cfg["erasing"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        self.networks = {"model": self.model}
        self.optimizers = {"sgd": self.optimizer}
        self.schedulers = {}

    def configure(self, total_iters: int) -> None:
        cfg = self.run.cfg
        milestones = sorted({max(1, round(f * total_iters)) for f in cfg["lr_decay_at"]})
        schedule = WarmupStepSchedule(cfg["warmup_iters"], milestones, cfg["lr_gamma"])
        self.schedulers = {"lr": torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)}

    def train_step(self, batch, it):
        images = self.run.images(self.augment(batch["image"], self.run.generator))
        labels = batch["pid"]
        with self.run.autocast():
            logits, _ = self.train_model(images)
        loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.run.backward(loss)
        self.run.step(self.optimizer)
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss.detach(), "acc": accuracy}

    @torch.no_grad()
    def embed(self, images):
        with self.run.autocast():
            return self.model.features(images)
