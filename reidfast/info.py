"""`python -m reidfast.info`: what was built, on what, and which backend each op would use."""
from __future__ import annotations

import platform

import torch


def report() -> str:
    from . import __version__
    from .ops import _backend, _extension

    lines = [f"reidfast {__version__}", f"python {platform.python_version()} on {platform.machine()}"]
    lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        lines.append(f"triton {triton.__version__}" + (" (interpreter on)" if _backend.TRITON_INTERPRET else ""))
    except ImportError:
        lines.append("triton: not installed")
    if _extension.has_cpu_kernels():
        cuda = f"yes, archs {_extension.cuda_archs()}" if _extension.has_cuda_kernels() else "no"
        lines.append(f"reidfast._C: CPU kernels yes; CUDA kernels {cuda}")
    else:
        lines.append(f"reidfast._C: not loaded: {_extension.LOAD_ERROR}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
        props = torch.cuda.get_device_properties(devices[-1])
        lines.append(f"device: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("device: no CUDA device visible")
    lines.append(f"backend setting: {_backend.get_backend()}")
    for op in sorted(_backend.IMPLEMENTED):
        for device in devices:
            try:
                chosen = _backend.resolve(op, device)
            except RuntimeError as exc:
                chosen = f"error: {exc}"
            refused = [f"{b}: {why}" for b, why in _backend.explain(op, device) if why and b != chosen]
            lines.append(f"  {op:<16} on {device.type:<4} -> {chosen}")
            lines.extend(f"      not {r}" for r in refused)
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
