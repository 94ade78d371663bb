"""Checkpoints: written atomically (temporary file, fsync, rename), the previous one kept, RNG states included.

A run folder holds ``checkpoint.pt`` (the latest) and ``checkpoint.prev.pt`` (the one before). Writing never
leaves a half-written file under either name: the new file is written and fsync'ed under a temporary name,
the latest is renamed to ``.prev``, and the temporary file is renamed to the latest.
"""
from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

FORMAT = "reidfast-checkpoint"
FORMAT_VERSION = 1
LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or of another format or method."""


def capture_rng_states(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every random state a training step can touch (python, numpy, torch CPU, CUDA, named generators)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return states


def restore_rng_states(states: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(_as_tuple(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])
    for name, g in (generators or {}).items():
        if name in states["generators"]:
            g.set_state(states["generators"][name])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path) -> Path:
    """fsync `tmp`, rename it to `target`, fsync the folder: `target` is always its old or its new content."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def copy_atomically(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a file so that `target` is always either its old or its new content (temporary file, fsync,
    rename): how multi-stage methods publish a finished stage's checkpoint and metrics in the run folder."""
    source, target = Path(source), Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    shutil.copyfile(source, tmp)
    return _publish(tmp, target)


def write_bytes_atomically(target: str | os.PathLike, data: bytes) -> Path:
    """Write a file so that it is always either its old or its new content."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_bytes(data)
    return _publish(tmp, target)


def write_text_atomically(target: str | os.PathLike, text: str) -> Path:
    """Write a small text file (a run folder's JSON records) so that it is always either its old or its new
    content."""
    return write_bytes_atomically(target, text.encode())


def save_checkpoint(state: dict, run_dir: str | os.PathLike, keep_previous: bool = True) -> Path:
    """Write `state` as the run's latest checkpoint, keeping the previous one (`keep_previous` False: a new run's
    first checkpoint, which replaces those of the run the folder held before instead of keeping one of them as its
    fallback). Returns the path written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    latest, previous, tmp = run_dir / LATEST, run_dir / PREVIOUS, run_dir / f".{LATEST}.tmp"
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk, a quota: the checkpoints already there stay as they were
        tmp.unlink(missing_ok=True)
        kept = f"; {latest} is unchanged" if latest.exists() else ""
        raise CheckpointError(f"could not write a checkpoint in {run_dir} ({exc.strerror or exc}){kept}") from exc
    if not keep_previous:
        previous.unlink(missing_ok=True)
    elif latest.exists():
        os.replace(latest, previous)
    os.replace(tmp, latest)
    _fsync_dir(run_dir)
    return latest


def resolve_checkpoint(resume: str | os.PathLike | bool, run_dir: str | os.PathLike, flag: str = "--resume") -> Path:
    """The file a checkpoint option names: a file, a run folder (its latest checkpoint), or True (this run's).
    `flag` is the option the user gave (--resume, --checkpoint, --teacher, --init), for the error message."""
    path = Path(run_dir) if resume is True else Path(resume).expanduser()
    if path.is_dir():
        path = path / LATEST
    if not path.is_file():
        hint = f" ({path.parent / PREVIOUS} exists: pass {flag} {path.parent / PREVIOUS})" \
            if (path.parent / PREVIOUS).is_file() else ""
        raise CheckpointError(f"{flag}: no checkpoint at {path}{hint}")
    return path


def load_checkpoint(path: str | os.PathLike, method: str | None = None, flag: str = "--resume") -> dict:
    """Read and validate a checkpoint; any failure is a :class:`CheckpointError` naming the file (and, for a
    corrupted one with an intact previous checkpoint, how to pass that one through `flag`)."""
    path = Path(path)
    if not _written_by_torch_save(path):
        raise CheckpointError(f"{flag} {path}: not a checkpoint (not a file that torch.save writes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, unreadable file: all the same to the user
        previous = path.parent / PREVIOUS
        fallback = (f"; the previous checkpoint {previous} is intact: pass {flag} {previous}"
                    if previous.is_file() and previous != path else "")
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated and cannot be loaded "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){fallback}"
                              ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a reidfast training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('format_version')}; this reidfast "
                              f"reads version {FORMAT_VERSION}")
    if method is not None and state.get("method") != method:
        raise CheckpointError(f"{flag} {path}: this checkpoint was written by method {state.get('method')!r}, "
                              f"not {method!r}")
    return state


def _written_by_torch_save(path: Path) -> bool:
    """Whether the file starts as torch.save's output does: a zip archive, or a pickle (the legacy format). A
    truncated checkpoint still does; a features file, a config or an image does not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # unreadable: torch.load's own error says why
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
