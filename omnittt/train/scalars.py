"""Step scalars for an experiment tracker beside the JSONL files (`--log-with tensorboard`).

metrics.jsonl stays the record the monitor, resume and tests read; a tracker gets a copy of each optimizer
step's scalars (loss, lr, tokens/s, grad norm, validation loss) under `RUN/tensorboard/`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omnittt.errors import UserError

TENSORBOARD_DIR = "tensorboard"


class TensorBoardScalars:
    """`train/<name>` scalars per optimizer step, written with torch's SummaryWriter."""

    def __init__(self, log_dir: Path) -> None:
        try:  # tensorboard is optional (the [tensorboard] extra): imported only when --log-with asks for it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--log-with tensorboard needs the tensorboard package, which is not installed",
                            fix="pip install 'omnittt[tensorboard]' (or pip install tensorboard)") from None
        self.log_dir = Path(log_dir)
        # a resumed run appends to the same directory; TensorBoard shows the later value of a repeated step
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, step: int, scalars: dict[str, float | None]) -> None:
        for name, value in scalars.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(f"train/{name}", float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def scalar_logger(name: str, run_dir: Path) -> Any:
    if name == "tensorboard":
        return TensorBoardScalars(Path(run_dir) / TENSORBOARD_DIR)
    raise UserError(f"log_with {name!r} is not supported", fix="use --log-with tensorboard")
