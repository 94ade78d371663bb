"""The one timing harness: warm-up, then the median of repeats (CUDA events on GPU, perf_counter on CPU); the
GPU's busy time per call, from the profiler's kernel records; and the results files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import torch

from reidfast.paths import folder_path_error

# A profiling session leaves NVIDIA's CUPTI attached to the process unless Kineto is told to tear it down
# (TEARDOWN_CUPTI=1, read at the end of each session), and later kernel launches can then pay for its callbacks:
# the rows timed after a profiled row may read slower than they are, launch-bound calls most (H100 run 8: SA-GAN's
# eager reference took 111.7 ms an iteration before the first profile and 141.5 ms after two). A value set by the
# caller is kept.
os.environ.setdefault("TEARDOWN_CUPTI", "1")


def time_ms(fn, device: torch.device, warmup: int = 3, repeats: int = 10, min_total_s: float = 0.0) -> float:
    """Median wall time of fn() in milliseconds. On CUDA each repeat is bracketed by events on the stream."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        began = time.perf_counter()
        while len(times) < repeats or (time.perf_counter() - began) < min_total_s:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def with_env(fn, name: str, value: str):
    """fn with the environment variable `name` set to `value` during each call (kernel variants that the extension
    reads per call). Sets and restores the one variable: mock.patch.dict(os.environ) copies and rewrites the whole
    environment, which added up to a millisecond to every timed call."""
    def call():
        previous = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if previous is None:
                del os.environ[name]
            else:
                os.environ[name] = previous
    return call


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), the peak the kernels are held to."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, repeats=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def kernel_time_ms(events) -> float:
    """Total GPU time of the kernels (and copies/fills) among profiler events, in ms. Only the device-side records
    count: a CPU op's "self device time" is its kernels' time again."""
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.self_device_time_total for e in events if e.device_type == cuda) / 1e3


def device_time_breakdown(fn, device: torch.device, repeats: int = 10, top: int = 5):
    """GPU busy time per call of fn, in ms: the sum of its kernels' durations, without the host's launch overhead
    or gaps between kernels (bytes / this time is what the kernels achieve; time_ms is what a caller sees); and
    [(kernel name, ms per call)] of its `top` kernels by time."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize(device)
    averages = prof.key_averages()
    cuda = torch.autograd.DeviceType.CUDA
    kernels = sorted((e for e in averages if e.device_type == cuda), key=lambda e: -e.self_device_time_total)
    return (kernel_time_ms(averages) / repeats,
            [(e.key, round(e.self_device_time_total / 1e3 / repeats, 4)) for e in kernels[:top]])


def call_timeline(fn, device: torch.device) -> dict:
    """Where the time of one call of fn goes, from a profile of it (ms): host_to_first_kernel (the host's work before
    the device has anything to run), device_span (first kernel start to last kernel end), device_busy (the kernels'
    own time within it; the rest of the span the device waited for launches), after_last_kernel (the host's work
    after the device finished: copies back, results), and the number of kernels, copies and fills. Empty on a
    device the profiler records no kernels for."""
    from torch.profiler import ProfilerActivity, profile, record_function
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        with record_function("timed_call"):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.events()
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    calls = [e for e in events if e.name == "timed_call" and e.device_type == cpu]
    # the annotation's own device-side range is not a kernel
    kernels = [e for e in events if e.device_type == cuda and e.name != "timed_call"]
    if not calls or not kernels:
        return {}
    call = calls[0].time_range
    first = min(k.time_range.start for k in kernels)
    last = max(k.time_range.end for k in kernels)
    return {"kernels": len(kernels),
            "host_to_first_kernel_ms": round((first - call.start) / 1e3, 4),
            "device_span_ms": round((last - first) / 1e3, 4),
            "device_busy_ms": round(sum(k.time_range.elapsed_us() for k in kernels) / 1e3, 4),
            "after_last_kernel_ms": round((call.end - last) / 1e3, 4)}


def run_meta(device: torch.device, quick: bool, **extra) -> dict:
    """What a results file needs to be read later: when, on what (device, host, CPU threads), which torch, and how
    it was timed (`quick`, plus the caller's `extra`: repeat counts)."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": device.type, "host": platform.node(), "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu", "quick": quick, **extra}


def out_path_error(path: str) -> str | None:
    """Why --out `path` cannot take the results (JSON there, the .md table beside it), or None. Checked before any
    work, so that a run of minutes does not end in an error at the last step."""
    if os.path.isdir(path):
        return f"{path} is a folder; expected a file name ending in .json (the .md table is written beside it)"
    if not path.endswith(".json"):
        return f"expected a file name ending in .json (the .md table is written beside it), got {path!r}"
    table = os.path.splitext(path)[0] + ".md"
    if os.path.isdir(table):
        return f"{table}, where the .md table goes, is a folder"
    error = folder_path_error(os.path.dirname(os.path.abspath(path)))
    return error and f"{error}: cannot write {path}"


def write_results(path: str, payload: dict, table: str) -> None:
    """payload as JSON at path and the markdown table beside it (.md), each replaced whole (written to a temporary
    name, then renamed): a run stopped while writing leaves the previous files, not half of new ones."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for target, text in ((path, json.dumps(payload, indent=1)), (os.path.splitext(path)[0] + ".md", table)):
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
