"""Weight initializations of the published GAN configurations: one function for the schemes the models name."""
from __future__ import annotations

from torch import nn

_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def init_weights(network: nn.Module, scheme: str, *, zero_bias: bool = True, batchnorm: bool = False) -> nn.Module:
    """Initializes every convolution, transposed convolution and linear layer of ``network`` in place and returns it.

    scheme: "kaiming" (normal, fan_in, gain sqrt(2): DG-Net's Es, MLPs and G) or "gaussian" (N(0, 0.02): DG-Net's D,
    FD-GAN's G and D_pd). zero_bias: those layers' biases to 0 (DG-Net) or left at PyTorch's default (FD-GAN, whose
    published initialization touches weights only). batchnorm: BatchNorm scales N(1, 0.02) and shifts 0 (FD-GAN);
    otherwise they and every other layer (DG-Net's layer norm) keep their own.
    """
    if scheme not in ("kaiming", "gaussian"):
        raise ValueError(f"init_weights: scheme must be 'kaiming' or 'gaussian', got {scheme!r}")
    for m in network.modules():
        if isinstance(m, _WEIGHTED):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif batchnorm and isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return network
