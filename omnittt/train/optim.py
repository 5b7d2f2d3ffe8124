"""The optimiser and learning-rate schedule: AdamW over named parameter groups, each with its own learning rate
(from `omnittt.train.trainable.parameter_groups`), linear warmup then cosine decay to `min_lr_ratio`.

The schedule is a callable object, so `LambdaLR.state_dict()` holds plain numbers only and the scheduler state
loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from omnittt.errors import UserError


class WarmupCosine:
    """lr multiplier at `step`: linear 1/warmup .. 1 over `warmup_steps`, then cosine down to `min_ratio` at
    `total_steps` (and flat after it)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    groups: Sequence[dict[str, Any]],
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `groups` (dicts with `params`, `lr` and a `name`); groups with no trainable parameter are
    dropped, and having none at all is an error (a run that trains nothing would only look slow)."""
    kept = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if params:
            kept.append({**group, "params": params, "initial_lr": group["lr"]})
    if not kept:
        names = ", ".join(str(g.get("name")) for g in groups) or "none"
        raise UserError(f"no trainable parameters (groups: {names})", fix="check --train (e.g. ttt,projector or all)")
    # decay only matrices: norms, biases and the TTT lr/token-index vectors keep their values
    split = []
    for group in kept:
        matrices = [p for p in group["params"] if p.ndim >= 2]
        vectors = [p for p in group["params"] if p.ndim < 2]
        for params, decay in ((matrices, weight_decay), (vectors, 0.0)):
            if params:
                split.append({**group, "params": params, "weight_decay": decay})
    return torch.optim.AdamW(split, betas=tuple(betas), eps=eps, foreach=False)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    min_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def group_summary(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Per group: name, learning rate, parameter tensors and count (for model_summary.json and the banner)."""
    rows: dict[str, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        row = rows.setdefault(str(group.get("name")), {"name": str(group.get("name")), "lr": group["initial_lr"],
                                                       "tensors": 0, "parameters": 0})
        row["tensors"] += len(group["params"])
        row["parameters"] += sum(p.numel() for p in group["params"])
    return list(rows.values())
