import contextlib
import os

import pytest
import torch

# The Triton interpreter must be on before any @triton.jit function is defined, i.e. before reidfast's Triton
# modules are imported. Only without a GPU: with one, Triton kernels run compiled on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


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
