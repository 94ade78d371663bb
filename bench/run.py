"""Throughput of reidfast's ops against the pure-PyTorch reference, measured in one run.

    python bench/run.py [--device cpu|cuda] [--only adain,...] [--quick] [--out FILE.json]

Each row times reidfast, the eager reference and the torch.compile'd reference on the same inputs (3 warm-up
calls, then the median of 20 calls, 5 with --quick) and reports the ratios. The rank suite's eager reference and
per-query numpy loop take seconds a call: each is timed by one call without warm-up (each row's "timing" says how
its columns were timed; in the JSON, "warmup" and "repeats" per column). On a GPU it also reports achieved GB/s and
the percentage of the device's copy bandwidth measured in the same run, twice: over the call's time as a caller sees
it, and over the GPU time of its kernels alone (the profiler's records), which leaves out host overhead.
Nothing here is asserted; tests check correctness.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)  # the suites beside this file
sys.path.insert(1, os.path.dirname(BENCH_DIR))  # a source checkout works without installing

from timing import (call_timeline, copy_bandwidth_gbs, device_time_breakdown, out_path_error, run_meta,  # noqa: E402
                    time_ms, write_results)

# Every case compiles the reference anew (shapes, dtypes, grad mode): without room for those recompiles dynamo
# silently falls back to eager and the "compiled" column would time the eager reference.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 256)

SUITES = {
    "adain": "ops_adain",
    "rank": "ops_rank",
    "train": "train_step",  # whole training iterations; the module's own run() and row format
    "homography": "ops_homography",
}


def _suite_module(name):
    return __import__(SUITES[name])


def _ratio(base_ms, ms):
    return None if base_ms is None else round(base_ms / ms, 3)


WARMUP = 3  # calls before the timed ones; the rank suite's slow baselines get none (run_suite)


def run_suite(name, device, quick, peak_gbs, repeats, on_row=None):
    """Times each case's fn, ref and ref_compiled (a case may set ref_compiled None: no such baseline), plus any
    extra `baselines` {name: fn}: WARMUP calls, then the median of `repeats`. A case with `slow_baselines` has its
    ref and baselines timed by one call without warm-up (they take seconds each). Each row's `warmup` and `repeats`
    ({column: count}) say how each of its columns was timed. A suite module with its own run() (train_step)
    measures and prints its own rows. on_row(row) is called with each row as soon as it is measured."""
    module = _suite_module(name)
    if hasattr(module, "run"):
        rows = module.run(device, quick)
        for row in rows if on_row is not None else ():
            on_row(row)
        return rows
    rows = []
    for case in _suite_module(name).cases(device, quick):
        usual = dict(warmup=WARMUP, repeats=repeats)
        slow = dict(warmup=0, repeats=1) if case.get("slow_baselines") else usual
        warmups, counts = {}, {}

        def timed(column, fn, how):
            if fn is None:
                return None
            warmups[column], counts[column] = how["warmup"], how["repeats"]
            return round(time_ms(fn, device, **how), 4)

        ms = timed("ms", case["fn"], usual)
        ref_ms = timed("ref_ms", case["ref"], slow)
        ref_compiled_ms = timed("ref_compiled_ms", case["ref_compiled"], usual)
        row = {k: v for k, v in case.items()
               if k not in ("fn", "ref", "ref_compiled", "bytes", "baselines", "slow_baselines")}
        row.update(
            device=str(device), ms=ms, ref_ms=ref_ms, ref_compiled_ms=ref_compiled_ms,
            speedup=_ratio(ref_ms, ms), speedup_vs_compiled=_ratio(ref_compiled_ms, ms),
        )
        for base, fn in case.get("baselines", {}).items():
            row[f"{base}_ms"] = timed(f"{base}_ms", fn, slow)
            row[f"speedup_vs_{base}"] = _ratio(row[f"{base}_ms"], ms)
        row.update(warmup=warmups, repeats=counts)
        if device.type == "cuda":
            # The kernels' own time (apart from host overhead) and the kernels that take it
            kernel_ms, top_kernels = device_time_breakdown(case["fn"], device)
            if kernel_ms > 0:  # 0: the profiler recorded no kernels (a profiler without CUDA support)
                row["kernel_ms"] = round(kernel_ms, 4)
                row["top_kernels"] = top_kernels
                # one call's timeline: how much of the wall time the device spent waiting for the host
                try:
                    row["timeline"] = call_timeline(case["fn"], device)
                except Exception as exc:  # a diagnostic: never the reason a benchmark run stops
                    row["timeline"] = {"error": repr(exc)}
            if case.get("bytes"):
                row["gbs"] = round(case["bytes"] / (ms * 1e-3) / 1e9, 1)
                row["pct_copy_bw"] = round(100 * row["gbs"] / peak_gbs, 1)
                if kernel_ms > 0:
                    row["kernel_gbs"] = round(case["bytes"] / (kernel_ms * 1e-3) / 1e9, 1)
                    row["kernel_pct_copy_bw"] = round(100 * row["kernel_gbs"] / peak_gbs, 1)
        rows.append(row)
        print(format_row(row), flush=True)
        if on_row is not None:
            on_row(row)
    return rows


def timing_text(row) -> str:
    """How the row's columns were timed, in words: "median of 5 after 3 warm-up calls" when all alike, else per
    group of columns ("ms, ref compiled ms: median of 5 after 3 warm-up calls; ref ms, numpy loop ms: one call,
    no warm-up")."""
    groups = {}
    for column, count in row.get("repeats", {}).items():
        groups.setdefault((row["warmup"][column], count), []).append(column.replace("_", " "))

    def words(warmup, count):
        if count == 1:
            return "one call, " + ("no warm-up" if warmup == 0 else f"after {warmup} warm-up calls")
        return f"median of {count} after {warmup} warm-up calls"

    if len(groups) == 1:
        return words(*next(iter(groups)))
    return "; ".join(f"{', '.join(columns)}: {words(*how)}" for how, columns in groups.items())


def _extra_baselines(rows):
    """The extra baselines' names (numpy_loop) among rows, in order of appearance."""
    names = []
    for r in rows:
        for k in r:
            base = k[len("speedup_vs_"):]
            if k.startswith("speedup_vs_") and base != "compiled" and base not in names:
                names.append(base)
    return names


HEADER = f"{'op':<10} {'pass':<22} {'shape':<20} {'dtype':<9} {'backend':<9} {'ms':>9} {'ref ms':>9} {'cmp ms':>9} " \
         f"{'x ref':>7} {'x cmp':>7} {'GB/s':>7} {'%bw':>6}"


def _num(v, width, digits):
    """v right-aligned in width with `digits` decimals; "-" where there is no value (not measured, not on a CPU)."""
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def format_row(r):
    extra = "  ".join(f"{k}={r[k]}" for k in r if k.startswith("speedup_vs_") and k != "speedup_vs_compiled")
    timing = timing_text(r)
    # the usual timing is the header's; a row timed otherwise says how
    if ";" in timing:
        extra += f"  [{timing}]"
    return (f"{r['op']:<10} {r['pass']:<22} {'x'.join(map(str, r['shape'])):<20} {r['dtype']:<9} "
            f"{r['backend']:<9} {_num(r['ms'], 9, 3)} {_num(r['ref_ms'], 9, 3)} {_num(r['ref_compiled_ms'], 9, 3)} "
            f"{_num(r['speedup'], 7, 2)} {_num(r['speedup_vs_compiled'], 7, 2)} {_num(r.get('gbs'), 7, 1)} "
            f"{_num(r.get('pct_copy_bw'), 6, 1)}" + (f"  {extra.strip()}" if extra.strip() else ""))


def _cell(v):
    return "" if v is None else str(v)


def markdown(meta, rows):
    op_rows = [r for r in rows if "op" in r]
    copy_bw = f"copy bandwidth {meta['copy_gbs']} GB/s" if "copy_gbs" in meta else "GB/s on a GPU only"
    timing = f"{'quick, ' if meta.get('quick') else ''}median of {meta['repeats']} after {meta['warmup']} warm-up " \
             "calls unless a row's timing says otherwise" if "repeats" in meta else "timing per row"
    lines = [f"# reidfast benchmarks: {meta['device_name']}", "",
             f"{meta['date']}, torch {meta['torch']}" + (f", {copy_bw}; {timing}" if op_rows else ""), ""]
    if op_rows:
        bases = _extra_baselines(op_rows)
        columns = ["op", "pass", "shape", "dtype", "backend", "ms", "ref ms", "compiled ref ms"] + \
            [f"{b.replace('_', ' ')} ms" for b in bases] + ["x ref", "x compiled"] + \
            [f"x {b.replace('_', ' ')}" for b in bases] + \
            ["GB/s", "% copy bw", "kernel ms", "kernel GB/s", "kernel % copy bw", "timing", "note"]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in op_rows:
            cells = [r["op"], r["pass"], "x".join(map(str, r["shape"])), r["dtype"], r["backend"], r["ms"],
                     r["ref_ms"], r["ref_compiled_ms"]] + [r.get(f"{b}_ms") for b in bases] + \
                [r["speedup"], r["speedup_vs_compiled"]] + [r.get(f"speedup_vs_{b}") for b in bases] + \
                [r.get(k) for k in ("gbs", "pct_copy_bw", "kernel_ms", "kernel_gbs", "kernel_pct_copy_bw")] + \
                [timing_text(r), r.get("note") or None]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    with_kernels = [r for r in rows if r.get("top_kernels")]
    if with_kernels:
        lines += ["", "## Where the GPU time goes", "", "The kernels with the most GPU time per call, in ms.", ""]
        for r in with_kernels:
            kernels = "; ".join(f"{name[:80]} {ms}" for name, ms in r["top_kernels"])
            lines.append(f"- {r['op']} {r['pass']} {'x'.join(map(str, r['shape']))} {r['dtype']} {r['backend']}: "
                         f"{kernels}")
    train_rows = [r for r in rows if "op" not in r]
    if train_rows:
        if op_rows:
            lines.append("")
        train = _suite_module("train")
        # the training suite's own counts, not the op suites'
        warmup, repeats = train.timing_counts(bool(meta.get("quick")))
        train_meta = {**meta, "quick": bool(meta.get("quick")), "warmup": warmup, "repeats": repeats}
        lines += ["## Training iterations", "", train.markdown(train_rows, train_meta).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="", help=f"comma-separated suites out of: {', '.join(SUITES)} (default all)")
    p.add_argument("--quick", action="store_true",
                   help="the suites' headline shapes only (one or two each), fewer repeats")
    p.add_argument("--out", default="", metavar="FILE.json",
                   help="write the rows as JSON here (and a .md table beside it, FILE.md)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        p.error(f"--only: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.out and out_path_error(args.out):
        p.error(f"--out: {out_path_error(args.out)}")
    device = torch.device(args.device)
    repeats = 5 if args.quick else 20
    meta = run_meta(device, args.quick, warmup=WARMUP, repeats=repeats)  # the op suites' counts
    if "train" in names:  # the training suite's own counts (bench/train_step.py)
        meta["train_warmup"], meta["train_repeats"] = _suite_module("train").timing_counts(args.quick)
    peak = 0.0
    if device.type == "cuda":
        peak = copy_bandwidth_gbs(device)
        meta["copy_gbs"] = round(peak, 1)
        print(f"device copy bandwidth: {peak:.0f} GB/s")
    if any(n != "train" for n in names):
        print(HEADER)
    rows = []

    def keep(row: dict) -> None:
        # the files are rewritten after every row: a run stopped by a time limit keeps the rows it measured
        rows.append(row)
        if args.out:
            write_results(args.out, {"meta": meta, "rows": rows}, markdown(meta, rows))

    for name in names:
        run_suite(name, device, args.quick, peak, repeats=repeats, on_row=keep)
    if args.out:
        write_results(args.out, {"meta": meta, "rows": rows}, markdown(meta, rows))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
