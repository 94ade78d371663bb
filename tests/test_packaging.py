"""The source distribution builds the extension on its own.

`pip install reidfast-*.tar.gz` compiles csrc/ on the user's machine, so the sdist must carry every C++/CUDA source
and header, whichever of them the machine that made it compiled (without MANIFEST.in, setuptools takes only the
.cpp files of that machine's build: no headers, and no .cu files from a CPU-only build).
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(member names, PKG-INFO text, what the build printed on stderr)."""
    if not (ROOT / "setup.py").is_file():
        pytest.skip("needs a source checkout")
    out = tmp_path_factory.mktemp("sdist")
    env = {**os.environ, "REIDFAST_CUDA": "0"}  # what a CPU-only machine making the sdist would build
    built = subprocess.run([sys.executable, "-W", "always", "setup.py", "-q", "sdist", "-d", str(out)], cwd=ROOT,
                           env=env, check=True, capture_output=True, text=True)
    (archive,) = out.glob("reidfast-*.tar.gz")
    with tarfile.open(archive) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(next(n for n in tar.getnames() if n.endswith("/PKG-INFO"))).read().decode()
    return members, pkg_info, built.stderr


@pytest.fixture(scope="module")
def sdist_members(sdist):
    return sdist[0]


def test_the_metadata_names_the_licence_without_a_deprecated_form(sdist):
    _, pkg_info, stderr = sdist
    assert "License: BSD-3-Clause" in pkg_info.splitlines()
    assert "License-File: LICENSE" in pkg_info.splitlines()
    # setuptools >= 77 deprecates pyproject's `license = {text = ...}` (an error from 2027-02-18 on).
    assert not [line for line in stderr.splitlines() if "license" in line.lower() and "deprecat" in line.lower()]


def test_the_sdist_holds_every_source_and_header(sdist_members):
    # (not csrc/generated: the build-info header setup.py writes at each build, never shipped)
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
                     if p.suffix in {".h", ".cuh", ".cpp", ".cu"} and "generated" not in p.relative_to(ROOT).parts)
    assert any(s.endswith(".cu") for s in sources) and any(s.endswith(".h") for s in sources)
    missing = [s for s in sources if s not in sdist_members]
    assert not missing, f"not in the sdist: {', '.join(missing)}"


def test_the_sdist_holds_what_the_quick_start_and_tests_read(sdist_members):
    for name in ("setup.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "tests/conftest.py",
                 "scripts/quickstart.py", "bench/run.py"):
        assert name in sdist_members, name
    assert not [m for m in sdist_members if m.endswith((".so", ".o", ".pyc")) or m.startswith("csrc/generated/")]


def test_the_extension_records_the_torch_and_the_sources_it_was_built_from():
    # scripts/gpu_check.sh reuses a build carried to a GPU machine only when both match; a build from other sources
    # (csrc/ edited since) or against another torch must not pass for this one.
    from reidfast.ops import _extension
    if not _extension.has_cpu_kernels() or not (ROOT / "setup.py").is_file():
        pytest.skip("needs a source checkout with reidfast._C built")
    import torch
    printed = subprocess.run([sys.executable, "setup.py", "--print-sources-hash"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    assert len(printed) == 16 and int(printed, 16) >= 0
    assert _extension.sources_hash() == printed, "reidfast._C is older than csrc/: rebuild it"
    assert _extension.built_against() == torch.__version__
