"""What the monitor knows about a run directory: the latest metrics, per-layer TTT-state histories, the FP32
status and the alerts, built incrementally from `metrics.jsonl` and `ttt_state.jsonl` as they grow.

The Textual app and `omnittt monitor --once [--json]` both render a `RunState`; neither needs torch.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omnittt.inspect.jsonl import JsonlTail
from omnittt.inspect.schemas import (
    CHECKPOINTS_DIR,
    FINISHED_EVENT,
    FULL_PRECISION_DTYPES,
    LATEST_CHECKPOINT_FILE,
    METRICS_FILE,
    SCHEMA_VERSION,
    STATE_NAMES,
    TTT_STATE_FILE,
    is_supported,
)


@dataclass
class MonitorSettings:
    history: int = 500  # points kept per series
    norm_growth: float = 3.0  # alert when a norm exceeds this multiple of its median over the window
    growth_window: int = 20  # logged entries the growth baseline is taken over
    stall_after: float | None = None  # seconds without a new step; None: 10x the recent step time, >= 120 s


@dataclass
class Alert:
    kind: str  # "nonfinite" | "dtype" | "growth" | "stalled" | "skipped_lines"
    severity: str  # "error" | "warning"
    message: str
    layer: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    count: int = 1


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class LayerHistory:
    """The logged runtime statistics of one TTT layer."""

    def __init__(self, layer: int, maxlen: int) -> None:
        self.layer = layer
        self.latest: dict[str, Any] = {}
        self.steps: deque[int] = deque(maxlen=maxlen)
        self.norms: dict[str, deque[float]] = {name: deque(maxlen=maxlen) for name in STATE_NAMES}
        self.inner_before: deque[float] = deque(maxlen=maxlen)
        self.inner_after: deque[float] = deque(maxlen=maxlen)
        self.dtype_history: deque[dict[str, str]] = deque(maxlen=maxlen)
        self.sources: deque[str] = deque(maxlen=maxlen)

    @property
    def state_names(self) -> list[str]:
        return [name for name in STATE_NAMES if name in (self.latest.get("norm") or {})]

    @property
    def dtypes(self) -> dict[str, str]:
        return dict(self.latest.get("dtype") or {})

    @property
    def fp32(self) -> bool:
        return all(dtype in FULL_PRECISION_DTYPES for dtype in self.dtypes.values())

    def add(self, record: dict[str, Any]) -> None:
        self.latest = record
        self.steps.append(record.get("step", 0))
        norms = record.get("norm") or {}
        for name in STATE_NAMES:  # every series gets a point per entry so that they stay aligned with steps
            value = norms.get(name)
            self.norms[name].append(float(value) if _finite(value) else math.nan)
        self.dtype_history.append(dict(record.get("dtype") or {}))
        self.sources.append(str(record.get("source", "stats")))
        for key, series in (("inner_loss_before", self.inner_before), ("inner_loss_after", self.inner_after)):
            value = record.get(key)
            series.append(float(value) if _finite(value) else math.nan)


class RunState:
    """Incremental view of a run directory. Call `poll()` to read what was appended since the last call."""

    def __init__(self, run_dir: str | os.PathLike, settings: MonitorSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.run_dir = Path(run_dir)
        self.settings = settings or MonitorSettings()
        self.clock = clock
        self.metrics_tail = JsonlTail(self.run_dir / METRICS_FILE)
        self.ttt_tail = JsonlTail(self.run_dir / TTT_STATE_FILE)
        self._events: dict[tuple, Alert] = {}  # alerts raised by lines, keyed by (file, kind, layer[, state])
        self.skipped = {"metrics": 0, "ttt_state": 0}  # lines of another schema version
        self._reset_metrics()
        self._reset_ttt()
        self.last_checkpoint: str | None = None

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    # reading ----------------------------------------------------------------------------------------------

    def poll(self, max_bytes: int | None = None) -> bool:
        """Read new lines of both files (at most `max_bytes` of each per call, so that a UI opening a long run
        catches up in slices instead of freezing); True when anything changed."""
        changed = False
        batch = self.metrics_tail.poll(max_bytes)
        if batch.reset:
            self._reset_metrics()
            changed = True
        for record in batch:
            changed |= self.apply_metrics(record)
        batch = self.ttt_tail.poll(max_bytes)
        if batch.reset:
            self._reset_ttt()
            changed = True
        for record in batch:
            changed |= self.apply_ttt(record)
        checkpoint = self._read_latest_checkpoint()
        if checkpoint != self.last_checkpoint:
            self.last_checkpoint, changed = checkpoint, True
        return changed

    def _read_latest_checkpoint(self) -> str | None:
        try:
            return (self.run_dir / CHECKPOINTS_DIR / LATEST_CHECKPOINT_FILE).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return None

    def _reset_metrics(self) -> None:
        maxlen = self.settings.history
        self.metrics: dict[str, Any] = {}
        self.finished = False
        self.step_times: deque[tuple[int, float]] = deque(maxlen=maxlen)
        self.loss: deque[float] = deque(maxlen=maxlen)
        self.tokens_per_s: deque[float] = deque(maxlen=maxlen)
        self.skipped["metrics"] = 0
        self._events = {key: alert for key, alert in self._events.items() if key[0] != "metrics"}

    def _reset_ttt(self) -> None:
        self.layers: dict[int, LayerHistory] = {}
        self.skipped["ttt_state"] = 0
        self._events = {key: alert for key, alert in self._events.items() if key[0] != "ttt"}

    def apply_metrics(self, record: dict[str, Any]) -> bool:
        if not is_supported(record):
            self.skipped["metrics"] += 1
            return True
        if record.get("event") == FINISHED_EVENT:
            self.finished = True
            return True
        step = record.get("step")
        if not isinstance(step, int):
            self.skipped["metrics"] += 1
            return True
        self.finished = False
        self.metrics = record
        if _finite(record.get("time")):
            self.step_times.append((step, float(record["time"])))
        loss = record.get("loss")
        self.loss.append(float(loss) if _finite(loss) else math.nan)
        if _finite(record.get("tokens_per_s")):
            self.tokens_per_s.append(float(record["tokens_per_s"]))
        for key in ("loss", "grad_norm"):
            if key in record and not _finite(record[key]):
                self._event(("metrics", "nonfinite", key), "nonfinite", "error", None, step,
                            f"{key} is not finite")
        return True

    def apply_ttt(self, record: dict[str, Any]) -> bool:
        layer_idx = record.get("layer")
        if not is_supported(record) or not isinstance(layer_idx, int):
            self.skipped["ttt_state"] += 1
            return True
        history = self.layers.get(layer_idx)
        if history is None:
            history = self.layers[layer_idx] = LayerHistory(layer_idx, self.settings.history)
        # the growth baseline: the runtime entries just before this one (newest first, no copy of the whole history);
        # entries of a fresh/reset state ("init") are the learned init, which any training state outgrows at once
        window = self.settings.growth_window
        previous = {name: list(itertools.islice(
            (v for v, source in zip(reversed(series), reversed(history.sources), strict=True) if source != "init"),
            window)) for name, series in history.norms.items()}
        history.add(record)
        step = record.get("step")
        bad = list(record.get("nonfinite") or [])
        bad += [name for name, value in (record.get("norm") or {}).items() if not _finite(value) and name not in bad]
        counts = [f"{record[key]} {label}" for key, label in (("nan", "NaN"), ("inf", "Inf"))
                  if _finite(record.get(key)) and record[key] > 0]
        if bad or counts:
            what = ", ".join(bad) or "state"
            detail = f" ({', '.join(counts)})" if counts else ""
            self._event(("ttt", "nonfinite", layer_idx), "nonfinite", "error", layer_idx, step,
                        f"layer {layer_idx}: non-finite {what}{detail}")
        drift = {name: dtype for name, dtype in (record.get("dtype") or {}).items()
                 if dtype not in FULL_PRECISION_DTYPES}
        if drift:
            what = ", ".join(f"{name} {dtype}" for name, dtype in drift.items())
            self._event(("ttt", "dtype", layer_idx), "dtype", "error", layer_idx, step,
                        f"layer {layer_idx}: TTT state not float32 ({what})")
        if record.get("source") != "init":
            for name, value in (record.get("norm") or {}).items():
                self._check_growth(layer_idx, name, previous.get(name, []), value, step)
        return True

    def _check_growth(self, layer_idx: int, name: str, previous: list[float], value: Any, step: Any) -> None:
        if not _finite(value):
            return
        window = [v for v in previous if v > 0]  # the series hold NaN for non-finite points: the comparison drops them
        # median >= min: a value within the threshold of the minimum cannot alert (skips the median almost always)
        if len(window) < 3 or value <= self.settings.norm_growth * min(window):
            return
        baseline = statistics.median(window)
        ratio = value / baseline
        if ratio > self.settings.norm_growth:
            self._event(("ttt", "growth", layer_idx, name), "growth", "warning", layer_idx, step,
                        f"layer {layer_idx}: |{name}| grew {ratio:.1f}x over its last {len(window)} entries "
                        f"({baseline:.3g} -> {value:.3g})")

    def _event(self, key: tuple, kind: str, severity: str, layer: int | None, step: Any, message: str) -> None:
        step = step if isinstance(step, int) else None
        alert = self._events.get(key)
        if alert is None:
            self._events[key] = Alert(kind, severity, message, layer, step, step)
        else:
            alert.message, alert.last_step, alert.count = message, step, alert.count + 1

    # derived values ---------------------------------------------------------------------------------------

    @property
    def step(self) -> int | None:
        return self.metrics.get("step")

    @property
    def last_update(self) -> float | None:
        return self.step_times[-1][1] if self.step_times else None

    def step_seconds(self) -> float | None:
        """Recent wall time per optimizer step (from the writer's timestamps)."""
        points = list(self.step_times)[-21:]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])

    def eta_seconds(self) -> float | None:
        total, step, per_step = self.metrics.get("total_steps"), self.step, self.step_seconds()
        if self.finished:
            return 0.0
        if not isinstance(total, int) or step is None or per_step is None:
            return None
        return max(0, total - step) * per_step

    def stall_threshold(self) -> float:
        if self.settings.stall_after is not None:
            return self.settings.stall_after
        per_step = self.step_seconds()
        return max(120.0, 10 * per_step) if per_step else 120.0

    def stalled_for(self) -> float | None:
        """Seconds since the last step when that exceeds the stall threshold (None while healthy/finished)."""
        if self.finished or self.last_update is None:
            return None
        idle = self.clock() - self.last_update
        return idle if idle > self.stall_threshold() else None

    @property
    def fp32_bad(self) -> list[dict[str, Any]]:
        """Latest runtime states below float32: [{"layer", "state", "dtype"}]."""
        return [{"layer": layer.layer, "state": name, "dtype": dtype}
                for layer in self.sorted_layers() for name, dtype in layer.dtypes.items()
                if dtype not in FULL_PRECISION_DTYPES]

    @property
    def fp32_ok(self) -> bool | None:
        """True when every TTT state is float32, False when one is not, None before any ttt_state line."""
        if not self.layers:
            return None
        return not self.fp32_bad

    def sorted_layers(self) -> list[LayerHistory]:
        return [self.layers[i] for i in sorted(self.layers)]

    def alerts(self) -> list[Alert]:
        alerts = list(self._events.values())
        idle = self.stalled_for()
        if idle is not None:
            alerts.append(Alert("stalled", "warning", f"no new step for {format_duration(idle)}", None,
                                self.step, self.step))
        for name, count in self.skipped.items():
            if count:
                alerts.append(Alert("skipped_lines", "warning",
                                    f"{count} line(s) of {name}.jsonl skipped (other schema or malformed)"))
        bad_lines = self.metrics_tail.bad_lines + self.ttt_tail.bad_lines
        if bad_lines:
            alerts.append(Alert("skipped_lines", "warning", f"{bad_lines} malformed line(s) skipped"))
        return alerts

    def waiting_for(self) -> list[str]:
        """The run files that do not exist yet."""
        return [tail.path.name for tail in (self.metrics_tail, self.ttt_tail) if not tail.exists]

    def summary(self) -> dict[str, Any]:
        """Everything the monitor shows, as JSON-ready data (`omnittt monitor --once --json`)."""
        metrics = self.metrics
        return {
            "schema": SCHEMA_VERSION,
            "run": self.name,
            "run_dir": str(self.run_dir),
            "step": self.step,
            "total_steps": metrics.get("total_steps"),
            "stage": metrics.get("stage"),
            "loss": metrics.get("loss"),
            "lr": metrics.get("lr"),
            "tokens_per_s": metrics.get("tokens_per_s"),
            "grad_norm": metrics.get("grad_norm"),
            "eta_s": self.eta_seconds(),
            "finished": self.finished,
            "last_checkpoint": self.last_checkpoint,
            "waiting_for": self.waiting_for(),
            "fp32": {"ok": self.fp32_ok, "bad": self.fp32_bad},
            "layers": [
                {
                    "layer": layer.layer,
                    "step": layer.latest.get("step"),
                    "kind": layer.latest.get("kind"),
                    "norm": layer.latest.get("norm"),
                    "delta": layer.latest.get("delta"),
                    "init_norm": layer.latest.get("init_norm"),
                    "inner_loss_before": layer.latest.get("inner_loss_before"),
                    "inner_loss_after": layer.latest.get("inner_loss_after"),
                    "mean_lr": layer.latest.get("mean_lr"),
                    "dtype": layer.dtypes,
                    "nan": layer.latest.get("nan"),
                    "inf": layer.latest.get("inf"),
                }
                for layer in self.sorted_layers()
            ],
            "alerts": [asdict(alert) for alert in self.alerts()],
        }


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def latest_run(runs_dir: str | os.PathLike = "runs") -> Path | None:
    """The run directory under `runs_dir` written to most recently (by its run files' modification times)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for candidate in root.iterdir():
        if not candidate.is_dir() or candidate.name.startswith("."):
            continue
        times = [candidate.stat().st_mtime]
        for name in (METRICS_FILE, TTT_STATE_FILE):
            path = candidate / name
            if path.exists():
                times.append(path.stat().st_mtime)
        stamp = max(times)
        if best is None or stamp > best[0]:
            best = (stamp, candidate)
    return best[1] if best else None
