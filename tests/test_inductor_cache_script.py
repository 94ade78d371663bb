"""scripts/inductor_cache.py: torch.compile's graphs carried from one bare GPU machine to the next as file parts, so
that a compile cut short by a time limit continues where it stopped instead of starting over."""
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from .conftest import run_with_inductor_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "inductor_cache.py"

# A fresh process compiles one function with the Inductor cache folder it is given, and prints what Inductor's and
# AOTAutograd's caches did. (Forward only: a backward graph is cached the same way and doubles the CPU's C++ builds.)
_COMPILE = textwrap.dedent("""
    import torch
    from torch._dynamo.utils import counters
    f = lambda x: (x.sin() * 2 + x).sum(dim=1)
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(torch.compile(f)(x), f(x))
    print("fx hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"],
          "aot hits", counters["aot_autograd"]["autograd_cache_hit"])
""")


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_graphs_packed_on_one_machine_are_loaded_not_compiled_on_the_next(tmp_path):
    first = run_with_inductor_cache(_COMPILE, tmp_path / "machine-a")
    assert "fx hits 0 misses 1 aot hits 0" in first
    # parts far smaller than the archive: the join must restore it byte for byte
    packed = _script("pack", tmp_path / "machine-a", tmp_path / "parts", "--part-mib", "0.002")
    assert packed.returncode == 0, packed.stderr
    parts = sorted((tmp_path / "parts").iterdir())
    assert len(parts) > 1 and all(p.stat().st_size <= 0.002 * (1 << 20) for p in parts), parts
    assert f"in {len(parts)} part(s)" in packed.stdout
    # only what a later process needs: no kernel sources or C++ builds
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        assert {Path(n).parts[0] for n in tar.getnames()} == {"fxgraph", "aotautograd"}

    unpacked = _script("unpack", tmp_path / "parts", tmp_path / "machine-b")
    assert unpacked.returncode == 0, unpacked.stderr
    assert "restored" in unpacked.stdout
    second = run_with_inductor_cache(_COMPILE, tmp_path / "machine-b")
    assert "fx hits 1 misses 0 aot hits 1" in second


def _cache_with_entries(root: Path, sizes: dict) -> Path:
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))  # random bytes: gzip cannot shrink them
    return root


def test_a_cache_over_the_limit_writes_nothing_and_says_so(tmp_path):
    cache = _cache_with_entries(tmp_path / "cache", {"fxgraph/ab/entry": 300_000, "aotautograd/cd/entry": 300_000})
    out = tmp_path / "parts"
    out.mkdir()
    (out / "inductor-cache.tgz.000").write_bytes(b"an earlier run's part")
    done = _script("pack", cache, out, "--max-mib", "0.5")
    assert done.returncode == 0, done.stderr  # a benchmark's results must not fail over its cache
    assert "over the 0.5 MiB allowed: not packed" in done.stdout
    assert (out / "inductor-cache.tgz.000").read_bytes() == b"an earlier run's part"

    # within the limit, the earlier run's parts are replaced, not mixed with the new ones
    done = _script("pack", cache, out, "--part-mib", "0.25")
    assert done.returncode == 0, done.stderr
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [f"inductor-cache.tgz.{i:03d}" for i in range(len(parts))] and len(parts) == 3


def test_unpacking_without_parts_starts_empty_and_a_damaged_archive_is_named(tmp_path):
    done = _script("unpack", tmp_path / "none", tmp_path / "cache")
    assert done.returncode == 0 and "starting with an empty cache" in done.stdout

    parts = tmp_path / "parts"
    _cache_with_entries(tmp_path / "cache-a", {"fxgraph/ab/entry": 1000})
    assert _script("pack", tmp_path / "cache-a", parts).returncode == 0
    (part,) = parts.iterdir()
    part.write_bytes(part.read_bytes()[:-200])  # cut short in transfer
    done = _script("unpack", parts, tmp_path / "cache-b")
    assert done.returncode == 1
    assert f"the parts in {parts} do not form a readable archive" in done.stderr


@pytest.mark.parametrize("name", ["../outside", "/tmp/absolute", "somewhere/else", "fxgraph/../../outside"])
def test_unpack_refuses_entries_outside_the_cache_folders(tmp_path, name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"data"))
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "inductor-cache.tgz.000").write_bytes(buffer.getvalue())
    done = _script("unpack", parts, tmp_path / "cache")
    assert done.returncode == 1 and f"unexpected entry {name!r}" in done.stderr
    assert not (tmp_path / "outside").exists() and not list((tmp_path / "cache").rglob("*"))


def test_pack_refuses_sizes_that_are_not_positive(tmp_path):
    done = _script("pack", tmp_path, tmp_path / "parts", "--part-mib", "0")
    assert done.returncode == 2 and "--part-mib must be positive, got 0.0" in done.stderr
