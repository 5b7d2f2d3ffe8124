"""Checkpoints with no pickle anywhere (docs/architecture.md "The run directory").

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
import pickle
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.core.modeling_omnittt import OmniTTTConfig, OmniTTTForCausalLM
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


def _read_json(path: Path, fix: str, missing: str = "missing") -> Any:
    """The JSON in `path`, or a one-line error naming the file when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}", fix=fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: corrupt, not valid JSON ({error})", fix=fix) from None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """`trainer_state.json`, or a one-line error naming the file when it is missing, unreadable or not a trainer
    state (a JSON object with an integer `step`)."""
    path = Path(checkpoint) / TRAINER_STATE_FILE
    fix = "resume from another checkpoint (write its folder name into checkpoints/latest), or start over"
    state = _read_json(path, fix, missing="missing (an incomplete checkpoint)")
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise UserError(f"{path}: not a trainer state (no integer step)", fix=fix)
    return state


def weight_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's safetensors files: `model.safetensors`, or the shards its index names."""
    checkpoint = Path(checkpoint)
    index = checkpoint / WEIGHTS_INDEX_FILE
    fix = "pass a checkpoint folder written by omnittt train"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{index}: corrupt weight index ({error.__class__.__name__}: {error})", fix=fix) from None
        return [checkpoint / name for name in names]
    if (checkpoint / WEIGHTS_FILE).is_file():
        return [checkpoint / WEIGHTS_FILE]
    raise UserError(f"{checkpoint}: no {WEIGHTS_FILE}", fix=fix)


def weight_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor, read from the safetensors headers (no tensor data is loaded). A
    truncated or corrupt file is a one-line error naming it: safetensors checks that the header is complete and
    that the tensors it describes cover the file exactly."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(checkpoint):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except FileNotFoundError:
            raise UserError(f"{path}: missing (named by {WEIGHTS_INDEX_FILE})",
                            fix="copy the whole checkpoint folder, or resume from another checkpoint") from None
        except (SafetensorError, OSError) as error:
            raise UserError(f"{path}: truncated or corrupt safetensors file ({error})",
                            fix="resume from another checkpoint (write its folder name into checkpoints/latest), "
                                "or copy the file again") from None
    return shapes


def check_weights_match_config(checkpoint: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """The stored tensors are exactly the ones the checkpoint's `config.json` builds (names and shapes; the model
    is built on the meta device, so nothing is allocated). Keys save_pretrained leaves out because they are tied
    to a stored parameter are accepted. Weights of another preset or size are a one-line error, instead of
    transformers re-initialising what does not fit."""
    checkpoint = Path(checkpoint)
    config_path = checkpoint / "config.json"
    fix = "build the model with the checkpoint's configuration: keep config.json and the weights of one save"
    raw = _read_json(config_path, fix)
    if not isinstance(raw, dict) or raw.get("model_type") != OmniTTTConfig.model_type:
        return  # not one of our checkpoints: core.loading reports what it can convert
    shapes = weight_shapes(checkpoint) if shapes is None else shapes
    config = OmniTTTConfig.from_pretrained(str(checkpoint), local_files_only=True)
    with torch.device("meta"):
        model = OmniTTTForCausalLM(config)
    own = model.state_dict(keep_vars=True)
    stored_ids = {id(own[key]) for key in shapes if key in own}
    missing = [key for key, tensor in own.items() if key not in shapes and id(tensor) not in stored_ids]
    unexpected = [key for key in shapes if key not in own]
    mismatched = [f"{key} {list(shapes[key])} vs {list(own[key].shape)}" for key in shapes
                  if key in own and tuple(own[key].shape) != shapes[key]]
    if missing or unexpected or mismatched:
        found = "; ".join(f"{what} {items[:3]}" + (f" and {len(items) - 3} more" if len(items) > 3 else "")
                          for what, items in (("missing", missing), ("unexpected", unexpected),
                                              ("other shapes (stored vs config)", mismatched)) if items)
        files = weight_files(checkpoint)
        named = files[0] if len(files) == 1 else checkpoint / WEIGHTS_INDEX_FILE
        raise UserError(f"{named}: the weights do not match the model {config_path.name} describes ({found})",
                        fix=fix)


RESUME_STATES = (OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE)


def verify_checkpoint(checkpoint: Path, require: Iterable[str] = (), states: Iterable[str] = ()) -> dict[str, Any]:
    """Check a checkpoint before anything uses it: `trainer_state.json` readable, the weights complete and of the
    model `config.json` describes, the `require`d files present, and the `.pt` `states` loadable as tensors and
    plain containers (`RESUME_STATES` for a resume). Returns the trainer state. Cheap: headers, JSON and the
    `.pt` structure with memory-mapped tensors; no weights are read."""
    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    check_weights_match_config(checkpoint, weight_shapes(checkpoint))
    for name in require:
        if not (checkpoint / name).is_file():
            raise UserError(f"{checkpoint}: no {name} beside the weights",
                            fix="use a checkpoint written by omnittt train (it saves the tokenizer and the "
                                "feature-extractor config with the weights)")
    for name in states:
        load_torch_state(checkpoint, name, mmap=True)
    return state


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict from `model.safetensors` or its sharded index."""
    weight_shapes(checkpoint)  # a truncated or corrupt file: one line naming it
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(checkpoint):
        state.update(load_file(path))
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


def load_torch_state(checkpoint: Path, name: str, mmap: bool = False) -> Any:
    """A `.pt` state of the checkpoint, loaded without executing pickled code (`weights_only=True`: tensors and
    plain containers only). A missing, truncated or corrupt file, or one holding anything else (a pickle payload),
    is a one-line error naming it; nothing in the file is executed. `mmap`: map the tensor data instead of reading
    it (a check of the file's structure that costs little for a large optimizer state)."""
    path = Path(checkpoint) / name
    fix = "resume from another checkpoint (write its folder name into checkpoints/latest), or start over"
    if not path.is_file():
        raise UserError(f"{path}: missing", fix=fix)
    try:  # torch.save writes a zip archive; only that format can be memory-mapped
        return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        detail = str(error).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if str(error) else ""
        raise UserError(f"{path}: holds something other than tensors and plain containers (refused, nothing in it "
                        f"was run: {detail or error.__class__.__name__})", fix=fix) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UserError(f"{path}: truncated or corrupt ({str(error).splitlines()[0] if str(error) else error!r})",
                        fix=fix) from None
