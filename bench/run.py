"""Throughput of reidfast's ops against the pure-PyTorch reference, measured in one run.

    python bench/run.py [--device cpu|cuda] [--only adain,...] [--quick] [--out FILE.json]

Each row times reidfast, the eager reference and the torch.compile'd reference on the same inputs (after warm-up,
median of repeats) and reports the ratios. On a GPU it also reports achieved GB/s and the percentage of the
device's copy bandwidth measured in the same run, twice: over the call's time as a caller sees it, and over the
GPU time of its kernels alone (the profiler's records), which leaves out host overhead. Nothing here is
asserted; tests check correctness.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)  # the suites beside this file
sys.path.insert(1, os.path.dirname(BENCH_DIR))  # a source checkout works without installing

from timing import call_timeline, copy_bandwidth_gbs, device_time_breakdown, time_ms, write_results  # noqa: E402

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


def run_suite(name, device, quick, peak_gbs, repeats):
    """Times each case's fn, ref and ref_compiled (a case may set ref_compiled None: no such baseline), plus any
    extra `baselines` {name: fn}; `slow_baselines` times the baselines and ref once without warm-up (seconds each).
    A suite module with its own run() (train_step) measures and prints its own rows."""
    module = _suite_module(name)
    if hasattr(module, "run"):
        return module.run(device, quick)
    rows = []
    for case in _suite_module(name).cases(device, quick):
        slow = dict(warmup=0, repeats=1) if case.get("slow_baselines") else dict(repeats=repeats)

        def timed(fn, **kw):
            return None if fn is None else round(time_ms(fn, device, **kw), 4)

        ms = timed(case["fn"], repeats=repeats)
        ref_ms = timed(case["ref"], **slow)
        ref_compiled_ms = timed(case["ref_compiled"], repeats=repeats)
        row = {k: v for k, v in case.items()
               if k not in ("fn", "ref", "ref_compiled", "bytes", "baselines", "slow_baselines")}
        row.update(
            device=str(device), ms=ms, ref_ms=ref_ms, ref_compiled_ms=ref_compiled_ms,
            speedup=_ratio(ref_ms, ms), speedup_vs_compiled=_ratio(ref_compiled_ms, ms),
        )
        for base, fn in case.get("baselines", {}).items():
            row[f"{base}_ms"] = timed(fn, **slow)
            row[f"speedup_vs_{base}"] = _ratio(row[f"{base}_ms"], ms)
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
    return rows


HEADER = f"{'op':<10} {'pass':<9} {'shape':<20} {'dtype':<9} {'backend':<9} {'ms':>9} {'ref ms':>9} {'cmp ms':>9} " \
         f"{'x ref':>7} {'x cmp':>7} {'GB/s':>7} {'%bw':>6}"


def _num(v):
    return float("nan") if v is None else v


def format_row(r):
    extra = "  ".join(f"{k}={r[k]}" for k in r if k.startswith("speedup_vs_") and k != "speedup_vs_compiled")
    return (f"{r['op']:<10} {r['pass']:<9} {'x'.join(map(str, r['shape'])):<20} {r['dtype']:<9} {r['backend']:<9} "
            f"{_num(r['ms']):>9.3f} {_num(r['ref_ms']):>9.3f} {_num(r['ref_compiled_ms']):>9.3f} "
            f"{_num(r['speedup']):>7.2f} {_num(r['speedup_vs_compiled']):>7.2f} {_num(r.get('gbs')):>7.1f} "
            f"{_num(r.get('pct_copy_bw')):>6.1f}" + (f"  {extra}" if extra else ""))


def markdown(meta, rows):
    lines = [f"# reidfast benchmarks: {meta['device_name']}", "",
             f"{meta['date']}, torch {meta['torch']}, copy bandwidth {meta.get('copy_gbs', 'n/a')} GB/s", "",
             "| op | pass | shape | dtype | backend | ms | ref ms | compiled ref ms | x ref | x compiled | GB/s | % copy bw "
             "| kernel ms | kernel GB/s | kernel % copy bw |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "op" not in r:
            continue
        lines.append(f"| {r['op']} | {r['pass']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['backend']} | "
                     f"{r['ms']} | {r['ref_ms']} | {r['ref_compiled_ms']} | {r['speedup']} | "
                     f"{r['speedup_vs_compiled']} | {r.get('gbs', '')} | {r.get('pct_copy_bw', '')} | "
                     f"{r.get('kernel_ms', '')} | {r.get('kernel_gbs', '')} | {r.get('kernel_pct_copy_bw', '')} |")
    with_kernels = [r for r in rows if r.get("top_kernels")]
    if with_kernels:
        lines += ["", "## Where the GPU time goes", "", "The kernels with the most GPU time per call, in ms.", ""]
        for r in with_kernels:
            kernels = "; ".join(f"{name[:80]} {ms}" for name, ms in r["top_kernels"])
            lines.append(f"- {r['op']} {r['pass']} {'x'.join(map(str, r['shape']))} {r['dtype']} {r['backend']}: "
                         f"{kernels}")
    train_rows = [r for r in rows if "op" not in r]
    if train_rows:
        lines += ["", "## Training iterations", "", _suite_module("train").markdown(train_rows).rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="", help=f"comma-separated suites out of: {', '.join(SUITES)} (default all)")
    p.add_argument("--quick", action="store_true", help="one shape per suite, fewer repeats")
    p.add_argument("--out", default="", help="write the rows as JSON here (and a .md table beside it)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        p.error(f"--only: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": args.device, "host": platform.node(), "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}
    peak = 0.0
    if device.type == "cuda":
        peak = copy_bandwidth_gbs(device)
        meta["copy_gbs"] = round(peak, 1)
        print(f"device copy bandwidth: {peak:.0f} GB/s")
    if any(n != "train" for n in names):
        print(HEADER)
    rows = []
    for name in names:
        rows += run_suite(name, device, args.quick, peak, repeats=5 if args.quick else 20)
    if args.out:
        write_results(args.out, {"meta": meta, "rows": rows}, markdown(meta, rows))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
