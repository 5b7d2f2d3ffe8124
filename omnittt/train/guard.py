"""The NaN/Inf guard: a window whose loss, gradients or carried TTT state is not finite is skipped (no optimizer
step, the rest of its batch dropped because the state is poisoned) and logged; too many in a row stop the run
with a message that says what to try."""

from __future__ import annotations

import math
from typing import Any

import torch

from omnittt.errors import UserError
from omnittt.inspect.health import check_model_health


class TrainingDivergedError(UserError):
    """Stopped after too many non-finite steps in a row."""


def nonfinite_problems(loss: torch.Tensor | float | None = None, model: torch.nn.Module | None = None,
                       cache: Any = None) -> list[str]:
    """What is not finite: the loss, any gradient of `model`, any runtime TTT state in `cache`. Empty = healthy."""
    problems = []
    if loss is not None and not math.isfinite(float(loss)):
        problems.append(f"loss is {float(loss)}")
    if model is not None or cache is not None:
        health = check_model_health(model, cache=cache, parameters=False, gradients=model is not None)
        problems.extend(issue.describe() for issue in health.issues[:5])
        if len(health.issues) > 5:
            problems.append(f"... {len(health.issues) - 5} more")
    return problems


class NonFiniteGuard:
    """Counts skipped steps; `record_skip` raises `TrainingDivergedError` at `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def record_ok(self) -> None:
        self.consecutive = 0

    def record_skip(self, step: int, problems: list[str]) -> None:
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise TrainingDivergedError(
                f"stopped at step {step}: {self.consecutive} steps in a row had non-finite values "
                f"(last: {'; '.join(problems)})",
                fix="lower the learning rate (--lr) or ttt_base_lr, check the data with omnittt validate, "
                    "and resume from the last checkpoint (no checkpoint holds non-finite weights)")

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
