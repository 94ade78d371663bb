"""BatchNorm over a concatenation of batches: one network call that computes what separate calls compute.

A network with BatchNorm in training mode couples the samples of a call through the batch statistics, so a trainer
that runs it on several batches per iteration (FD-GAN's Siamese branches, DG-Net's real images, their partners and
the generated swaps) cannot simply concatenate them: that would normalize every batch by the statistics of all of
them. Under :func:`batchnorm_groups` ``(module, g)``, the :class:`SplitBatchNorm1d` / :class:`SplitBatchNorm2d`
layers of `module` treat a batch of g equal groups as g calls: each group normalized by its own statistics, the
running statistics updated once per group, in order. Everything else in these networks is per sample, so the whole
network's call over the g groups gives the g calls' outputs, gradients and buffers (up to rounding), with the
convolutions running once, at g times the batch.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..ops._args import as_int


class _SplitBatchNorm:
    """The forward of the split layers (mixed into nn.BatchNorm1d / 2d; same parameters, buffers, state dict)."""

    groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        batch_statistics = self.training or self.running_mean is None
        if g == 1 or not batch_statistics:  # eval with running statistics: nothing is shared between samples
            return super().forward(x)
        if x.shape[0] % g:
            raise ValueError(f"{type(self).__name__}: batch {x.shape[0]} does not split into {g} equal groups")
        if torch.compiler.is_compiling() and self.momentum is not None:
            return self.grouped_forward(x, g)
        return torch.cat([super(_SplitBatchNorm, self).forward(chunk) for chunk in x.chunk(g)])

    def grouped_forward(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """The g groups' normalization in one pass: statistics per (group, channel) from one reduction over the
        batch viewed as (g, N/g, C, ...). Under torch.compile this is two fused kernels per layer where g calls
        of the module were 2g (and a ResNet-50 graph 4x the nodes, which its compile time follows); eager, the g
        calls read the activations fewer times, so they stay. Statistics in float32 for half-precision inputs, as
        BatchNorm computes them; the running statistics take the g updates in order in closed form (a momentum,
        not the cumulative average of momentum=None)."""
        n, c = x.shape[:2]
        count = (n // g) * x[0, 0].numel()  # values per channel and group
        if count <= 1:
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel and group when "
                             f"training, got input size {tuple(x.shape)} in {g} groups")
        groups = x.unflatten(0, (g, n // g))
        if groups.dtype in (torch.float16, torch.bfloat16):
            groups = groups.float()
        dims = (1,) + tuple(range(3, groups.dim()))
        var, mean = torch.var_mean(groups, dim=dims, correction=0, keepdim=True)  # (g, 1, C, 1, ...)
        y = (groups - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            per_channel = (1, 1, c) + (1,) * (groups.dim() - 3)
            y = y * self.weight.view(per_channel) + self.bias.view(per_channel)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.view(g, c).detach(), var.view(g, c).detach() * (count / (count - 1)))
        return y.flatten(0, 1).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """g updates r <- (1 - m) r + m s_k, k = 1..g in order: (1 - m)^g r + sum_k m (1 - m)^(g - k) s_k."""
        g, m = means.shape[0], self.momentum
        weight = [m * (1 - m) ** (g - 1 - k) for k in range(g)]
        self.running_mean.mul_((1 - m) ** g).add_(sum(w * s for w, s in zip(weight, means)))
        self.running_var.mul_((1 - m) ** g).add_(sum(w * s for w, s in zip(weight, variances)))
        self.num_batches_tracked.add_(g)


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d that, with ``groups`` = g > 1 and batch statistics, normalizes g equal slices of the batch
    with their own statistics and updates the running statistics once per slice, in order: the same as g calls."""


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d that, with ``groups`` = g > 1 and batch statistics, normalizes g equal slices of the batch
    with their own statistics and updates the running statistics once per slice, in order: the same as g calls."""


_SPLIT = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d}


def split_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm1d / BatchNorm2d of `module` (itself included) into its split twin, in place: the same
    objects, parameters, buffers and state dict (optimizers built before still apply). Returns `module`."""
    for m in module.modules():
        if type(m) in _SPLIT:
            m.__class__ = _SPLIT[type(m)]
    return module


@contextlib.contextmanager
def batchnorm_groups(module: nn.Module, groups: int):
    """Within the block, the split BatchNorm layers of `module` treat a batch as `groups` separate calls."""
    count = as_int(groups)
    if count is None:  # chunk() would refuse it in forward
        raise TypeError(f"batchnorm_groups: groups must be an int, got {groups!r}")
    groups = count
    if groups < 1:
        raise ValueError(f"batchnorm_groups: groups must be >= 1, got {groups}")
    layers = [m for m in module.modules() if isinstance(m, _SplitBatchNorm)]
    for m in layers:
        m.groups = groups
    try:
        yield module
    finally:
        for m in layers:
            m.groups = 1


@contextlib.contextmanager
def batchnorm_groups_of(counts):
    """:func:`batchnorm_groups` of several modules at once; counts: (module, groups) pairs. A trainer's compiled
    whole-step function holds each count as a constant of its graph: set the counts around its call, not inside."""
    with contextlib.ExitStack() as stack:
        for module, groups in counts:
            stack.enter_context(batchnorm_groups(module, groups))
        yield
