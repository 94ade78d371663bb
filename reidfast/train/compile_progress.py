"""Progress lines while torch.compile works.

The first iteration of a compiled GAN method compiles for minutes with nothing to show, and a method may compile
again later (DG-Net when its warm-up ends). While the context is open, each finished graph gets a line: which one,
what kind, how long it took and how long compilation has taken so far; in a benchmark that runs out of time, the
lines left in its log say how far compilation got.
"""
from __future__ import annotations

import contextlib
import time

# torch's names for what is being compiled, as a user reads them
_STAGES = {"DYNAMO": "forward", "LAZY_BACKWARD": "backward", "TRITON_AUTOTUNING": "autotuning",
           "CUDAGRAPH_RECORDING": "CUDA graph recording"}


@contextlib.contextmanager
def compile_progress(log):
    """Calls log(line) as each compilation ends. Without torch's compile callbacks (a torch that moved them) it
    says nothing."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:
        yield
        return
    began = time.perf_counter()
    starts: dict = {}
    state = {"graphs": 0, "seconds": 0.0}

    def on_start(args) -> None:
        starts[args.compile_id] = time.perf_counter()

    def on_end(args) -> None:
        took = time.perf_counter() - starts.pop(args.compile_id, began)
        state["graphs"] += 1
        state["seconds"] += took
        trigger = getattr(args.callback_trigger, "name", str(args.callback_trigger))
        log(f"compile: graph {args.compile_id} ({_STAGES.get(trigger, trigger.lower())}) took {took:.1f} s; "
            f"{state['graphs']} so far, {state['seconds']:.0f} s of compilation")

    callback_handler.register_start_callback(on_start)
    callback_handler.register_end_callback(on_end)
    try:
        yield
    finally:
        callback_handler.remove_start_callback(on_start)
        callback_handler.remove_end_callback(on_end)
