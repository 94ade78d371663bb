"""torch.compile's compiled code kept in the run folder, so that a run resumed on another machine (a new node of a
cluster, an empty /tmp) does not compile again: DG-Net's first iteration compiles for minutes on a GPU.

The file holds torch's cache artifacts (``torch.compiler.save_cache_artifacts``: Inductor's compiled graphs with
their kernels, AOTAutograd's entries), one file per torch version. A run with compile on loads it before its first
iteration; torch uses an entry only where its key (graph, torch, device, settings) matches, so changed code or
another device costs a compile, never a wrong kernel. The run writes the file again (atomically) whenever it compiled
or reused something the file did not hold: after its first iteration and at each checkpoint. It is a cache: failing
to read or write it is logged and never stops a run.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import write_bytes_atomically


def cache_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / f"compiled-code-torch-{torch.__version__}.bin"


def _keys(info) -> set[str]:
    """The artifact keys a CacheInfo lists (a set, to tell whether a save would add anything)."""
    return {f"{kind}/{key}" for kind, keys in getattr(info, "artifacts", {}).items() for key in keys}


class CompiledCodeCache:
    """Loads and saves one run folder's compiled code; ``log`` gets a line for each load, write or failure."""

    def __init__(self, run_dir: str | Path, log, writes: bool = True):
        self.path = cache_path(run_dir)
        self.log = log
        self.writes = writes  # False on every rank but the first: one writer per folder
        self.known: set[str] = set()  # what the file holds, as far as this process knows

    def load(self) -> int:
        """Hands the file's artifacts to torch; returns how many (0 without a file or when it cannot be read)."""
        if not self.path.is_file():
            return 0
        try:
            info = torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except Exception as exc:  # a cache: a damaged or foreign file costs a compile, not the run
            info, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "torch could not read it"  # torch logs why and returns None for bytes it cannot read
        if info is None:
            self.log(f"compile: could not load the compiled code in {self.path} ({why}); compiling instead")
            return 0
        self.known = _keys(info)
        if self.known:
            self.log(f"compile: loaded {len(self.known)} compiled entries from {self.path}; the first iteration uses "
                     "those whose graph, torch and device match and compiles the rest")
        return len(self.known)

    def save(self) -> bool:
        """Writes what this process compiled or reused, when that holds an entry the file does not. True if written."""
        if not self.writes:
            return False
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return False
            data, info = saved
            keys = _keys(info)
            if not keys - self.known:
                return False
            write_bytes_atomically(self.path, data)
        except Exception as exc:
            self.log(f"compile: could not write the compiled code to {self.path} ({type(exc).__name__}: {exc}); "
                     "a resumed run will compile again")
            return False
        self.known = keys
        self.log(f"compile: {len(keys)} compiled entries written to {self.path} ({len(data) / 2**20:.1f} MB), for a "
                 "resumed run to reuse")
        return True
