"""Which implementation of an op runs: "auto" | "cuda" | "triton" | "cpu" | "reference".

"auto" picks, for the device of the op's tensors, the fastest implementation that is built and usable:
cuda > triton > cpu > reference. On a CPU tensor the Triton kernels run only when asked for explicitly and the
Triton interpreter is on (TRITON_INTERPRET=1, set before reidfast is imported); they are a test path there.

Set it with `set_backend(name)`, for a block with `with use_backend(name):`, or with the environment variable
REIDFAST_BACKEND. `explain(op, device)` says why each faster implementation was or was not chosen.

An op without kernels of its own (conv2d) runs the same torch ops under every setting but "reference", on any
device; `resolve` and `explain` call that implementation "torch".
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os

import torch

from . import _extension

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
_AUTO_ORDER = ("cuda", "triton", "cpu", "reference")

# Which backends implement each op; ops register themselves here when their module is imported.
IMPLEMENTED: dict[str, tuple[str, ...]] = {}
# Ops made of torch ops rather than kernels (module docstring): op -> what those torch ops are, for explanations.
TORCH_OPS: dict[str, str] = {}
# (op, device type, setting) -> backend. Every input of the choice but the setting is fixed at import (what was
# built, whether triton is installed, TRITON_INTERPRET), and ops call resolve on every call: a few microseconds
# saved per call at the sizes where host overhead is comparable to the kernels.
_RESOLVED: dict[tuple[str, str, str], str] = {}

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _version(package: str) -> tuple[int, ...]:
    try:
        text = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


def _triton_interpreter_problem() -> str:
    """Why Triton's interpreter cannot run the kernels here, or "". triton 3.6 and older hand a kernel's int
    arguments to it as 1-element arrays, which a loop bound converts with int(): numpy 2.4 refuses that ("only
    0-dimensional arrays can be converted to Python scalars"; 2.3 only warned). triton 3.7 passes them as scalars.
    Seen with triton 3.6.0 (what torch 2.11 brings) under numpy 2.4.6 and 2.5.5, not 2.3.5; 3.7.1 and 3.8.0 ran."""
    triton_version, numpy_version = _version("triton"), _version("numpy")
    if triton_version and triton_version < (3, 7) and numpy_version >= (2, 4):
        return (f"the Triton interpreter of triton {'.'.join(map(str, triton_version))} cannot run with numpy "
                f"{'.'.join(map(str, numpy_version))} (int arguments as loop bounds): triton>=3.7 or numpy<2.4")
    return ""


# Whether the Triton kernels can run on CPU tensors, and if not why: under the interpreter, with triton installed
# (a CPU-only torch wheel does not bring it) and an interpreter that works with this numpy.
if not _TRITON_FOUND:
    TRITON_ON_CPU_WHY_NOT = "triton is not installed"
elif not TRITON_INTERPRET:
    TRITON_ON_CPU_WHY_NOT = "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1"
else:
    TRITON_ON_CPU_WHY_NOT = _triton_interpreter_problem()
TRITON_ON_CPU = not TRITON_ON_CPU_WHY_NOT


def _validate(name: str, source: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_ENVIRONMENT = "the environment variable REIDFAST_BACKEND"
# Read at import but checked when an op first resolves its backend: a misspelt value is then a ValueError that the
# command lines report in one line, not an import error raised before they can catch anything.
_current = os.environ.get("REIDFAST_BACKEND", "auto").strip() or "auto"


def set_backend(name: str) -> None:
    """Selects the implementation every reidfast op uses from now on (see the module docstring)."""
    global _current
    _current = _validate(name)


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """`with use_backend("reference"): ...` runs the block with that backend, then restores the previous one."""
    global _current
    previous, _current = _current, _validate(name)
    try:
        yield
    finally:
        _current = previous


def register_op(op: str, backends: tuple[str, ...], *, torch_ops: str | None = None) -> None:
    """`backends`: the settings with an implementation of their own. `torch_ops`, for an op without kernels: what
    every setting but "reference" runs instead (then `backends` is just ("reference",))."""
    IMPLEMENTED[op] = tuple(b for b in _AUTO_ORDER if b in backends)
    if torch_ops is not None:
        TORCH_OPS[op] = torch_ops
    _RESOLVED.clear()


def _check_op(who: str, op) -> None:
    if op not in IMPLEMENTED:
        raise ValueError(f"{who}: unknown op {op!r}; known ops: {', '.join(sorted(IMPLEMENTED))}")


def _unusable_reason(op: str, backend: str, device: torch.device) -> str:
    """Empty string when `backend` can run `op` on `device`; otherwise why not."""
    if op in TORCH_OPS and backend != "reference":
        return (f"{op} has no {backend} kernels: every setting but \"reference\" runs its {TORCH_OPS[op]}, on any "
                f"device")
    if backend not in IMPLEMENTED.get(op, ()):
        return f"{op} has no {backend} implementation"
    if backend == "reference":
        return ""
    if backend == "cpu":
        if device.type != "cpu":
            return f"the tensors are on {device}, not the CPU"
        return _extension.why_not_built()
    if backend == "cuda":
        if device.type != "cuda":
            return f"the tensors are on {device}, not a CUDA device"
        if not _extension.has_cpu_kernels():
            return _extension.why_not_built()
        if not _extension.has_cuda_kernels():
            return "reidfast._C was built without CUDA kernels (rebuild with nvcc and a CUDA build of torch)"
        return ""
    if backend == "triton":
        if not _TRITON_FOUND:
            return "triton is not installed"
        if device.type == "cuda":
            return ""
        if device.type == "cpu" and TRITON_INTERPRET:
            return TRITON_ON_CPU_WHY_NOT
        return f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for CPU tensors); tensors are on {device}"
    return f"unknown backend {backend!r}"


def explain(op: str, device: torch.device | str) -> list[tuple[str, str]]:
    """(backend, reason it is unusable or "" when usable) for each backend in "auto" order. For an op made of torch
    ops, ("torch", "") comes before "reference": what "auto" and every setting but "reference" run."""
    _check_op("explain_backend", op)
    device = torch.device(device)
    reasons = [(b, _unusable_reason(op, b, device)) for b in _AUTO_ORDER]
    if op in TORCH_OPS:
        reasons.insert(-1, ("torch", ""))
    return reasons


def resolve(op: str, device: torch.device) -> str:
    """The concrete backend that runs `op` for tensors on `device` under the current setting ("torch" for an op made
    of torch ops, unless the setting is "reference"). `device`: a torch.device or a string such as "cpu"."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if torch.compiler.is_compiling():
        # Traced, the cache would become a guard on its own contents (a recompile the first time each key is
        # added); the plain choice is guarded on the setting alone and costs nothing at run time.
        return _resolve_uncached(op, device)
    key = (op, device.type, _current)
    backend = _RESOLVED.get(key)
    if backend is None:
        backend = _RESOLVED[key] = _resolve_uncached(op, device)
    return backend


def _resolve_uncached(op: str, device: torch.device) -> str:
    _check_op("resolve_backend", op)
    _validate(_current, source=_ENVIRONMENT)  # set_backend and use_backend validate: only the environment's can fail
    if op in TORCH_OPS:
        return "reference" if _current == "reference" else "torch"
    if _current == "auto":
        for backend in _AUTO_ORDER:
            if backend == "triton" and device.type != "cuda":
                continue  # interpreted Triton is a test path, never an automatic choice
            if not _unusable_reason(op, backend, device):
                return backend
        raise RuntimeError(f"no backend can run {op} on {device}")  # unreachable: reference always works
    reason = _unusable_reason(op, _current, device)
    if reason:
        raise RuntimeError(f"reidfast backend {_current!r} cannot run {op}: {reason}")
    return _current
