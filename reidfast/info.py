"""`python -m reidfast.info`: what was built, on what, and which backend each op would use;
`python -m reidfast.info --model baseline|dgnet|fdgan|sagan`: a method's parameter count per module."""
from __future__ import annotations

import platform

import torch


def setting_error() -> str | None:
    """Why the backend setting (REIDFAST_BACKEND, read at import) cannot run any op, or None."""
    from .ops import _backend
    try:
        _backend._validate(_backend.get_backend(), _backend._ENVIRONMENT)
    except ValueError as exc:
        return str(exc)
    return None


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
        lines.append(f"reidfast._C: CPU kernels yes; CUDA kernels {cuda}; built against torch "
                     f"{_extension.built_against() or 'unknown'}")
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
    error = setting_error()
    if error:  # a misspelt REIDFAST_BACKEND: no op would run, so say that instead of each op's choice
        lines.append(f"error: {error}")
        return "\n".join(lines)
    for op in sorted(_backend.IMPLEMENTED):
        for device in devices:
            try:
                chosen = _backend.resolve(op, device)
            except RuntimeError as exc:
                chosen = f"error: {exc}"
            if op in _backend.TORCH_OPS:  # no kernels to refuse: say what runs instead of listing absent ones
                what = f" ({_backend.TORCH_OPS[op]})" if chosen == "torch" else ""
                lines.append(f"  {op:<16} on {device.type:<4} -> {chosen}{what}")
                continue
            refused = [f"{b}: {why}" for b, why in _backend.explain(op, device) if why and b != chosen]
            lines.append(f"  {op:<16} on {device.type:<4} -> {chosen}")
            lines.extend(f"      not {r}" for r in refused)
    return "\n".join(lines)


MODELS = ("baseline", "dgnet", "fdgan", "sagan")
# the configuration that builds every network of a method (FD-GAN's stage III holds all five; SA-GAN has two
# stages with different networks)
_BUILD = {"baseline": [{}], "fdgan": [{"stage": 3}], "sagan": [{"current_stage": "adapt"}, {"current_stage": "reid"}]}


def _networks(name: str, num_classes: int, overrides: dict) -> dict:
    """A method's networks as its trainer builds them with the paper's settings, on the CPU, untrained."""
    from types import SimpleNamespace
    from .train.config import LOOP_DEFAULTS
    from .train.loop import Run
    from .train.methods import get_method
    method_cls = get_method(name)
    cfg = {**LOOP_DEFAULTS, **method_cls.defaults, **overrides, "pretrained": "none", "device": "cpu",
           "compile": False, "amp": "off", "channels_last": False}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda message: None)
    return method_cls(run, SimpleNamespace(num_train_pids=num_classes)).networks


def model_report(name: str, num_classes: int = 751) -> str:
    """Parameters per module of a method's networks at the published width (751: Market-1501's training ids)."""
    if name not in MODELS:
        raise ValueError(f"--model: no parameter report for {name!r}; choose from {', '.join(MODELS)}")
    from .models.dgnet import parameter_counts
    if name == "dgnet":  # finer than its three trainer networks: the paper's tables list these parts
        from .models.dgnet import AppearanceEncoder, Generator, MultiScaleDiscriminator
        ea = AppearanceEncoder(num_classes, pretrained="none", log=lambda message: None)
        gen = Generator(ea.code_features)
        modules = {"Ea: ResNet-50 (last stride 1)": ea.backbone,
                   "Ea: primary + fine heads": torch.nn.ModuleList([ea.primary, ea.fine]),
                   "Es: structure encoder": gen.encoder, "G: decoder": gen.decoder, "AdaIN MLPs": gen.mlp,
                   "D: 3-scale PatchGAN": MultiScaleDiscriminator()}
    else:
        modules = {}
        for overrides in _BUILD[name]:
            stage = overrides.get("current_stage")
            for key, module in _networks(name, num_classes, overrides).items():
                modules[f"{stage}: {key}" if stage else key] = module
    counts = parameter_counts(modules)
    lines = [f"{name} at the published width, {num_classes} training identities:"]
    lines += [f"  {k:<32} {v:>12,}" for k, v in counts.items()]
    lines.append(f"  {'total':<32} {sum(counts.values()):>12,}")
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m reidfast.info", description=__doc__)
    parser.add_argument("--model", choices=MODELS, help="print a method's parameter count per module instead")
    parser.add_argument("--num-classes", type=int, default=751, help="training identities for --model (751)")
    args = parser.parse_args(argv)
    if args.num_classes < 1:
        parser.error(f"--num-classes must be at least 1, got {args.num_classes}")
    print(model_report(args.model, args.num_classes) if args.model else report())
    if not args.model and setting_error():
        raise SystemExit(2)


if __name__ == "__main__":
    main()
