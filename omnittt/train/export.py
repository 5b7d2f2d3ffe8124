"""`omnittt export`: a run's checkpoint as a Hugging Face `save_pretrained` directory (weights in safetensors,
sharded when large; config.json; tokenizer; feature-extractor config; the training configuration for
provenance), loadable with `OmniTTTForCausalLM.from_pretrained`, `omnittt.core.loading.load_model`, chat and eval.
Only the model goes out: optimizer, schedule, RNG and trainer state stay in the run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omnittt.atomic import atomic_directory
from omnittt.errors import UserError
from omnittt.train.checkpoint import read_trainer_state
from omnittt.train.run_dir import CHECKPOINT_PREFIX, find_run_dir, resolve_checkpoint

# what a checkpoint holds beside the weights that an exported model also needs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
TRAINING_CONFIG_FILE = "training_config.yaml"


def export_checkpoint(run: str | os.PathLike, to: str | os.PathLike, checkpoint: str = "latest",
                      max_shard_size: str = "5GB", overwrite: bool = False) -> dict[str, Any]:
    """Write the export to `to` atomically; returns what was exported (source checkpoint, step, files)."""
    from omnittt.core.loading import load_model

    source = _checkpoint(Path(run), checkpoint)
    target = Path(to)
    if target.exists():
        if not overwrite:
            raise UserError(f"{target} already exists", fix="choose another --to, or pass --overwrite")
        shutil.rmtree(target)
    model = load_model(source).model
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        for name in (*TOKENIZER_FILES, FEATURE_EXTRACTOR_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        if not (tmp / "tokenizer_config.json").is_file() or not (tmp / FEATURE_EXTRACTOR_FILE).is_file():
            raise UserError(f"{source}: no tokenizer or feature-extractor config beside the weights",
                            fix="export a checkpoint written by omnittt train")
        try:
            config = find_run_dir(source).config_path
            shutil.copy2(config, tmp / TRAINING_CONFIG_FILE)
        except UserError:
            pass  # a bare checkpoint folder outside its run: the model is still complete
    return {"checkpoint": str(source), "step": read_trainer_state(source).get("step"), "to": str(target),
            "files": sorted(p.name for p in target.iterdir())}


def _checkpoint(run: Path, checkpoint: str) -> Path:
    if checkpoint == "latest":
        return resolve_checkpoint(run)
    name = checkpoint if checkpoint.startswith(CHECKPOINT_PREFIX) else f"{CHECKPOINT_PREFIX}{checkpoint}"
    path = find_run_dir(run).checkpoints / name
    if not path.is_dir():
        raise UserError(f"{run}: no checkpoint {name}", fix="pass latest, a step number or a step_N folder name")
    return resolve_checkpoint(path)
