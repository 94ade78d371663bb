"""Checks of a path that a command line will write to, made before any work (the evaluation and training command
lines, the benchmarks): a run does not end in an error at its last step."""
from __future__ import annotations

import os
from pathlib import Path


def folder_path_error(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a folder to write into (made with the folders above it that do not exist yet), or None:
    the nearest part of it that exists is a file, or a folder this process cannot write in. The path is walked as
    written (``a/../b`` goes through ``a``, as the file system does), and the message names it as written."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:  # (only a relative path in a working directory that has been removed)
        return None
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK):
        return f"cannot write in {existing}"
    return None
