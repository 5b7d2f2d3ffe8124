"""Runtime TTT-state statistics and training metrics, written as versioned JSONL lines into the run directory.

`TTTStateLogger` turns what the TTT layers leave in `cache.layers[i].stats` (with `collect_ttt_stats=True`,
docs/architecture.md "TTT statistics") into one `ttt_state.jsonl` line per TTT layer. It logs the *runtime* fast
weights (not the learned initial weights, which hardly move, so charts of them show nothing). Norms come
from the layer's statistics while those describe the cache's current state, else from the cache's live state, so
they are never stale: after a `reset` a layer reports its learned init again.
The trainer asks `wants(step)` to decide whether to pass `collect_ttt_stats=True` on that step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from omnittt.inspect.fp32 import find_ttt_modules
from omnittt.inspect.health import dtype_name, ttt_cache_layers
from omnittt.inspect.jsonl import JsonlWriter
from omnittt.inspect.schemas import (
    FINISHED_EVENT,
    METRICS_FILE,
    SCHEMA_VERSION,
    STATE_NAMES,
    TTT_STATE_FILE,
    TTT_STATE_OPTIONAL,
    TTT_STATE_REQUIRED,
)

DEFAULT_STATS_INTERVAL = 10  # optimizer steps between ttt_state.jsonl entries
_RESERVED = frozenset(TTT_STATE_REQUIRED) | frozenset(TTT_STATE_OPTIONAL)


def _row_norms(tensor: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per batch row over all heads, in float32."""
    return torch.linalg.vector_norm(tensor.detach().flatten(1), dim=1, dtype=torch.float32)


def layer_record(layer_idx: int, layer: Any, init: dict[str, torch.Tensor] | None = None) -> dict[str, Any] | None:
    """The ttt_state fields of one TTT cache layer (without schema/step/time), or None when the layer holds no
    state and no learned init is known."""
    stats = layer.current_stats()
    position = layer.positions()
    found = _reported_state(layer, bool(stats), init, position)
    if found is None:
        return None
    source, tensors = found
    names = [name for name in STATE_NAMES if name in tensors]
    fetched = _fetch(names, tensors, stats, init)
    return _record(layer_idx, source, names, tensors, fetched, position)


def _reported_state(layer: Any, has_stats: bool, init: dict[str, torch.Tensor] | None,
                    position: Any) -> tuple[str, dict[str, torch.Tensor]] | None:
    """(source, state tensors `[rows, ...]`) the record describes: the runtime state, else the learned init."""
    if layer.tensors("state"):
        return ("stats" if has_stats else "state"), layer.state_for_report(init)
    if init:
        # no runtime state yet (fresh cache or full reset): the state *is* the learned init
        rows = position.numel() if isinstance(position, torch.Tensor) and position.numel() else 1
        return "init", {k: v.detach().unsqueeze(0).expand(rows, *v.shape) for k, v in init.items()}
    return None


def _fetch(names: list[str], tensors: dict[str, torch.Tensor], stats: dict[str, Any],
           init: dict[str, torch.Tensor] | None) -> dict[str, dict[str, torch.Tensor]]:
    """Everything a record needs from the device, as CPU tensors by group ("norm" per row, "delta" per row,
    "scalar", "count" = (nan, inf), "init" norm) and name. Gathered into one vector first, so a GPU run pays a
    single device-to-host copy per layer."""
    parts: list[torch.Tensor] = []
    layout: list[tuple[str, str]] = []

    def add(group: str, name: str, tensor: torch.Tensor) -> None:
        parts.append(tensor if not parts else tensor.to(parts[0].device))
        layout.append((group, name))

    for name in names:
        logged = stats.get(f"{name}_norm")
        add("norm", name, logged.detach().float().reshape(-1) if isinstance(logged, torch.Tensor)
            else _row_norms(tensors[name]))
    for name in names:
        if isinstance(stats.get(f"{name}_delta"), torch.Tensor):
            add("delta", name, stats[f"{name}_delta"].detach().float().reshape(-1))
    for key in ("inner_loss_before", "inner_loss_after", "mean_lr"):
        if isinstance(stats.get(key), torch.Tensor):
            add("scalar", key, stats[key].detach().float().reshape(-1))
    for name in names:
        data = tensors[name].detach()
        add("count", name, torch.stack([torch.isnan(data).sum(), torch.isinf(data).sum()]).float())
    for name in names:
        if init and name in init:
            add("init", name, torch.linalg.vector_norm(init[name].detach(), dtype=torch.float32).reshape(1))
    flat = torch.cat(parts).cpu()
    fetched: dict[str, dict[str, torch.Tensor]] = {group: {} for group in ("norm", "delta", "scalar", "count", "init")}
    for (group, name), chunk in zip(layout, flat.split([p.numel() for p in parts]), strict=True):
        fetched[group][name] = chunk
    return fetched


def _record(layer_idx: int, source: str, names: list[str], tensors: dict[str, torch.Tensor],
            fetched: dict[str, dict[str, torch.Tensor]], position: Any) -> dict[str, Any]:
    """The ttt_state fields from the fetched values (the field list is in docs/jsonl_schemas.md)."""
    norm_rows = fetched["norm"]
    record: dict[str, Any] = {
        "layer": layer_idx,
        "kind": "mlp" if "W2" in names else "linear",
        "source": source,
        "rows": norm_rows[names[0]].numel(),
        "norm": {name: float(v.mean()) for name, v in norm_rows.items()},
        "norm_max": {name: float(v.max()) for name, v in norm_rows.items()},
        "delta": {name: float(v.mean()) for name, v in fetched["delta"].items()},
        "dtype": {name: dtype_name(tensors[name].dtype) for name in names},
    }
    for key, values in fetched["scalar"].items():
        record[key] = float(values.mean())
    if isinstance(position, torch.Tensor) and position.numel():
        record["stream_position"] = int(position.max())
    nan = {name: int(c[0]) for name, c in fetched["count"].items()}
    inf = {name: int(c[1]) for name, c in fetched["count"].items()}
    record["nan"] = sum(nan.values())
    record["inf"] = sum(inf.values())
    record["nonfinite"] = [name for name in names if nan[name] or inf[name]
                           or not torch.isfinite(norm_rows[name]).all()]
    if fetched["init"]:
        record["init_norm"] = {name: float(v) for name, v in fetched["init"].items()}
    return record


def learned_inits(model: torch.nn.Module | None) -> dict[int, dict[str, torch.Tensor]]:
    """layer index -> the TTT module's learned initial state parameters (W1 b1 W2 b2 present on it)."""
    if model is None:
        return {}
    inits = {}
    for _, module in find_ttt_modules(model):
        layer_idx = getattr(module, "layer_idx", None)
        if layer_idx is None:
            continue
        inits[layer_idx] = {name: getattr(module, name) for name in STATE_NAMES
                            if isinstance(getattr(module, name, None), torch.Tensor)}
    return inits


def collect_ttt_records(cache: Any, step: int, model: torch.nn.Module | None = None,
                        extra: dict[str, Any] | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """One ttt_state record per TTT layer of `cache` (see docs/jsonl_schemas.md)."""
    extra = dict(extra or {})
    clash = _RESERVED & extra.keys()
    if clash:
        raise ValueError(f"extra fields {sorted(clash)} would overwrite ttt_state fields")
    inits = learned_inits(model)
    stamp = time.time() if now is None else now
    records = []
    for layer_idx, layer in ttt_cache_layers(cache):
        fields = layer_record(layer_idx, layer, inits.get(layer_idx))
        if fields is not None:
            records.append({"schema": SCHEMA_VERSION, "step": step, "time": stamp, **fields, **extra})
    return records


class TTTStateLogger:
    """Writes `RUN_DIR/ttt_state.jsonl`: every `interval` steps, one line per TTT layer of the cache.

    `model` (optional) lets the logger report the learned init's norms beside the runtime ones and log a layer
    whose state is still the init (fresh or fully reset cache)."""

    def __init__(self, run_dir: str | os.PathLike, interval: int = DEFAULT_STATS_INTERVAL,
                 model: torch.nn.Module | None = None) -> None:
        if interval < 1:
            raise ValueError("interval must be >= 1")
        self.path = Path(run_dir) / TTT_STATE_FILE
        self.interval = interval
        self.model = model
        self.writer = JsonlWriter(self.path)

    def wants(self, step: int) -> bool:
        """True on the steps that are logged: pass `collect_ttt_stats=True` to the model on them."""
        return step % self.interval == 0

    def log(self, step: int, cache: Any, extra: dict[str, Any] | None = None,
            force: bool = False) -> list[dict[str, Any]]:
        """Write the records of this step (when `wants(step)` or `force`); returns what was written."""
        if not (force or self.wants(step)):
            return []
        records = collect_ttt_records(cache, step, self.model, extra)
        self.writer.write_many(records)
        return records

    __call__ = log

    def drop_after(self, step: int) -> int:
        """Forget lines after `step` (resuming from a checkpoint at `step` repeats them)."""
        return self.writer.drop_where(lambda record: _step_of(record) > step)


class MetricsLogger:
    """Writes `RUN_DIR/metrics.jsonl`: one line per optimizer step, and a last `finished` line."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = JsonlWriter(self.path)

    def log(self, step: int, loss: float, lr: float | None = None, tokens_per_s: float | None = None,
            **fields: Any) -> dict[str, Any]:
        record = {"schema": SCHEMA_VERSION, "step": step, "time": time.time(), "loss": float(loss)}
        if lr is not None:
            record["lr"] = float(lr)
        if tokens_per_s is not None:
            record["tokens_per_s"] = float(tokens_per_s)
        record.update({key: value for key, value in fields.items() if value is not None})
        self.writer.write(record)
        return record

    def finish(self, step: int) -> None:
        """Mark the run complete (the monitor then stops expecting steps and shows no stall alert)."""
        self.writer.write({"schema": SCHEMA_VERSION, "step": step, "time": time.time(), "event": FINISHED_EVENT})

    def drop_after(self, step: int) -> int:
        """Forget lines after `step` and the `finished` mark, before resuming from a checkpoint at `step`."""
        return self.writer.drop_where(
            lambda record: _step_of(record) > step or record.get("event") == FINISHED_EVENT)


def _step_of(record: dict[str, Any]) -> int:
    step = record.get("step")
    return step if isinstance(step, int) else -1
