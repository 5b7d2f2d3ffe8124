"""The TTT settings of a TTT Llama: their names, defaults and validation in one typed place.

The settings travel on the model's (serialised) `LlamaConfig` under the attribute names of `TTTConfig`'s fields
(`ttt_layers`, `ttt_type`, ... `ttt_checkpoint_group_size`), so saved checkpoints keep loading; an attribute that is
missing or None takes the default here. `TTTConfig.from_model_config(config)` reads them, `apply_to(config)` writes
them back with the defaults filled in, `validate()` is the one check (`prepare_ttt_config` and the TTT layers call
it; the presets turn its error into a `UserError` for the CLI).

Pure Python on purpose: `omnittt.config` (the CLI's settings, which must not import torch) takes its model keys from
here.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

TTT_TYPES = ("mlp", "linear")
TTT_MODES = ("replace", "gated")
# The inner learning rate `ttt_base_lr` when the config leaves it None (Sun et al. 2024: 0.1 MLP, 1.0 Linear).
DEFAULT_TTT_BASE_LR = {"mlp": 0.1, "linear": 1.0}


@dataclass
class TTTConfig:
    """The TTT attributes of a TTT Llama config, with their defaults."""

    ttt_layers: list[int] = field(default_factory=list)  # decoder layers that are TTT layers
    ttt_type: str = "mlp"  # "mlp" | "linear": the inner model
    ttt_mode: str = "replace"  # "replace": TTT instead of attention | "gated": attention + tanh-gated TTT
    ttt_mini_batch_size: int = 64  # b: tokens per inner gradient step
    ttt_base_lr: float | None = None  # None: DEFAULT_TTT_BASE_LR[ttt_type] (see `inner_lr`)
    attention_window: int | None = None  # None: full attention in the remaining attention layers
    ttt_use_gate: bool = False  # gelu output gate (the Mamba-backbone variant of the paper)
    ttt_gate_init: float = 0.1  # gated mode: tanh(ttt_gate) starts near 0
    ttt_checkpoint_group_size: int = 0  # mini-batches per rematerialised group in the op (0 = off)

    # The settings a carried TTT state (and the KV beside it) depends on: a saved conversation state only fits a
    # model that agrees on them (the others change how the state evolves, not what it is).
    STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "ttt_layers", "ttt_type", "ttt_mode", "ttt_mini_batch_size", "attention_window",
    )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config attribute names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """attribute name -> default (a fresh dict each call)."""
        return cls().to_dict()

    @classmethod
    def from_model_config(cls, config: Any) -> TTTConfig:
        """The TTT settings of a model config (any object with the attributes); a missing or None attribute takes
        the default, `ttt_layers` comes back sorted, as ints and without repeats. Values are not checked here."""
        values = {name: getattr(config, name, None) for name in cls.keys()}
        result = cls(**{name: value for name, value in values.items() if value is not None})
        result.ttt_layers = sorted({int(i) for i in result.ttt_layers})
        return result

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply_to(self, config: Any) -> Any:
        """Write every setting onto `config` (defaults included) and return it."""
        for name in self.keys():
            setattr(config, name, copy.copy(getattr(self, name)))
        return config

    @property
    def inner_lr(self) -> float:
        """The base inner learning rate: `ttt_base_lr`, or the default of `ttt_type`."""
        if self.ttt_base_lr is not None:
            return float(self.ttt_base_lr)
        return DEFAULT_TTT_BASE_LR[self.ttt_type]

    def validate(self, num_layers: int | None = None, distinct: bool = False) -> TTTConfig:
        """Raise ValueError on a setting outside its range; returns self. `ttt_layers` is checked against
        `num_layers` when given; `distinct` also refuses a layer listed twice (`from_model_config` drops repeats)."""
        if num_layers is not None:
            bad = [i for i in self.ttt_layers if not 0 <= int(i) < num_layers]
            if bad:
                raise ValueError(f"ttt_layers {bad} out of range for a model with {num_layers} layers "
                                 f"(valid: 0..{num_layers - 1})")
        if distinct and len({int(i) for i in self.ttt_layers}) != len(self.ttt_layers):
            raise ValueError(f"ttt_layers {self.ttt_layers} list a layer more than once")
        if self.ttt_type not in TTT_TYPES:
            raise ValueError(f"ttt_type must be one of {TTT_TYPES}, got {self.ttt_type!r}")
        if self.ttt_mode not in TTT_MODES:
            raise ValueError(f"ttt_mode must be one of {TTT_MODES}, got {self.ttt_mode!r}")
        if int(self.ttt_mini_batch_size) < 1:
            raise ValueError(f"ttt_mini_batch_size must be >= 1, got {self.ttt_mini_batch_size}")
        window = self.attention_window
        if window is not None and int(window) < 2:
            raise ValueError(f"attention_window must be >= 2 positions, got {window}")
        return self
