"""The device a --device option names, for every command line (train, eval, generate)."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device a --device option names (auto | cpu | cuda | cuda:N), for every command line: "auto" is the GPU
    when one is visible; a plain "cuda" is this process's local rank under torchrun, else GPU 0. A device that is
    not there is a ValueError naming the option."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is visible (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: reidfast runs on cpu or cuda")
    else:
        device = torch.device("cpu")  # cpu:N names the same CPU
    return device
