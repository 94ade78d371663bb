"""A network's gradient with respect to its input, for the penalties on it (DG-Net's R1, SA-GAN's WGAN-GP), in a
form that torch.compile traces."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call


def input_gradient(network: nn.Module, x: torch.Tensor, prepare: Callable | None = None):
    """(grad_x sum network(prepare(x)), network(prepare(x))), the sum taken in float32.

    By torch.func.grad, with the network's parameters as closed-over tensors: an explicit graph of the first
    derivative, which backward differentiates like any other, so a penalty on the gradient reaches the parameters
    (the same numbers as autograd.grad(create_graph=True)); unlike autograd.grad, torch.compile traces it (its
    autograd has no double backward)."""
    params = dict(network.named_parameters())

    def score_sum(inp):
        out = functional_call(network, params, (prepare(inp) if prepare is not None else inp,))
        return out.float().sum(), out

    return torch.func.grad(score_sum, has_aux=True)(x)
