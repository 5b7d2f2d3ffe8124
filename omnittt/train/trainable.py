"""What trains: trainable subsets of the speech model (`set_trainable`) and its optimiser parameter groups
(`parameter_groups`), by the groups of `omnittt.core.presets.parameter_group` (ttt_init, ttt, projector, llm,
encoder)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from omnittt.core.audio_objective import AUDIO_HEAD
from omnittt.core.modeling_omnittt import OmniTTTForCausalLM
from omnittt.core.presets import GROUPS, parameter_group
from omnittt.errors import UserError

# The audio objective's head (omnittt/core/audio_objective.py) is a group of its own here: it trains only when
# named (`--train ttt,audio_head`), so a fine-tune that names the usual groups leaves it as pre-training made it.
AUDIO_HEAD_GROUP = AUDIO_HEAD
TRAIN_GROUPS = (*GROUPS, AUDIO_HEAD_GROUP)
# Spec words: a group name, "ttt" also meaning its inner-state init, or "all".
_ALIASES = {"ttt": ("ttt_init", "ttt"), "all": TRAIN_GROUPS, "none": ()}


def train_group(model: OmniTTTForCausalLM, name: str) -> str:
    """The optimiser group of parameter `name`: the model's (`parameter_group`), or the audio head."""
    return AUDIO_HEAD_GROUP if name.startswith(AUDIO_HEAD + ".") else parameter_group(model, name)


def _parse_spec(spec: str | Iterable[str]) -> set[str]:
    words = [w.strip() for w in (spec.split(",") if isinstance(spec, str) else spec) if w.strip()]
    groups: set[str] = set()
    for word in words:
        if word in _ALIASES:
            groups.update(_ALIASES[word])
        elif word in TRAIN_GROUPS:
            groups.add(word)
        else:
            raise UserError(
                f"unknown trainable group {word!r}",
                fix=f"use a comma list of: {', '.join(TRAIN_GROUPS)}, ttt (both TTT groups), all, none",
            )
    return groups


def set_trainable(model: OmniTTTForCausalLM, spec: str | Iterable[str]) -> dict[str, int]:
    """Train exactly the groups in `spec` (e.g. "ttt,projector", "all", "none"); everything
    else is frozen. Returns trainable parameter counts per group."""
    chosen = _parse_spec(spec)
    counts = dict.fromkeys(TRAIN_GROUPS, 0)
    for name, param in model.named_parameters():
        group = train_group(model, name)
        param.requires_grad_(group in chosen)
        if group in chosen:
            counts[group] += param.numel()
    return counts


def parameter_groups(
    model: OmniTTTForCausalLM,
    train: str | Iterable[str] = "ttt,projector",
    lrs: dict[str, float] | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups for the trained subset (also applied with `set_trainable`): one group per
    name in GROUPS that trains, with its own `lr` when `lrs` names it (`"ttt"` sets both TTT groups). Biases,
    norms and the TTT inner-state init get no weight decay."""
    set_trainable(model, train)
    lr_for: dict[str, float] = {}
    for key, value in (lrs or {}).items():
        for group in _ALIASES.get(key, (key,)):
            if group not in TRAIN_GROUPS:
                raise UserError(f"unknown parameter group {key!r} in learning rates", fix=f"use {TRAIN_GROUPS}")
            lr_for[group] = value
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = train_group(model, name)
        decay = weight_decay > 0 and param.ndim >= 2 and group != "ttt_init"
        buckets.setdefault((group, decay), []).append(param)
    result = []
    for group in TRAIN_GROUPS:
        for decay in (True, False):
            params = buckets.get((group, decay))
            if not params:
                continue
            entry: dict[str, Any] = {
                "name": group if not decay else f"{group}_decay",
                "group": group,
                "params": params,
                "weight_decay": weight_decay if decay else 0.0,
            }
            if group in lr_for:
                entry["lr"] = lr_for[group]
            result.append(entry)
    if not result:
        spec = train if isinstance(train, str) else ",".join(train)
        raise UserError(f"nothing to train: --train {spec!r} selects no parameter of this model",
                        fix="choose groups the model has, e.g. --train ttt,projector or --train llm,projector")
    return result
