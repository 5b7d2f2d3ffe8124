"""Numerical health: NaN/Inf and exploding values in one tensor, and across a model's parameters, gradients and
the runtime TTT state of a cache.

The model-level check is built for every step of a large model: one norm per tensor (no boolean copies), a single
device sync, and an exact NaN/Inf count only for the tensors whose norm is not finite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

EXPLODE_THRESHOLD = 1e4  # |x| above this in a TTT state or weight is treated as exploding


def dtype_name(dtype: torch.dtype | str) -> str:
    """`torch.bfloat16` -> "bfloat16" (the spelling of the JSONL files and reports)."""
    return str(dtype).removeprefix("torch.")


class NumericalError(RuntimeError):
    """Raised when a checked tensor holds NaN/Inf and the caller asked to fail."""


@dataclass
class TensorHealth:
    name: str
    dtype: str
    numel: int
    nan_count: int
    inf_count: int
    max_abs: float  # over the finite values (0.0 when there are none)
    is_exploding: bool

    @property
    def has_nan(self) -> bool:
        return self.nan_count > 0

    @property
    def has_inf(self) -> bool:
        return self.inf_count > 0

    @property
    def finite(self) -> bool:
        return not (self.nan_count or self.inf_count)

    def describe(self) -> str:
        parts = []
        if self.nan_count:
            parts.append(f"{self.nan_count} NaN")
        if self.inf_count:
            parts.append(f"{self.inf_count} Inf")
        if self.is_exploding:
            parts.append(f"max |x| {self.max_abs:.3g}")
        return f"{self.name}: " + (", ".join(parts) if parts else "ok") + f" ({self.dtype}, {self.numel} values)"


def check_numerical_health(
    tensor: torch.Tensor,
    name: str,
    raise_on_nan: bool = False,
    raise_on_inf: bool = False,
    explode_threshold: float = EXPLODE_THRESHOLD,
) -> TensorHealth:
    """Count NaN/Inf values and the largest finite magnitude of `tensor`; raise `NumericalError` naming `name`
    when asked to."""
    data = tensor.detach()
    nan_count = int(torch.isnan(data).sum()) if data.is_floating_point() or data.is_complex() else 0
    inf_count = int(torch.isinf(data).sum()) if data.is_floating_point() or data.is_complex() else 0
    if data.numel() == 0:
        max_abs = 0.0
    elif nan_count or inf_count:
        finite = data[torch.isfinite(data)]
        max_abs = float(finite.abs().max()) if finite.numel() else 0.0
    else:
        max_abs = float(data.abs().max())
    health = TensorHealth(
        name=name, dtype=dtype_name(data.dtype), numel=data.numel(), nan_count=nan_count,
        inf_count=inf_count, max_abs=max_abs, is_exploding=max_abs > explode_threshold,
    )
    if (raise_on_nan and nan_count) or (raise_on_inf and inf_count):
        raise NumericalError(f"non-finite values in {health.describe()}")
    return health


@dataclass
class HealthIssue:
    kind: str  # "parameter" | "gradient" | "state"
    name: str  # parameter name, or "layer 3 W1" for a runtime state
    nan_count: int
    inf_count: int
    layer: int | None = None

    def describe(self) -> str:
        counts = ", ".join(p for p in (f"{self.nan_count} NaN" if self.nan_count else "",
                                       f"{self.inf_count} Inf" if self.inf_count else "") if p)
        return f"{self.kind} {self.name}: {counts}"


@dataclass
class ModelHealth:
    issues: list[HealthIssue] = field(default_factory=list)
    checked: int = 0  # tensors checked

    @property
    def ok(self) -> bool:
        return not self.issues

    def describe(self) -> str:
        if self.ok:
            return f"all {self.checked} tensors finite"
        return "; ".join(issue.describe() for issue in self.issues)

    def raise_if_unhealthy(self) -> None:
        if not self.ok:
            raise NumericalError(f"non-finite values: {self.describe()}")


def runtime_states(cache: Any) -> Iterator[tuple[int, str, torch.Tensor]]:
    """(layer index, state name, tensor) for every runtime TTT state tensor of a `TTTCache`."""
    for layer_idx, layer in ttt_cache_layers(cache):
        for key, tensor in layer.tensors("state").items():
            yield layer_idx, key, tensor


def ttt_cache_layers(cache: Any) -> Iterator[tuple[int, Any]]:
    """(layer index, TTTCacheLayer) pairs: `cache.ttt_layers()` when the cache offers it."""
    if cache is None:
        return
    yield from cache.ttt_layers()


def _nonfinite_norms(tensors: list[torch.Tensor]) -> list[int]:
    """Indices of the tensors whose float32 norm is not finite, with one device sync per device."""
    by_device: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    bad: list[int] = []
    for indices in by_device.values():
        norms = torch.stack([torch.linalg.vector_norm(tensors[i].detach(), dtype=torch.float32) for i in indices])
        flags = (~torch.isfinite(norms)).cpu().tolist()
        bad.extend(i for i, flag in zip(indices, flags, strict=True) if flag)
    return sorted(bad)


def check_model_health(
    model: torch.nn.Module | None = None,
    cache: Any = None,
    parameters: bool = True,
    gradients: bool = True,
) -> ModelHealth:
    """NaN/Inf in a model's parameters and gradients and in the runtime TTT state of `cache`."""
    entries: list[tuple[str, str, torch.Tensor, int | None]] = []
    if model is not None:
        for name, param in model.named_parameters():
            if parameters:
                entries.append(("parameter", name, param, None))
            if gradients and param.grad is not None:
                entries.append(("gradient", name, param.grad, None))
    for layer_idx, key, tensor in runtime_states(cache):
        entries.append(("state", f"layer {layer_idx} {key}", tensor, layer_idx))
    report = ModelHealth(checked=len(entries))
    for index in _nonfinite_norms([entry[2] for entry in entries]):
        kind, name, tensor, layer = entries[index]
        data = tensor.detach()
        nan_count, inf_count = int(torch.isnan(data).sum()), int(torch.isinf(data).sum())
        if nan_count or inf_count:  # a finite tensor can still overflow its float32 norm: not an issue
            report.issues.append(HealthIssue(kind, name, nan_count, inf_count, layer))
    return report

