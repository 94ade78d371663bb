from pathlib import Path

import pytest

from reidfast.data.synthetic import generate

TINY = dict(ids=8, cameras=3, domain="a", seed=3, height=64, width=32)


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    """The generation parameters of `synthetic_root`."""
    return dict(TINY)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (8 ids x 3 cameras, 64x32), generated once per test session."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(root, **TINY)
    return root


def _touch_files(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


@pytest.fixture
def touch_files():
    """touch_files(folder, names): empty files with real names (the readers look at names, never decode)."""
    return _touch_files
