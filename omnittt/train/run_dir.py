"""The run directory (docs/architecture.md "The run directory"): where each file lives, the resolved configuration,
the model summary, and which checkpoint is the newest complete one.

    config.yaml  model_summary.json  metrics.jsonl  ttt_state.jsonl
    checkpoints/step_N/ ...   checkpoints/latest (name of the newest complete checkpoint, written last)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from omnittt.atomic import atomic_write_json, atomic_write_text
from omnittt.data.sources.librilight import INDEX_FILE as AUDIO_INDEX_FILE
from omnittt.data.store import MANIFEST_FILE
from omnittt.errors import UserError
from omnittt.inspect.schemas import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LATEST_CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_SUMMARY_FILE,
    TTT_STATE_FILE,
)

CHECKPOINT_PREFIX = "step_"
TRAINER_STATE_FILE = "trainer_state.json"  # written into a checkpoint last, so its presence marks it complete
_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
SPLITS_FILE = "splits.json"


def dataset_fingerprint(data: str | os.PathLike) -> str:
    """What identifies a processed dataset: the sha256 of its manifest (every conversation and its samples); for
    an audio index (long recordings, no manifest), of the index."""
    path = Path(data) / MANIFEST_FILE
    if not path.is_file() and (Path(data) / AUDIO_INDEX_FILE).is_file():
        path = Path(data) / AUDIO_INDEX_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class RunDir:
    """Paths and small files of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / CONFIG_FILE)
    summary_path = property(lambda self: self.path / MODEL_SUMMARY_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    ttt_state_path = property(lambda self: self.path / TTT_STATE_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINTS_DIR)
    latest_path = property(lambda self: self.path / CHECKPOINTS_DIR / LATEST_CHECKPOINT_FILE)

    def create(self) -> RunDir:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step}"

    # --- configuration --------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise UserError(f"{self.path}: no {CONFIG_FILE} (not a run directory)",
                            fix="pass the folder `omnittt train --run` wrote, e.g. runs/tiny")
        return yaml.safe_load(self.config_path.read_text()) or {}

    def record_split(self, stage: str, data: str | os.PathLike, train: list[str], validation: list[str]) -> None:
        """Record which source conversations of which dataset this stage trains on and holds out (`splits.json`,
        one entry per stage), so eval can score only what the run never saw."""
        splits = [s for s in self.read_splits() if s["stage"] != stage]
        splits.append({"stage": stage, "data": str(Path(data).resolve()), "data_fingerprint": dataset_fingerprint(data),
                       "train": sorted(train), "validation": sorted(validation)})
        atomic_write_json(self.path / SPLITS_FILE, splits)

    def read_splits(self) -> list[dict[str, Any]]:
        path = self.path / SPLITS_FILE
        if not path.is_file():
            return []
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path}: not valid JSON", fix="restore it, or train the run again") from None

    def trained_conversations(self, data: str | os.PathLike) -> set[str]:
        """Source conversation ids of the dataset `data` that any stage of this run trained on (none when the run
        trained on other data: same ids in another dataset are other conversations)."""
        splits = self.read_splits()
        if not splits:
            raise UserError(f"{self.path}: the run does not record what it trained on ({SPLITS_FILE})",
                            fix="score a dataset the run never saw, or drop --held-out")
        fingerprint = dataset_fingerprint(data)
        return {cid for split in splits if split["data_fingerprint"] == fingerprint for cid in split["train"]}

    def write_model_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    # --- checkpoints ----------------------------------------------------------------------------------
    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (a `trainer_state.json` inside), oldest first."""
        found = []
        if self.checkpoints.is_dir():
            for entry in self.checkpoints.iterdir():
                match = _STEP_RE.match(entry.name)
                if match and (entry / TRAINER_STATE_FILE).is_file():
                    found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names. A crash between a checkpoint's rename and the `latest` write leaves a
        newer complete folder that `latest` does not name yet: it is ignored (and replaced when training reaches
        that step again), so the run resumes from what was committed."""
        if not self.latest_path.is_file():
            return None
        name = self.latest_path.read_text().strip()
        path = self.checkpoints / name
        if not _STEP_RE.match(name) or not (path / TRAINER_STATE_FILE).is_file():
            raise UserError(f"{self.latest_path} names {name!r}, which is not a complete checkpoint",
                            fix=f"write the name of a folder under {self.checkpoints} into it")
        return path

    def write_latest(self, checkpoint: Path) -> None:
        atomic_write_text(self.latest_path, checkpoint.name + "\n")

    def remove_stale(self) -> list[Path]:
        """Temp folders of interrupted checkpoint writes (`.step_N.*.tmp`) and complete checkpoints newer than
        `latest` (a crash before `latest` was written). Returns what was removed."""
        removed: list[Path] = []
        if not self.checkpoints.is_dir():
            return removed
        latest = self.latest_checkpoint()
        latest_step = _step_of(latest) if latest is not None else -1
        for entry in self.checkpoints.iterdir():
            match = _STEP_RE.match(entry.name)
            stale_tmp = entry.name.startswith(f".{CHECKPOINT_PREFIX}") and entry.name.endswith(".tmp")
            uncommitted = match is not None and int(match.group(1)) > latest_step
            if entry.is_dir() and (stale_tmp or uncommitted):
                shutil.rmtree(entry)
                removed.append(entry)
        return removed

    def prune(self, keep: int) -> list[Path]:
        """Delete all but the newest `keep` complete checkpoints; never the one `latest` names."""
        latest = self.latest_checkpoint()
        complete = self.list_checkpoints()
        removed = []
        for _, path in complete[: max(0, len(complete) - keep)]:
            if latest is not None and path.resolve() == latest.resolve():
                continue
            shutil.rmtree(path)
            removed.append(path)
        return removed


def _step_of(path: Path) -> int:
    match = _STEP_RE.match(path.name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint folder")
    return int(match.group(1))


def find_run_dir(path: str | os.PathLike) -> RunDir:
    """A run directory given the run folder, its checkpoints folder or one checkpoint inside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory", fix="check the path (see `ls runs`)")
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / CONFIG_FILE).is_file() and (candidate / CHECKPOINTS_DIR).is_dir():
            return RunDir(candidate)
    raise UserError(f"{path}: not a run directory (no {CONFIG_FILE} and {CHECKPOINTS_DIR}/)",
                    fix="pass the folder `omnittt train --run` wrote, e.g. runs/tiny")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint path, or a run directory (its `latest`)."""
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run directory", fix="check the path")
    latest = find_run_dir(path).latest_checkpoint()
    if latest is None:
        raise UserError(f"{path}: the run has no complete checkpoint yet",
                        fix="train until the first --save-every step, or start over with omnittt train")
    return latest
