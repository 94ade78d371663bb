"""The run folder's copy of torch.compile's compiled code (reidfast/train/compile_cache.py): a resumed run on another
machine reuses it instead of compiling again."""
import textwrap
from types import SimpleNamespace

import torch

from reidfast.train.__main__ import main
from reidfast.train.compile_cache import CompiledCodeCache, cache_path

from ..conftest import run_with_inductor_cache
from .conftest import tiny_args

# One process compiles and saves, or loads and compiles the same function, each with an Inductor cache folder of its
# own (another machine, as far as torch's caches can tell); it prints what Inductor's cache did.
_COMPILE = textwrap.dedent("""
    import sys, torch
    from torch._dynamo.utils import counters
    from reidfast.train.compile_cache import CompiledCodeCache
    cache = CompiledCodeCache(sys.argv[1], print)
    if sys.argv[2] == "load":
        cache.load()
    g = lambda x: (x.sin() * 2 + x).sum(dim=1)
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(torch.compile(g)(x), g(x))
    print("written" if cache.save() else "not written")
    print("hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"])
""")


def _compile_in_a_fresh_process(run_dir, action, inductor_dir):
    return run_with_inductor_cache(_COMPILE, inductor_dir, run_dir, action)


def test_a_fresh_process_compiles_from_the_run_folders_code_instead_of_compiling_again(tmp_path):
    first = _compile_in_a_fresh_process(tmp_path, "save", tmp_path / "inductor-a")
    assert "written" in first and "hits 0 misses 1" in first
    assert cache_path(tmp_path).stat().st_size > 0
    second = _compile_in_a_fresh_process(tmp_path, "load", tmp_path / "inductor-b")
    assert "loaded" in second and "hits 1 misses 0" in second
    # it compiled nothing the file lacked: the file is left as it was
    assert "not written" in second


def test_a_damaged_file_costs_a_compile_not_the_run(tmp_path):
    cache_path(tmp_path).write_bytes(b"not torch's artifacts")
    lines = []
    assert CompiledCodeCache(tmp_path, lines.append).load() == 0
    assert "could not load the compiled code" in lines[0] and "compiling instead" in lines[0]


def _fake_artifacts(monkeypatch, keys):
    """torch.compiler's save/load replaced: save returns `keys` (a list the test changes) as the artifacts; load
    records what it was given. torch.compile is the identity (the trainer's wiring is under test, not Inductor)."""
    loaded = []
    info = lambda ks: SimpleNamespace(artifacts={"inductor": list(ks)})  # noqa: E731
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts",
                        lambda: (",".join(keys).encode(), info(keys)) if keys else None)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts",
                        lambda data: loaded.append(data) or info(data.decode().split(",")))
    return loaded


def test_a_compiled_run_keeps_its_compiled_code_and_a_resumed_run_loads_it(tiny_root, tmp_path, capsys, monkeypatch):
    keys = ["graph-a"]
    loaded = _fake_artifacts(monkeypatch, keys)
    out = tmp_path / "r"
    assert main(tiny_args(tiny_root, out, "--iters", "2", "--ckpt-every", "1", "--compile")) == 0
    assert cache_path(out).read_bytes() == b"graph-a" and loaded == []
    err = capsys.readouterr().err
    assert err.count("1 compiled entries written to") == 1  # after the first iteration; not again at checkpoints

    keys.append("graph-b")  # the resumed run compiles a graph more (DG-Net's after its warm-up)
    assert main(tiny_args(tiny_root, out, "--iters", "4", "--ckpt-every", "0", "--compile", "--resume")) == 0
    assert loaded == [b"graph-a"]
    err = capsys.readouterr().err
    assert "loaded 1 compiled entries" in err and "2 compiled entries written" in err
    assert cache_path(out).read_bytes() == b"graph-a,graph-b"


def test_an_eager_run_writes_no_compiled_code(tiny_root, tmp_path, monkeypatch):
    _fake_artifacts(monkeypatch, ["graph-a"])
    out = tmp_path / "eager"
    assert main(tiny_args(tiny_root, out, "--iters", "2", "--ckpt-every", "0", "--no-compile")) == 0
    assert not cache_path(out).exists()
