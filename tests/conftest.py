import contextlib
import os
import subprocess
import sys

import pytest
import torch

# The Triton interpreter must be on before any @triton.jit function is defined, i.e. before reidfast's Triton
# modules are imported. Only without a GPU: with one, Triton kernels run compiled on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_fresh_process(code: str, *args, env: dict | None = None, timeout: float = 600):
    """Runs `code` (python -c, with `args`) in a fresh Python process that imports this checkout, with this process's
    environment changed by `env` (a None value removes the variable); returns the CompletedProcess (text output).
    For what a process decides once (a setting read at first use, a compile cache) or may crash on."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_with_inductor_cache(code: str, inductor_dir, *args) -> str:
    """Runs `code` (python -c, with `args`) in a fresh process whose Inductor cache is the folder `inductor_dir`, with
    torch's caches on (another machine, as far as those caches can tell); returns what it printed."""
    done = run_in_fresh_process(code, *args, env={"TORCHINDUCTOR_CACHE_DIR": str(inductor_dir),
                                                  "TORCHINDUCTOR_FORCE_DISABLE_CACHES": None})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_gpu_wait():
    """A context manager under which any operation that makes the host wait for the GPU raises (CUDA's sync debug
    mode, "error"); the GPU is idle when it starts, so nothing queued before counts."""
    @contextlib.contextmanager
    def guard():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return guard
