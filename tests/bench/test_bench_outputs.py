"""What the benchmark scripts (bench/run.py, bench/train_step.py) write and refuse: each row says how it was timed,
the tables show every measured column, the JSON records how the run was made, and bad arguments stop a run before
any measurement. Timings themselves are never asserted."""
from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
CPU = torch.device("cpu")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_run():
    # run.py raises dynamo's recompile limits for its own process: keep this one's as they were
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)]
    saved = {n: getattr(config, n) for n in names}
    try:
        yield _load("run")
    finally:
        for n, v in saved.items():
            setattr(config, n, v)


@pytest.fixture(scope="module")
def train_step():
    return _load("train_step")


def _never(*args, **kwargs):
    raise AssertionError("a benchmark ran although its arguments were refused")


def _bad_outs(tmp_path: Path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    return {"a folder": (str(tmp_path), "is a folder"),
            "a .md name": (str(tmp_path / "results.md"), "ending in .json"),
            "a path under a file": (str(a_file / "results.json"), "is a file, not a folder")}


# (the script's fixture, the function that would measure, its arguments before --out)
SCRIPTS = {"bench/run.py": ("bench_run", "run_suite", ["--device", "cpu", "--quick", "--only", "adain"]),
           "bench/train_step.py": ("train_step", "run", ["--device", "cpu", "--quick", "--method", "baseline"])}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("case", ["a folder", "a .md name", "a path under a file"])
def test_a_bad_out_is_refused_before_measuring(request, monkeypatch, tmp_path, capsys, script, case):
    fixture, measuring, argv = SCRIPTS[script]
    module = request.getfixturevalue(fixture)
    out, expected = _bad_outs(tmp_path)[case]
    monkeypatch.setattr(module, measuring, _never)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        module.main([*argv, "--out", out])
    assert exc.value.code == 2
    message = capsys.readouterr().err
    assert "--out" in message and expected in message
    assert sorted(tmp_path.rglob("*")) == before and not list(tmp_path.parent.glob("*.tmp"))


def test_train_step_refuses_a_profile_path_under_a_file(train_step, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train_step, "run", _never)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit):
        train_step.main(["--device", "cpu", "--quick", "--profile", str(tmp_path / "a_file")])
    assert "--profile" in capsys.readouterr().err


def test_cuda_graphs_are_refused_on_the_cpu(train_step, monkeypatch, capsys):
    monkeypatch.setattr(train_step, "run", _never)
    with pytest.raises(SystemExit) as exc:
        train_step.main(["--device", "cpu", "--quick", "--method", "baseline", "--configs", "reference,cudagraphs"])
    assert exc.value.code == 2
    assert "--configs cudagraphs" in capsys.readouterr().err
    # and for a caller of run() itself (bench/run.py's train suite)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cudagraphs"):
        train_step.run(CPU, True, ["baseline"], configs=("cudagraphs",))


class _Calls:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def _rank_like_suite():
    """A suite of the rank suite's form: a slow eager reference and an extra slow baseline, no compiled reference,
    and a row without any baseline."""
    calls = {"fn": _Calls(), "ref": _Calls(), "loop": _Calls(), "alone": _Calls()}
    cases = [{"op": "rank_eval", "pass": "distmat", "shape": [4, 5], "dtype": "float32", "backend": "cpu",
              "fn": calls["fn"], "ref": calls["ref"], "ref_compiled": None, "baselines": {"numpy_loop": calls["loop"]},
              "slow_baselines": True, "bytes": 80, "note": "a note of the case"},
             {"op": "rank_eval", "pass": "distmat-search-count", "shape": [4, 5], "dtype": "float32",
              "backend": "cpu", "fn": calls["alone"], "ref": None, "ref_compiled": None, "baselines": {},
              "slow_baselines": True, "bytes": 80, "note": ""}]
    return types.SimpleNamespace(cases=lambda device, quick: iter(cases)), calls


def test_slow_baselines_are_recorded_as_one_cold_call(bench_run, monkeypatch):
    suite, calls = _rank_like_suite()
    monkeypatch.setattr(bench_run, "_suite_module", lambda name: suite)
    rows = bench_run.run_suite("rank", CPU, True, 0.0, repeats=4)
    row = rows[0]
    # what the row says is what ran: the ref and the loop once, cold; reidfast warmed up, then the median of 4
    assert calls["ref"].n == 1 and calls["loop"].n == 1
    assert calls["fn"].n == bench_run.WARMUP + 4
    assert row["repeats"] == {"ms": 4, "ref_ms": 1, "numpy_loop_ms": 1}
    assert row["warmup"] == {"ms": bench_run.WARMUP, "ref_ms": 0, "numpy_loop_ms": 0}
    assert bench_run.timing_text(row) == (f"ms: median of 4 after {bench_run.WARMUP} warm-up calls; "
                                          "ref ms, numpy loop ms: one call, no warm-up")
    assert bench_run.timing_text(rows[1]) == f"median of 4 after {bench_run.WARMUP} warm-up calls"
    assert "one call, no warm-up" in bench_run.format_row(row)


def test_op_tables_show_every_baseline_and_note_and_no_placeholders(bench_run, monkeypatch):
    suite, _ = _rank_like_suite()
    monkeypatch.setattr(bench_run, "_suite_module", lambda name: suite)
    rows = bench_run.run_suite("rank", CPU, True, 0.0, repeats=2)
    meta = {"device_name": "cpu", "device": "cpu", "date": "2026-01-01T00:00:00", "torch": torch.__version__,
            "quick": True, "warmup": bench_run.WARMUP, "repeats": 2}
    table = bench_run.markdown(meta, rows)
    header = next(line for line in table.splitlines() if line.startswith("| op |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for column in ("numpy loop ms", "x numpy loop", "timing", "note"):
        assert column in columns
    first = next(line for line in table.splitlines() if line.startswith("| rank_eval | distmat |"))
    cells = [c.strip() for c in first.strip("|").split("|")]
    assert cells[columns.index("numpy loop ms")] == str(rows[0]["numpy_loop_ms"])
    assert cells[columns.index("x numpy loop")] == str(rows[0]["speedup_vs_numpy_loop"])
    assert cells[columns.index("note")] == "a note of the case"
    assert cells[columns.index("compiled ref ms")] == "" and cells[columns.index("GB/s")] == ""
    # unmeasured values are blank in the table and "-" in the printed rows (no GB/s on a CPU, no compiled reference)
    assert "None" not in table and "nan" not in table
    for row in rows:
        assert "nan" not in bench_run.format_row(row)
    assert "## Training iterations" not in table


def test_op_rows_are_written_as_they_are_measured(bench_run, monkeypatch, tmp_path):
    # a time limit that stops the op benchmarks mid-suite keeps the rows measured before it
    out = tmp_path / "r.json"
    real_time_ms = bench_run.time_ms

    def time_ms(fn, device, **how):
        if out.exists():  # the first case's row is written: stop inside the second case
            raise SystemExit("time limit")
        return real_time_ms(fn, device, **how)

    monkeypatch.setattr(bench_run, "time_ms", time_ms)
    with pytest.raises(SystemExit, match="time limit"):
        bench_run.main(["--device", "cpu", "--quick", "--only", "adain", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert [r["op"] for r in payload["rows"]] == ["adain"] and payload["meta"]["quick"] is True
    assert out.with_suffix(".md").read_text().count("| adain |") == 1


def test_run_meta_records_quick_and_repeats(bench_run, monkeypatch, tmp_path):
    monkeypatch.setattr(bench_run, "run_suite", lambda *args, **kwargs: [])
    out = tmp_path / "r.json"
    bench_run.main(["--device", "cpu", "--quick", "--only", "adain", "--out", str(out)])
    meta = json.loads(out.read_text())["meta"]
    assert meta["quick"] is True and meta["repeats"] == 5 and meta["warmup"] == bench_run.WARMUP
    for key in ("date", "device", "device_name", "host", "threads", "torch"):
        assert key in meta


def test_a_training_only_table_has_no_op_table(bench_run, train_step):
    row = {"method": "fdgan", "config": "reference", "device": "cpu", "batch": 4, "batch_unit": "pairs",
           "images_per_iter": 8, "size": "64x32", "amp": "off", "compile": False, "ms_per_iter": 1.0,
           "images_per_s": 8000.0, "first_step_s": 0.1, "peak_mem_mb": 1.0}
    meta = {"device_name": "cpu", "device": "cpu", "date": "2026-01-01T00:00:00", "torch": torch.__version__}
    table = bench_run.markdown(meta, [row])
    assert "| op |" not in table and "## Training iterations" in table
    assert "| fdgan | reference | 4 pairs | 8 |" in table
    # the training rows' own timing, not the op suites'
    assert f"median of {train_step.timing_counts(False)[1]} iterations" in table


def test_adain_rows_say_what_they_time():
    case = next(_load("ops_adain").cases(CPU, True))
    assert case["activation"] == "relu" and case["residual"] is True


def test_every_training_case_has_a_batch_unit(train_step):
    for case, setting in train_step.CASES.items():
        assert setting.get("method", case) in train_step.BATCH_UNITS


def test_training_results_on_the_cpu(train_step, tmp_path):
    out = tmp_path / "t.json"
    train_step.main(["--device", "cpu", "--quick", "--method", "baseline", "--configs", "reference,reidfast",
                     "--out", str(out)])
    payload = json.loads(out.read_text())
    meta = payload["meta"]
    assert meta["quick"] is True and meta["device"] == "cpu" and meta["repeats"] == 5
    for key in ("date", "device_name", "host", "threads", "torch", "warmup"):
        assert key in meta
    assert payload["torch"] == torch.__version__  # the key results files had before meta
    rows = {r["config"]: r for r in payload["rows"]}
    # on the CPU the reidfast configuration is not compiled, and its row says so
    assert rows["reidfast"]["compile"] is False and "not compiled" in rows["reidfast"]["note"]
    assert "note" not in rows["reference"]
    assert rows["reference"]["batch_unit"] == "images"
    assert rows["reference"]["images_per_iter"] == rows["reference"]["batch"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("Training iterations on ") and meta["date"] in table[0]
    assert "| batch | images/iter |" in table[2]
    assert any(line.startswith(f"| baseline | reidfast | {rows['reidfast']['batch']} images |") for line in table)


def test_each_row_is_written_before_its_profile(train_step, monkeypatch, tmp_path):
    # a time limit that stops the process while it profiles a configuration must not cost the row just measured
    # (on a GPU the compiled configuration's, after minutes of compiling)
    out = tmp_path / "t.json"
    profiled = []

    def profile(step, device, path, steps=3):
        config = Path(path).stem.split("-", 2)[2]
        written = [r["config"] for r in json.loads(out.read_text())["rows"]]
        profiled.append((config, written))
        if config == "reidfast":
            raise SystemExit("time limit")

    monkeypatch.setattr(train_step, "_write_profile", profile)
    with pytest.raises(SystemExit, match="time limit"):
        train_step.main(["--device", "cpu", "--quick", "--method", "baseline", "--configs", "reference,reidfast",
                         "--out", str(out), "--profile", str(tmp_path / "profiles")])
    assert profiled == [("reference", ["reference"]), ("reidfast", ["reference", "reidfast"])]
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["reidfast"]["speedup_vs_reference"] > 0


def test_no_compile_is_measured_before_the_compiled_configurations(train_step, monkeypatch):
    # a compiled first step can run past a GPU session's time limit: the rows measured before it are kept
    order = []

    def measure(case, config, device, quick, iters=None, profile_dir="", on_measured=None):
        order.append(config)
        row = {"method": case, "config": config, "batch": 1, "images_per_iter": 1, "size": "1x1", "amp": "off",
               "compile": config != "no-compile", "ms_per_iter": 1.0, "images_per_s": 1.0, "first_step_s": 0.0,
               "peak_mem_mb": 0.0}
        if on_measured is not None:
            on_measured(row)
        return row

    monkeypatch.setattr(train_step, "measure", measure)
    train_step.run(CPU, True, ["baseline"], configs=("reidfast", "no-compile", "reference"))
    assert order == ["reference", "reference", "no-compile", "reidfast", "reference"]
