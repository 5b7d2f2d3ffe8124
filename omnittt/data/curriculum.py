"""THE curriculum stage table (read by `omnittt curriculum`, the loader and training) and the scheduler that
walks it.

Lengths are LLM positions (speech spliced in, alignment padding included), never text tokens: the seed
project filtered on text tokens only, so its 8k+ stages were empty. Every stage has a minimum as well as a
maximum; conversations shorter than a stage's minimum are packed into sessions (`omnittt.data.sessions`).
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


class CurriculumScheduler:
    """Walks the stage table in order. Moving to any stage other than the next one (forward jumps, or going
    back) needs `allow_skip=True`, so a resumed run cannot silently jump over a stage."""

    def __init__(self, stages: Sequence[Stage] | None = None, start: str | None = None,
                 allow_skip: bool = False) -> None:
        self.stages = tuple(STAGES if stages is None else stages)
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        self.index = 0
        if start is not None:
            self.set_stage(start, allow_skip=allow_skip)

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.stages) - 1

    def advance(self) -> Stage:
        """Go to the next stage; at the last one this is an error (training is done)."""
        if self.is_last:
            raise UserError(f"stage {self.stage.name} is the last curriculum stage", fix="training is complete")
        self.index += 1
        return self.stage

    def set_stage(self, name: str, allow_skip: bool = False) -> Stage:
        target = self.stages.index(get_stage(name, self.stages))
        if target not in (self.index, self.index + 1) and not allow_skip:
            raise UserError(
                f"moving from stage {self.stage.name} to {name} skips the curriculum order",
                fix="train the stages in order, or pass --allow-skip to do it anyway",
            )
        self.index = target
        return self.stage

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage.name, "index": self.index, "stages": stage_names(self.stages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("stages") != stage_names(self.stages):
            raise UserError(
                f"the checkpoint's curriculum stages {state.get('stages')} differ from {stage_names(self.stages)}",
                fix="resume with the stage table the run was started with",
            )
        self.index = self.stages.index(get_stage(state["stage"], self.stages))
