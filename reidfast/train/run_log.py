"""The run's logs: JSONL always, TensorBoard when installed."""
from __future__ import annotations

import json
import math
from pathlib import Path


class RunLog:
    """``log.jsonl`` (one JSON object per line, appended, so a resumed run continues the same file) and, when
    ``torch.utils.tensorboard`` imports, TensorBoard scalars in the run folder."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional; the JSONL log has everything
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.file = open(self.path, "a", buffering=1)

    def write(self, record: dict, step: int | None = None, prefix: str = "") -> None:
        if not self.enabled:
            return
        # NaN and Inf are not JSON (strict readers such as jq refuse the line): a diverged loss is logged as null
        self.file.write(json.dumps({k: _json_number(v) for k, v in record.items()}, allow_nan=False) + "\n")
        if self.tensorboard is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("it", "epoch"):
                    self.tensorboard.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
