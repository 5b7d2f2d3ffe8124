"""THE curriculum stage table (read by `omnittt curriculum`, the loader and training) and the stage order.

Lengths are LLM positions (speech spliced in, alignment padding included), never text tokens (filtering on
text tokens alone leaves the 8k+ stages empty, since speech is most of every exchange). Every stage has a
minimum as well as a maximum; conversations shorter than a stage's minimum are packed into sessions
(`omnittt.data.sessions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from omnittt.errors import UserError


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: conversations / sessions of `min_positions..max_positions` LLM positions
    (inclusive), trained with `learning_rate`."""

    name: str
    min_positions: int
    max_positions: int
    learning_rate: float

    def __post_init__(self) -> None:
        if not 0 < self.min_positions <= self.max_positions:
            raise ValueError(f"stage {self.name}: need 0 < min_positions <= max_positions")

    def contains(self, positions: int) -> bool:
        return self.min_positions <= positions <= self.max_positions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Each stage starts at half its maximum, so that any two conversations below the minimum still fit under the
# maximum together (session packing never strands a group below the minimum while room is left). The learning
# rate falls as the context grows: longer sequences give larger, noisier gradients through the TTT state.
STAGES: tuple[Stage, ...] = (
    Stage("8k", 4_096, 8_192, 1e-4),
    Stage("16k", 8_192, 16_384, 7e-5),
    Stage("32k", 16_384, 32_768, 5e-5),
    Stage("64k", 32_768, 65_536, 3e-5),
)


def stage_names(stages: Sequence[Stage] | None = None) -> list[str]:
    return [stage.name for stage in (STAGES if stages is None else stages)]


def get_stage(name: str, stages: Sequence[Stage] | None = None) -> Stage:
    stages = STAGES if stages is None else stages
    for stage in stages:
        if stage.name == name:
            return stage
    raise UserError(f"unknown curriculum stage {name!r}", fix=f"use one of {', '.join(stage_names(stages))}")


def previous_stage_name(name: str, stages: Sequence[Stage] | None = None) -> str | None:
    """The stage trained before `name` (a run's stage N continues from stage N-1's final checkpoint); None for the
    first stage or a name outside the table."""
    names = stage_names(stages)
    return names[names.index(name) - 1] if name in names and names.index(name) > 0 else None
