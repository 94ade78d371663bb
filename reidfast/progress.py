"""A progress bar on stderr (no dependency), for training and for feature extraction alike."""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressBar:
    """One line redrawn in place on a terminal; on a pipe or file a plain line at most every `interval` s."""

    def __init__(self, total: int, start: int = 0, stream=None, interval: float = 10.0, width: int = 24,
                 label: str = "", unit: str = "it"):
        self.total, self.stream, self.width = total, stream or sys.stderr, width
        self.label, self.unit = label, unit
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.last_draw = 0.0
        self.start_it = start

    def update(self, it: int, fields: dict, rate: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        done = it / max(1, self.total)
        bar = "#" * int(done * self.width)
        remaining = (self.total - it) / rate if rate > 0 else float("nan")
        text = "".join(f"{k} {v:.4g} " for k, v in fields.items())
        eta = format_duration(remaining) if remaining == remaining else "?"
        line = (f"{self.label}[{bar:<{self.width}}] {it}/{self.total} {100 * done:3.0f}% | {text}{'| ' if text else ''}"
                f"{rate:.1f} {self.unit}/s | ETA {eta}")
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
