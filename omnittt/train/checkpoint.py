"""Checkpoints with no pickle anywhere (DESIGN.md "train: the run directory").

    checkpoints/step_N/model.safetensors (or sharded + index), config.json   weights via save_pretrained
                       tokenizer files, preprocessor_config.json             so the folder is self-contained
                       optimizer.pt, scheduler.pt, rng_state.pt              torch.save of tensors / plain containers
                       trainer_state.json                                    step, stage, data position (written last)

Commit order: everything into a temp folder, rename it to `step_N`, then write `latest` atomically, then prune to
the newest K. A crash at any point leaves `latest` naming a complete checkpoint. Every `.pt` file here loads with
`torch.load(weights_only=True)`, and weights that are not finite are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.errors import UserError
from omnittt.inspect.health import check_model_health
from omnittt.train.faults import fault_point
from omnittt.train.rng import capture_rng
from omnittt.train.run_dir import TRAINER_STATE_FILE, RunDir

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"


class NonFiniteWeightsError(RuntimeError):
    """Refusing to write a checkpoint whose weights hold NaN/Inf."""


def save_checkpoint(
    run: RunDir,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_pretrained: Iterable[Any] = (),
    keep: int | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write `checkpoints/step_<step>/` atomically and point `latest` at it. `extra_pretrained`: objects with
    `save_pretrained(dir)` (tokenizer, feature extractor) stored beside the weights."""
    health = check_model_health(model, gradients=False)
    if not health.ok:
        raise NonFiniteWeightsError(f"not writing checkpoint step_{step}: {health.describe()}")
    run.create()
    target = run.checkpoint_dir(step)
    if target.exists():  # an uncommitted copy from a crash before `latest` was written (see RunDir.remove_stale)
        latest = run.latest_checkpoint()
        if latest is not None and latest.resolve() == target.resolve():
            raise FileExistsError(f"{target} is the committed latest checkpoint; refusing to overwrite it")
        shutil.rmtree(target)
    hf_logging.disable_progress_bar()  # one checkpoint = one line of ours, not a shard progress bar per save
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        for item in extra_pretrained:
            if item is not None:
                item.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        torch.save(capture_rng(), tmp / RNG_FILE)
        atomic_write_json(tmp / TRAINER_STATE_FILE, {**trainer_state, "step": step})
        _fsync_tree(tmp)
        fault_point("checkpoint:after_temp_write", step)
    fault_point("checkpoint:after_rename", step)
    run.write_latest(target)
    fault_point("checkpoint:after_latest", step)
    if keep is not None:
        run.prune(keep)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE_FILE).read_text())


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict from `model.safetensors` or its sharded index."""
    index = checkpoint / WEIGHTS_INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (checkpoint / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise UserError(f"{checkpoint}: no {WEIGHTS_FILE}", fix="pass a checkpoint folder written by omnittt train")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(checkpoint / name))
    return state


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Copy the checkpoint's weights into `model` (same architecture). Keys that save_pretrained leaves out
    because they are tied to a saved parameter are accepted; any other missing or unexpected key is an error."""
    state = load_weights(checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = model.state_dict(keep_vars=True)
    aliases: dict[int, set[str]] = {}
    for name, tensor in own.items():
        aliases.setdefault(tensor.data_ptr(), set()).add(name)
    untied = [key for key in missing if not aliases[own[key].data_ptr()] & state.keys()]
    if untied or unexpected:
        raise UserError(
            f"{checkpoint}: weights do not match the model (missing {untied[:3]}, unexpected {list(unexpected)[:3]})",
            fix="build the model with the checkpoint's configuration (its config.json)")


def load_torch_state(checkpoint: Path, name: str) -> Any:
    """A `.pt` state of the checkpoint, loaded without executing pickled code."""
    return torch.load(checkpoint / name, weights_only=True, map_location="cpu")
