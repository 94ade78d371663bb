"""Training throughput: images/s of full training iterations, reidfast's configuration against the pure-PyTorch
reference configuration of the same model, in one run, with peak memory.

    python bench/train_step.py [--method baseline,dgnet,dgnet-b32,fdgan,fdgan-b128,sagan,sagan-b32]
                               [--device cpu|cuda] [--quick] [--configs reference,no-compile,reidfast,cudagraphs]
                               [--out FILE.json] [--profile DIR]

reidfast: fused ops (backend auto), AMP (bf16 where supported), torch.compile (--compile-mode auto: CUDA graphs for
SA-GAN's adaptation stage, the default mode for the rest), channels_last and fused optimizers on GPU; no-compile:
the same without torch.compile; cudagraphs (not in the default set, GPU only): reidfast with --compile-mode
reduce-overhead. On the CPU torch.compile, AMP, channels_last and the fused optimizers are off by default, so the
reidfast row there is not compiled (no-compile's settings: its row's compile column and note say so).
reference: --backend reference --amp off --no-compile --no-fused-optimizers (eager fp32, NCHW, torch.optim's default
update), as the methods' original code runs;
both let cuDNN time its convolution algorithms on a GPU (the loop's default; DG-Net's original trainer sets
cudnn.benchmark too);
for DG-Net also --faithful (the original's order: a second generator pass, one call per pass, a deep copy of Ea);
for SA-GAN also --faithful (one network call and one warp per input and direction) and the homography warp through
grid_sample (the reference backend).
DG-Net iterations are measured after the warm-up (every loss on) with a random teacher; its batch is B pairs per
loader, 4B images per iteration (a, p, b, q), which images/s counts. FD-GAN iterations are stage III's (E, V, G, D_id
and D_pd all training, random initialisation) on B pairs (fdgan: 32, fdgan-b128: 128, the paper's batch), 2B
images per iteration; its reference also runs --faithful (one call per Siamese branch and discriminator input).
SA-GAN iterations are adaptation-stage
iterations (both directions, generator and critic steps with the gradient penalty) of B source + B target images
with masks, 2B images per iteration. The tables give the batch with its unit (images, pairs, pairs per loader,
source + target images each) and the images per iteration.
Each iteration is the method's real train_step (augmentation, forward, loss, backward, optimizer and scheduler
steps) on a fixed random batch already on the device, so data loading is not measured. Peak memory is CUDA's
max_memory_allocated per configuration, or on the CPU the process's peak RSS so far (monotone across rows).
The reference is measured again after the other configurations (row "ref-again"; each row's
speedup_vs_reference_again): its readings moved by up to 1.3x between H100 runs, so a ratio comes with both
readings of its own run.
Also reachable as ``python bench/run.py --only train``. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
import traceback

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # a source checkout works without installing
sys.path.insert(0, BENCH_DIR)

from timing import kernel_time_ms, out_path_error, run_meta, time_ms, write_results  # noqa: E402

from reidfast.paths import folder_path_error  # noqa: E402
from reidfast.train.compile_progress import compile_progress  # noqa: E402
from reidfast.train.config import LOOP_DEFAULTS  # noqa: E402
from reidfast.train.loop import Run  # noqa: E402
from reidfast.train.methods import get_method  # noqa: E402

# case -> (GPU setting, CPU/quick setting): batch, image size and config overrides; "method" when the case name
# is not the method's, "start_iter" for the iteration the measured steps start at. Later methods add theirs.
CASES = {
    "baseline": {
        "gpu": {"batch_size": 32, "height": 256, "width": 128, "backbone_width": 64, "num_classes": 751},
        "cpu": {"batch_size": 16, "height": 64, "width": 32, "backbone_width": 16, "num_classes": 60},
    },
    "dgnet": {
        "gpu": {"batch_size": 8, "height": 256, "width": 128, "backbone_width": 64, "num_classes": 751,
                "start_iter": 40_000},
        "cpu": {"batch_size": 2, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                "num_classes": 60, "start_iter": 40_000},
    },
    "dgnet-b32": {
        "method": "dgnet",
        "gpu": {"batch_size": 32, "height": 256, "width": 128, "backbone_width": 64, "num_classes": 751,
                "start_iter": 40_000},
        "cpu": {"batch_size": 4, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                "num_classes": 60, "start_iter": 40_000},
    },
    # FD-GAN stage III iterations (E, V, G, D_id, D_pd all training): batch = pairs, 2 images per pair counted
    "fdgan": {
        "gpu": {"batch_size": 32, "height": 256, "width": 128, "backbone_width": 64, "gan_width": 1.0,
                "num_classes": 751, "stage": "3"},
        "cpu": {"batch_size": 4, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                "num_classes": 60, "stage": "3"},
    },
    "fdgan-b128": {
        "method": "fdgan",
        "gpu": {"batch_size": 128, "height": 256, "width": 128, "backbone_width": 64, "gan_width": 1.0,
                "num_classes": 751, "stage": "3"},
        "cpu": {"batch_size": 8, "height": 64, "width": 32, "backbone_width": 16, "gan_width": 0.25,
                "num_classes": 60, "stage": "3"},
    },
    "sagan": {
        "gpu": {"current_stage": "adapt", "batch_size": 8, "height": 256, "width": 128, "num_classes": 751},
        "cpu": {"current_stage": "adapt", "batch_size": 2, "height": 64, "width": 32, "ngf": 8, "gen_blocks": 2,
                "ndf": 8, "stm_hidden": 16, "dt_hidden": 32, "sianet_width": 8, "sianet_dim": 32, "num_classes": 60},
    },
    "sagan-b32": {
        "method": "sagan",
        "gpu": {"current_stage": "adapt", "batch_size": 32, "height": 256, "width": 128, "num_classes": 751},
        "cpu": {"current_stage": "adapt", "batch_size": 4, "height": 64, "width": 32, "ngf": 8, "gen_blocks": 2,
                "ndf": 8, "stm_hidden": 16, "dt_hidden": 32, "sianet_width": 8, "sianet_dim": 32, "num_classes": 60},
    },
}
# what a case's batch counts, per method (images_per_iteration gives the images it makes)
BATCH_UNITS = {"baseline": "images", "dgnet": "pairs per loader", "fdgan": "pairs",
               "sagan": "source + target images each"}
# per-method additions to a configuration
METHOD_CONFIGS = {"dgnet": {"reference": {"faithful": True}}, "fdgan": {"reference": {"faithful": True}},
                  "sagan": {"reference": {"faithful": True}}}
CONFIGS = {
    "reidfast": {"backend": "auto", "amp": "auto", "compile": None, "channels_last": None, "fused_optimizers": None},
    # reidfast's configuration without torch.compile: what the fused ops, AMP and the rest give alone, measured in
    # seconds where the compiled first step takes minutes on a GPU (DG-Net's and FD-GAN's ran past their limits)
    "no-compile": {"backend": "auto", "amp": "auto", "compile": False, "channels_last": None, "fused_optimizers": None},
    "reference": {"backend": "reference", "amp": "off", "compile": False, "channels_last": False,
                  "fused_optimizers": False},
    # reidfast's configuration with CUDA graphs (--compile-mode reduce-overhead): for steps that wait on the host's
    # launches. Not in the default set.
    "cudagraphs": {"backend": "auto", "amp": "auto", "compile": None, "compile_mode": "reduce-overhead",
                   "channels_last": None, "fused_optimizers": None},
}
DEFAULT_CONFIGS = ("reference", "no-compile", "reidfast")
CUDA_GRAPHS_NEED_A_GPU = "CUDA graphs need a GPU (--device cuda); on the CPU the step would run eagerly"


class _TrainSet:
    def __init__(self, num_classes):
        self.num_train_pids = num_classes


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _batch(method_name: str, cfg: dict, num_classes: int, device: torch.device) -> dict:
    """A fixed random batch in the layout the method's batch sampler gives (pairs for DG-Net)."""
    g = torch.Generator().manual_seed(0)
    size = (3, cfg["height"], cfg["width"])
    if method_name == "dgnet":  # 2B (image, same-identity image) pairs
        pairs = 2 * cfg["batch_size"]
        pids = torch.randint(0, num_classes, (pairs, 1), generator=g).expand(pairs, 2)
        images = torch.randint(0, 256, (pairs, 2, *size), generator=g, dtype=torch.uint8)
    elif method_name == "fdgan":  # B pairs, 1 positive : 3 negative, with both targets (keypoints for all four)
        pairs = cfg["batch_size"]
        anchor = torch.randint(0, num_classes, (pairs, 1), generator=g)
        other = torch.where(torch.arange(pairs).unsqueeze(1) % 4 == 0, anchor, (anchor + 1) % num_classes)
        pids = torch.cat([anchor, other, anchor, other], dim=1)
        images = torch.randint(0, 256, (pairs, 4, *size), generator=g, dtype=torch.uint8)
        scale = torch.tensor([cfg["width"] - 1, cfg["height"] - 1], dtype=torch.float32)
        keypoints = torch.rand(pairs, 4, 18, 2, generator=g) * scale
        return {"image": images.to(device), "pid": pids.to(device), "keypoints": keypoints.to(device)}
    elif method_name == "sagan":  # B source and B target images with their masks
        batch = {}
        for prefix in ("", "target_"):
            batch[f"{prefix}image"] = torch.randint(0, 256, (cfg["batch_size"], *size), generator=g, dtype=torch.uint8)
            batch[f"{prefix}mask"] = (torch.rand((cfg["batch_size"], 1, *size[1:]), generator=g) < 0.5).to(torch.uint8)
        batch["pid"] = torch.randint(0, num_classes, (cfg["batch_size"],), generator=g)
        return {k: v.to(device) for k, v in batch.items()}
    else:
        images = torch.randint(0, 256, (cfg["batch_size"], *size), generator=g, dtype=torch.uint8)
        pids = torch.randint(0, num_classes, (cfg["batch_size"],), generator=g)
    return {"image": images.to(device), "pid": pids.contiguous().to(device)}


def _random_teacher(method, cfg: dict, num_classes: int):
    """DG-Net's teacher, untrained: only its cost matters here."""
    from reidfast.models.baseline import ReidBaseline
    teacher = ReidBaseline(num_classes, last_stride=1, width=cfg["backbone_width"], pretrained="none",
                           log=lambda message: None)
    return method.run.place(teacher).eval().requires_grad_(False)


def _write_profile(step, device: torch.device, path: str, steps: int = 3) -> None:
    """Profiles a few more steps and writes the ops and kernels by self time (device time on a GPU), so that a
    slow configuration can be read without a second GPU session: the table says whether the iteration is bound
    by kernels (device total near the wall time) or by the host (far below it), and which kernels cost most.
    A second table gives the convolutions by input shapes (a kernel name alone does not say which layer it ran)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    events = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    device_time = (f"device self time {kernel_time_ms(events) / steps:.2f} ms/step" if device.type == "cuda"
                   else "no device time on the CPU: the tables are CPU self time")
    syncs = _host_synchronizations(step) if device.type == "cuda" else None
    convolutions = _convolutions_by_shape(step, activities, sort, steps)
    with open(path, "w") as f:
        f.write(f"{steps} profiled steps: wall {wall_ms:.2f} ms/step (under the profiler), "
                f"{device_time}\n")
        if syncs is None:
            f.write("host synchronizations: only counted on a GPU\n")
        else:
            f.write(f"host synchronizations in one step: {sum(n for n, _ in syncs)}\n")
            for n, where in syncs:
                f.write(f"  {n:4d}  {where}\n")
        f.write("\n" + events.table(sort_by=sort, row_limit=45, max_name_column_width=90))
        f.write(f"\nconvolutions by input shapes ({steps} more steps, shapes recorded; times are totals over them)\n")
        f.write(convolutions)


# the ops a convolution's own kernels run under (cuDNN's, or the CPU's)
_CONVOLUTION_OPS = ("aten::cudnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution_transpose",
                    "aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward")


def _convolutions_by_shape(step, activities, sort: str, steps: int) -> str:
    from torch.profiler import profile
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    grouped = prof.key_averages(group_by_input_shape=True)
    rows = [e for e in grouped if e.key in _CONVOLUTION_OPS]
    time_of = (lambda e: e.device_time_total) if sort.endswith("device_time_total") else (lambda e: e.cpu_time_total)
    rows.sort(key=time_of, reverse=True)
    lines = [f"{'total ms':>9} {'calls':>6}  op, input shapes"]
    for e in rows[:30]:
        shapes = [shape for shape in e.input_shapes if shape]  # tensors only: (grad_out,) input, weight, (bias)
        lines.append(f"{time_of(e) / 1e3:9.2f} {e.count:6d}  {e.key} {shapes}")
    return "\n".join(lines) + "\n"


def _host_synchronizations(step) -> list[tuple[int, str]]:
    """(count, source line) of every operation in one step that made the host wait for the GPU (CUDA's sync
    debug mode): each one drains the launch queue, so the host's launch overhead is no longer hidden."""
    import collections
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    lines = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return [(n, where) for where, n in lines.most_common()]


def prepare(case: str, config_name: str, device: torch.device, shapes: str, **overrides):
    """(run, method, cfg, step) for a case in a configuration (with `overrides` of its settings), with the case's
    "gpu" or "cpu" shapes; step() runs one training iteration on the fixed batch. Sets the op backend the
    configuration names (reset it after)."""
    from reidfast import ops
    method_name = CASES[case].get("method", case)
    method_cls = get_method(method_name)
    setting = dict(CASES[case][shapes])
    num_classes = setting.pop("num_classes")
    start_iter = setting.pop("start_iter", 0)
    cfg = {**LOOP_DEFAULTS, **method_cls.defaults, **setting, **CONFIGS[config_name],
           **METHOD_CONFIGS.get(method_name, {}).get(config_name, {}), **overrides, "device": str(device),
           "pretrained": "none"}
    ops.set_backend(cfg["backend"])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    run = Run(cfg, device, 0, 1, log=lambda message: None, method_cls=method_cls)
    method = method_cls(run, _TrainSet(num_classes))
    if method_name == "dgnet":
        method.teacher = _random_teacher(method, cfg, num_classes)
    method.configure(10**6)
    batch = _batch(method_name, cfg, num_classes, device)
    it = [start_iter]

    def step():
        run.train_iteration(method, batch, it[0])
        it[0] += 1

    return run, method, cfg, step


def timing_counts(quick: bool, iters: int | None = None) -> tuple[int, int]:
    """(warm-up steps, timed steps) of a measurement; the median of the timed steps is the row's ms_per_iter."""
    return (2 if quick else 5), iters or (5 if quick else 20)


def measure(case: str, config_name: str, device: torch.device, quick: bool, iters: int | None = None,
            profile_dir: str = "", on_measured=None) -> dict:
    """One configuration's row; on_measured(row) is called as soon as it is timed, before the profile (which a time
    limit can cut short: the row is kept either way)."""
    from reidfast import ops
    run, method, cfg, step = prepare(case, config_name, device, "cpu" if device.type == "cpu" or quick else "gpu")
    t0 = time.perf_counter()
    # the first step compiles when compile is on: a line per graph, so that a run stopped by its time limit still
    # shows how far compilation got
    progress = compile_progress(lambda line: print(f"{case} {config_name} {line}", flush=True)) if run.compile \
        else contextlib.nullcontext()
    with progress:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - t0
    warmup, repeats = timing_counts(quick, iters)
    ms = time_ms(step, device, warmup=warmup, repeats=repeats)
    method_name = CASES[case].get("method", case)
    row = {"method": case, "config": config_name, "device": str(device), "batch": cfg["batch_size"],
           "batch_unit": BATCH_UNITS[method_name], "images_per_iter": method.images_per_iteration(),
           "size": f"{cfg['height']}x{cfg['width']}", "amp": run.amp, "compile": run.compile,
           "channels_last": run.channels_last, "cudnn_benchmark": run.cudnn_benchmark,
           "fused_optimizers": run.fused_optimizers, "backend": ops.get_backend(),
           "ms_per_iter": round(ms, 3),
           "images_per_s": round(method.images_per_iteration() / (ms * 1e-3), 1), "first_step_s": round(first_s, 2),
           "peak_mem_mb": round(_peak_memory_mb(device), 1)}
    if CONFIGS[config_name]["compile"] is None and not run.compile:
        # the loop compiles by default on a GPU only: on the CPU this row is no-compile's settings under the
        # reidfast label, which the row must say
        row["note"] = "not compiled: torch.compile is on by default on a GPU only"
    if on_measured is not None:
        on_measured(row)
    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
        try:
            _write_profile(step, device, os.path.join(profile_dir, f"profile-{case}-{config_name}.txt"))
        except Exception:  # a diagnostic: never the reason a measured row is lost
            print(f"{case} {config_name}: profiling failed (the row stands):\n{traceback.format_exc()}", flush=True)
    ops.set_backend("auto")
    return row


def run(device: torch.device, quick: bool, methods=None, profile_dir: str = "", on_row=None,
        configs=DEFAULT_CONFIGS) -> list[dict]:
    """Rows for every method: the reference configuration, then reidfast's without and with torch.compile, plus
    their speedups over the reference (bench/run.py). `configs` selects among them (a GPU session short of time
    skips what it measured before; without the reference there are no speedups). on_row(rows) is called after
    each row, with the rows so far."""
    if device.type != "cuda" and "cudagraphs" in configs:
        raise ValueError(f"configuration cudagraphs: {CUDA_GRAPHS_NEED_A_GPU}")
    rows = []

    def add(row: dict) -> None:
        print(format_row(row), flush=True)
        rows.append(row)
        if on_row is not None:
            on_row(rows)

    names = methods or list(CASES)
    # The process's first measurement runs cold (thread pools, allocator, page faults): measured on the CPU, the
    # baseline, which uses no reidfast op, read 1.5x "faster" in its second configuration. One discarded run first.
    measure(names[0], "reference", device, quick, iters=1)
    print(HEADER, flush=True)
    for name in names:
        ref = None
        if "reference" in configs:
            ref = measure(name, "reference", device, quick, profile_dir=profile_dir, on_measured=add)

        def add_with_speedup(ours: dict, ref=ref) -> None:
            if ref is not None:
                ours["speedup_vs_reference"] = round(ours["images_per_s"] / ref["images_per_s"], 3)
            add(ours)

        # no-compile before the compiled ones: its row is written even when a compiled first step runs past a time
        # limit
        ours_rows = []
        for config in sorted((c for c in CONFIGS if c != "reference"),
                             key=lambda c: CONFIGS[c]["compile"] is not False):
            if config in configs:
                ours_rows.append(measure(name, config, device, quick, profile_dir=profile_dir,
                                         on_measured=add_with_speedup))
        if ref is not None and ours_rows:
            # The reference once more, after the others: on H100 machines one case's reference read 177.6, 191.1
            # and 228.9 ms/iter in three runs, so a ratio is quoted against both readings of its own run.
            again = measure(name, "reference", device, quick)
            again["config"] = "ref-again"
            add(again)
            for ours in ours_rows:
                ours["speedup_vs_reference_again"] = round(ours["images_per_s"] / again["images_per_s"], 3)
                print(f"{ours['method']:<10} {ours['config']:<10} speedup against the reference's second reading: "
                      f"{ours['speedup_vs_reference_again']:.2f}", flush=True)
            if on_row is not None:
                on_row(rows)
    return rows


HEADER = (f"{'method':<10} {'config':<10} {'batch':>5} {'img/it':>6} {'size':>8} {'amp':>5} {'compile':>7} "
          f"{'ms/iter':>9} {'images/s':>9} {'1st step s':>10} {'peak MB':>9} {'speedup':>8}")


def format_row(r: dict) -> str:
    speedup = r.get("speedup_vs_reference")
    return (f"{r['method']:<10} {r['config']:<10} {r['batch']:>5} {r['images_per_iter']:>6} {r['size']:>8} "
            f"{r['amp']:>5} {str(r['compile']):>7} {r['ms_per_iter']:>9.2f} {r['images_per_s']:>9.1f} "
            f"{r['first_step_s']:>10.2f} {r['peak_mem_mb']:>9.1f} "
            f"{'-' if speedup is None else f'{speedup:.2f}':>8}" + (f"  ({r['note']})" if r.get("note") else ""))


def markdown(rows: list[dict], meta: dict | None = None) -> str:
    """The rows as a markdown table, under a line saying what they are when `meta` is given (bench/run.py puts
    the table under its own heading)."""
    lines = []
    if meta is not None:
        device = meta["device_name"] + (f" ({meta['device']})" if meta["device_name"] != meta["device"] else "")
        lines += [f"Training iterations on {device}, {meta['date']}, torch "
                  f"{meta['torch']}{', quick' if meta['quick'] else ''}: ms/iter is the median of "
                  f"{meta['repeats']} iterations after {meta['warmup']} warm-up iterations and the first.", ""]
    lines += ["| method | config | batch | images/iter | size | amp | compile | ms/iter | images/s | peak MB | "
              "x reference | x ref-again | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['config']} | {r['batch']} {r['batch_unit']} | {r['images_per_iter']} | "
                     f"{r['size']} | {r['amp']} | {r['compile']} | {r['ms_per_iter']} | {r['images_per_s']} | "
                     f"{r['peak_mem_mb']} | {r.get('speedup_vs_reference', '')} | "
                     f"{r.get('speedup_vs_reference_again', '')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="", help=f"comma-separated methods out of {', '.join(CASES)} (default all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small images and batch, few repeats (a CPU check)")
    p.add_argument("--out", default="", help="write the rows as JSON here (and a .md table beside it)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="after timing, profile 3 more steps of each configuration and write the ops and kernels by "
                        "self time to DIR/profile-CASE-CONFIG.txt (timings are not affected)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated configurations out of {', '.join(CONFIGS)} (default "
                        f"{','.join(DEFAULT_CONFIGS)}; the speedups need the reference)")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if not configs or any(c not in CONFIGS for c in configs):
        p.error(f"--configs: choose one or more of {', '.join(CONFIGS)}, got {args.configs!r}")
    methods = [m for m in args.method.split(",") if m] or list(CASES)
    unknown = [m for m in methods if m not in CASES]
    if unknown:
        p.error(f"--method: no benchmark case for {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.device == "cpu" and "cudagraphs" in configs:
        p.error(f"--configs cudagraphs: {CUDA_GRAPHS_NEED_A_GPU}")
    if args.out and out_path_error(args.out):
        p.error(f"--out: {out_path_error(args.out)}")
    profile_error = args.profile and folder_path_error(os.path.abspath(args.profile))
    if profile_error:
        p.error(f"--profile: {profile_error}")
    device = torch.device(args.device)
    warmup, repeats = timing_counts(args.quick)
    meta = run_meta(device, args.quick, warmup=warmup, repeats=repeats)
    # The files are rewritten after every row: a case whose compiled first step runs past a time limit still leaves
    # its reference and no-compile rows. "torch" at the top as before meta.
    write = (lambda rows: write_results(args.out, {"torch": torch.__version__, "meta": meta, "rows": rows},
                                        markdown(rows, meta))
             if args.out else None)
    rows = run(device, args.quick, methods, args.profile, on_row=write, configs=configs)
    if args.out:
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    # Seen on H100s: the rows were written, then the interpreter's shutdown did not finish before the case's timeout
    # (cause not found; compile worker processes are a suspect); and a compiled step raised, and the process was
    # still alive at the timeout (run 4 of 2026-11-27). Nothing is left to do either way, so the process ends
    # without the teardown, and a GPU session's minutes go to the next case.
    status = 0
    try:
        main()
    except SystemExit as exc:  # argparse's errors and --help
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
