"""Throughput of reidfast's ops against the pure-PyTorch reference, measured in one run.

    python bench/run.py [--device cpu|cuda] [--only adain,...] [--quick] [--out FILE.json]

Each row times reidfast, the eager reference and the torch.compile'd reference on the same inputs (after warm-up,
median of repeats) and reports the ratios. On a GPU it also reports achieved GB/s and the percentage of the
device's copy bandwidth measured in the same run. Nothing here is asserted; tests check correctness.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import copy_bandwidth_gbs, time_ms  # noqa: E402

SUITES = {
    "adain": "ops_adain",
    "homography": "ops_homography",
}


def _suite_module(name):
    return __import__(SUITES[name])


def run_suite(name, device, quick, peak_gbs, repeats):
    rows = []
    for case in _suite_module(name).cases(device, quick):
        ms = time_ms(case["fn"], device, repeats=repeats)
        ref_ms = time_ms(case["ref"], device, repeats=repeats)
        ref_compiled_ms = time_ms(case["ref_compiled"], device, repeats=repeats)
        row = {k: v for k, v in case.items() if k not in ("fn", "ref", "ref_compiled", "bytes")}
        row.update(
            device=str(device), ms=round(ms, 4), ref_ms=round(ref_ms, 4), ref_compiled_ms=round(ref_compiled_ms, 4),
            speedup=round(ref_ms / ms, 3), speedup_vs_compiled=round(ref_compiled_ms / ms, 3),
        )
        if case.get("bytes") and device.type == "cuda":
            row["gbs"] = round(case["bytes"] / (ms * 1e-3) / 1e9, 1)
            row["pct_copy_bw"] = round(100 * row["gbs"] / peak_gbs, 1)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = f"{'op':<10} {'pass':<9} {'shape':<20} {'dtype':<9} {'backend':<9} {'ms':>9} {'ref ms':>9} {'cmp ms':>9} " \
         f"{'x ref':>7} {'x cmp':>7} {'GB/s':>7} {'%bw':>6}"


def format_row(r):
    return (f"{r['op']:<10} {r['pass']:<9} {'x'.join(map(str, r['shape'])):<20} {r['dtype']:<9} {r['backend']:<9} "
            f"{r['ms']:>9.3f} {r['ref_ms']:>9.3f} {r['ref_compiled_ms']:>9.3f} {r['speedup']:>7.2f} "
            f"{r['speedup_vs_compiled']:>7.2f} {r.get('gbs', float('nan')):>7.1f} {r.get('pct_copy_bw', float('nan')):>6.1f}")


def markdown(meta, rows):
    lines = [f"# reidfast benchmarks: {meta['device_name']}", "",
             f"{meta['date']}, torch {meta['torch']}, copy bandwidth {meta.get('copy_gbs', 'n/a')} GB/s", "",
             "| op | pass | shape | dtype | backend | ms | ref ms | compiled ref ms | x ref | x compiled | GB/s | % copy bw |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['pass']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['backend']} | "
                     f"{r['ms']} | {r['ref_ms']} | {r['ref_compiled_ms']} | {r['speedup']} | "
                     f"{r['speedup_vs_compiled']} | {r.get('gbs', '')} | {r.get('pct_copy_bw', '')} |")
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
    print(HEADER)
    rows = []
    for name in names:
        rows += run_suite(name, device, args.quick, peak, repeats=5 if args.quick else 20)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(markdown(meta, rows))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
