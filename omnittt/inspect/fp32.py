"""FP32 enforcement for the TTT inner state.

The inner loop accumulates many small updates into W1 b1 W2 b2; in bfloat16 (8 bits of mantissa) those updates
round away and the state stops learning or blows up. The learned initial parameters and the runtime state in the
cache must therefore stay float32 whatever the rest of the model is cast to. `FP32Enforcer` finds the TTT modules
(class attribute `is_ttt_layer = True`), reports every tensor below float32 (float16, bfloat16, ...) with its layer,
and with `auto_fix` casts it back; float64 (precision tests) is left alone. `attach()` adds forward hooks that do the
same on every call. The model keeps the state float32 by itself (`omnittt.core.ttt_layer.FP32_PARAMS` says how);
this is the check that it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from omnittt.errors import UserError
from omnittt.inspect.health import dtype_name, ttt_cache_layers
from omnittt.inspect.schemas import FULL_PRECISION_DTYPES, INNER_PARAM_NAMES


class FP32Error(RuntimeError):
    """Raised by a strict enforcer when TTT state is not float32 and auto_fix is off."""


@dataclass
class DtypeDrift:
    layer: int | None  # decoder layer index (the TTT module's `layer_idx`)
    where: str  # "parameter" | "state" | "grads" (a pending partial mini-batch in the cache)
    name: str  # "W1", "ttt_norm_weight", ...
    dtype: str  # the dtype found
    module: str = ""  # qualified module name for parameters, e.g. "model.layers.3.self_attn"
    fixed: bool = False

    def describe(self) -> str:
        place = f"layer {self.layer}" if self.layer is not None else self.module
        fixed = " (fixed)" if self.fixed else ""
        return f"{place} {self.where} {self.name} is {self.dtype}{fixed}"


@dataclass
class FP32Report:
    drifts: list[DtypeDrift] = field(default_factory=list)
    layers: list[int | None] = field(default_factory=list)  # TTT layers checked
    parameters_checked: int = 0
    states_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was found in a dtype other than float32 (fixed drifts still count as found)."""
        return not self.drifts

    @property
    def bad_layers(self) -> list[int | None]:
        return sorted({d.layer for d in self.drifts}, key=lambda x: (x is None, x if x is not None else 0))

    def describe(self) -> str:
        if self.ok:
            return (f"FP32 ok: {self.parameters_checked} parameters and {self.states_checked} state tensors of "
                    f"{len(self.layers)} TTT layers are float32")
        return "FP32 drift: " + "; ".join(d.describe() for d in self.drifts)


def find_ttt_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) for every module whose class sets `is_ttt_layer = True`."""
    return [(name, module) for name, module in model.named_modules()
            if getattr(type(module), "is_ttt_layer", False)]


class FP32Enforcer:
    """Verify (and with `auto_fix` restore) float32 for every TTT inner-state parameter and runtime state."""

    def __init__(self, model: torch.nn.Module, auto_fix: bool = True, strict: bool = False) -> None:
        self.model = model
        self.auto_fix = auto_fix
        self.strict = strict  # raise FP32Error on drift that is not fixed
        self.modules = find_ttt_modules(model)
        if not self.modules:
            raise UserError(
                f"{type(model).__name__} has no TTT layers (no module with is_ttt_layer = True)",
                fix="convert the model with omnittt.core.convert_llama_to_ttt or load a TTT checkpoint",
            )
        self.history: list[DtypeDrift] = []  # every drift the hooks found since attach()
        self._handles: list[Any] = []

    @property
    def layer_indices(self) -> list[int | None]:
        return [getattr(module, "layer_idx", None) for _, module in self.modules]

    def verify(self, cache: Any = None) -> FP32Report:
        """Check the modules' inner parameters and, when given, the runtime state of a `TTTCache`."""
        report = FP32Report(layers=self.layer_indices)
        for name, module in self.modules:
            self._check_parameters(name, module, report)
        self._check_cache(cache, report)
        self._finish(report)
        return report

    def _check_parameters(self, module_name: str, module: torch.nn.Module, report: FP32Report) -> None:
        layer = getattr(module, "layer_idx", None)
        for name in INNER_PARAM_NAMES:
            param = getattr(module, name, None)
            if not isinstance(param, torch.Tensor):
                continue
            report.parameters_checked += 1
            if dtype_name(param.dtype) in FULL_PRECISION_DTYPES:
                continue
            drift = DtypeDrift(layer, "parameter", name, dtype_name(param.dtype), module=module_name)
            if self.auto_fix:
                with torch.no_grad():
                    param.data = param.data.float()
                if param.grad is not None:
                    param.grad = param.grad.float()
                drift.fixed = True
            report.drifts.append(drift)

    def _check_cache(self, cache: Any, report: FP32Report) -> None:
        for layer_idx, layer in ttt_cache_layers(cache):
            for where in ("state", "grads"):
                for name, tensor in layer.tensors(where).items():
                    report.states_checked += 1
                    if dtype_name(tensor.dtype) in FULL_PRECISION_DTYPES:
                        continue
                    drift = DtypeDrift(layer_idx, where, name, dtype_name(tensor.dtype))
                    if self.auto_fix:
                        layer.to_float32(where, name)
                        drift.fixed = True
                    report.drifts.append(drift)

    def _finish(self, report: FP32Report) -> None:
        if self.strict and any(not d.fixed for d in report.drifts):
            raise FP32Error(report.describe())

    # hooks ------------------------------------------------------------------------------------------------

    def attach(self) -> FP32Enforcer:
        """Before every TTT module's forward check its parameters and the state it is about to read from the cache;
        after it, the state it wrote. Drifts found go to `history` (fixed when auto_fix, raised when strict)."""
        self.detach()
        for name, module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook, with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FP32Enforcer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _pre_hook(self, module_name: str):
        def hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            report = FP32Report()
            self._check_parameters(module_name, module, report)
            self._check_module_state(module, kwargs, report)
            self._record(report)

        return hook

    def _post_hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        report = FP32Report()
        self._check_module_state(module, kwargs, report)
        self._record(report)

    def _check_module_state(self, module: torch.nn.Module, kwargs: dict[str, Any], report: FP32Report) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the name depends on the transformers release
        layer_idx = getattr(module, "layer_idx", None)
        if cache is not None and layer_idx is not None:
            self._check_cache(_OneLayer(cache, layer_idx), report)

    def _record(self, report: FP32Report) -> None:
        self.history.extend(report.drifts)
        self._finish(report)


class _OneLayer:
    """A view of one TTT layer of a cache, so a hook checks only the state of its own module."""

    def __init__(self, cache: Any, layer_idx: int) -> None:
        self._pairs = [(i, layer) for i, layer in ttt_cache_layers(cache) if i == layer_idx]

    def ttt_layers(self):
        return iter(self._pairs)
