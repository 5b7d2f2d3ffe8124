"""The one owner of opening a run: `open_run(path) -> OpenedRun`.

A path names a run directory, a checkpoint inside it, or a model folder (an `omnittt export`, a checkpoint copied
elsewhere, a released LLaMA-Omni layout). Opening it chooses the checkpoint (the committed `latest`, a step, or
the folder given), reads the run's settings (`config.yaml`) and the checkpoint's `trainer_state.json`, optionally
verifies the checkpoint before anything uses it (`verify_checkpoint`: weights complete and of the model
`config.json` describes, required files, `.pt` states of tensors only), and loads the model, the tokenizer saved
beside it and the feature extractor. `OpenedRun.check_data` is the dataset-vs-model check (tokenizer, vocabulary,
mini-batch alignment, speech positions) every caller applies.

Callers: `omnittt chat` (`omnittt.chat.loading.open_chat`), `omnittt eval` (`omnittt.evaluation.evaluate`),
`omnittt resume` and the next curriculum stage / transfer of `omnittt train` (`omnittt.train.setup`, and the
pre-check of `omnittt.cli.resume`), `omnittt export` (`omnittt.train.export`). This module uses core and, of
train, only what reads a run directory (`run_dir`, `checkpoint`); it imports none of cli, evaluation or chat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import WhisperFeatureExtractor
from transformers.utils import logging as hf_logging

from omnittt.core.features import build_feature_extractor
from omnittt.core.loading import load_model
from omnittt.core.tokenizer import load_tokenizer, tokenizer_fingerprint
from omnittt.errors import UserError
from omnittt.inspect.schemas import CONFIG_FILE
from omnittt.train.checkpoint import read_trainer_state, verify_checkpoint
from omnittt.train.run_dir import CHECKPOINT_PREFIX, TRAINER_STATE_FILE, RunDir, find_run_dir, resolve_checkpoint

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# what a path may name: "run": a run (its folder, its checkpoints folder or a checkpoint in it; `checkpoint`
# chooses in the run); "checkpoint": a checkpoint folder as given, or a run directory and `checkpoint`;
# "model": a model folder; "any": a run or checkpoint when it holds config.yaml or trainer_state.json, else a model
Accept = Literal["any", "run", "checkpoint", "model"]


@dataclass
class OpenedRun:
    """A run or model folder, opened: where the weights are, what the run recorded, and (once loaded) the model,
    the tokenizer saved beside it (None: none) and the feature extractor."""

    path: Path  # the folder the weights are read from: a checkpoint or a model directory
    run: RunDir | None = None  # the run directory the checkpoint belongs to (None: outside a run, or a model folder)
    trainer_state: dict[str, Any] | None = None  # the checkpoint's trainer_state.json (None: not a checkpoint)
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml ({} outside a run)
    tokenizer_required: bool = False  # load the tokenizer even without tokenizer_config.json (tokenizer.json alone)
    model: Any = None
    tokenizer: Any = None

    @property
    def step(self) -> int | None:
        return (self.trainer_state or {}).get("step")

    @property
    def settings(self) -> dict[str, Any]:
        """The training settings the run recorded ({} outside a run)."""
        return self.config.get("settings") or {}

    @property
    def dataset_settings(self) -> dict[str, Any]:
        """The settings of the dataset the run was trained on ({} when not recorded)."""
        return self.config.get("dataset") or {}

    def load(self, *, device: str | None = None, dtype: str | None = None,
             speech_encoder: str | os.PathLike | None = None) -> OpenedRun:
        """Read the model (`dtype` None: as stored) onto `device` (None: the CPU) and the tokenizer beside it.
        Quiet: one line of the caller's, not a weight-loading bar and the sub-config type notice of transformers."""
        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.model = load_model(self.path, speech_encoder=speech_encoder, dtype=dtype,
                                    device=device if device is not None else "cpu").model
            if self.tokenizer_required or (self.path / TOKENIZER_CONFIG_FILE).is_file():
                self.tokenizer = load_tokenizer(self.path)
        finally:
            hf_logging.set_verbosity(verbosity)
        return self

    def feature_extractor(self) -> Any:
        """The feature-extractor config saved beside the weights (its mel bins must be the speech encoder's), or
        the default one for the encoder's mel bins."""
        n_mels = int(self.model.config.speech_config.num_mel_bins)
        if not (self.path / FEATURE_EXTRACTOR_FILE).is_file():
            return build_feature_extractor(n_mels)
        extractor = WhisperFeatureExtractor.from_pretrained(str(self.path), local_files_only=True)
        if int(extractor.feature_size) != n_mels:
            raise UserError(f"{self.path / FEATURE_EXTRACTOR_FILE}: {extractor.feature_size} mel bins, the speech "
                            f"encoder takes {n_mels}",
                            fix="use the feature-extractor config the model was trained with")
        return extractor

    def check_data(self, dataset_settings: dict[str, Any], data_dir: str) -> None:
        """Refuse a dataset made for another model (`check_dataset_matches_model`)."""
        check_dataset_matches_model(dataset_settings, self.model, self.tokenizer, data_dir)

    def check_training_data(self) -> int | None:
        """The run recorded the dataset settings it was trained on: refuse a model/tokenizer that disagrees.
        Returns the alignment (mini-batch size) its samples were padded to, if recorded."""
        dataset = self.dataset_settings
        if dataset and self.run is not None:
            self.check_data(dataset, f"{self.run.path} (its training data)")
        mini_batch = dataset.get("mini_batch_size")
        return int(mini_batch) if mini_batch else None


def open_run(path: str | os.PathLike, checkpoint: str = "latest", *, accept: Accept = "any", verify: bool = False,
             require: Iterable[str] = (), states: Iterable[str] = (), require_tokenizer: bool = False,
             load: bool = True, device: str | None = None, dtype: str | None = None,
             speech_encoder: str | os.PathLike | None = None) -> OpenedRun:
    """Open a run directory, a checkpoint or a model folder (`accept` says which the path may be), each problem a
    one-line `UserError` naming the file. `checkpoint`: "latest", a step number or a `step_N` folder name.
    `verify` (implied by `require` / `states`): check the checkpoint before anything uses it
    (`verify_checkpoint`). `require_tokenizer`: refuse a folder without a tokenizer beside the weights. `load`:
    also read the model and tokenizer (else call `OpenedRun.load` when they are needed)."""
    path = Path(path)
    if accept == "any":
        if not path.exists():
            raise UserError(f"{path}: no such run, checkpoint or model directory", fix="check the path")
        in_run = (path / CONFIG_FILE).is_file() or (path / TRAINER_STATE_FILE).is_file()
        accept = "checkpoint" if in_run else "model"
    if accept == "model":
        if not path.is_dir():
            raise UserError(f"{path}: no such model directory", fix="pass an `omnittt export` folder or a checkpoint")
        opened = OpenedRun(path)
    else:
        folder = _run_checkpoint(path, checkpoint) if accept == "run" else _checkpoint(path, checkpoint)
        opened = OpenedRun(folder, run=_run_of(folder))
        opened.config = opened.run.read_config() if opened.run is not None else {}
    if verify or require or states:
        opened.trainer_state = verify_checkpoint(opened.path, require=require, states=states)
    elif accept != "model" or (opened.path / TRAINER_STATE_FILE).is_file():
        opened.trainer_state = read_trainer_state(opened.path)
    if require_tokenizer:
        if not (opened.path / TOKENIZER_CONFIG_FILE).is_file() and not (opened.path / "tokenizer.json").is_file():
            raise UserError(f"{opened.path}: no tokenizer beside the weights",
                            fix="use a checkpoint written by omnittt train or an omnittt export folder")
        opened.tokenizer_required = True
    return opened.load(device=device, dtype=dtype, speech_encoder=speech_encoder) if load else opened


def _checkpoint(path: Path, checkpoint: str) -> Path:
    """A checkpoint folder as given, or the run's `latest` / the named step of the run `path` is in."""
    if checkpoint == "latest":
        return resolve_checkpoint(path)
    name = checkpoint if checkpoint.startswith(CHECKPOINT_PREFIX) else f"{CHECKPOINT_PREFIX}{checkpoint}"
    folder = find_run_dir(path).checkpoints / name
    if not folder.is_dir():
        raise UserError(f"{path}: no checkpoint {name}", fix="pass latest, a step number or a step_N folder name")
    return resolve_checkpoint(folder)


def _run_checkpoint(path: Path, checkpoint: str) -> Path:
    """The checkpoint of the run `path` is in: its committed `latest`, or the named step."""
    if checkpoint != "latest":
        return _checkpoint(path, checkpoint)
    run = find_run_dir(path)
    latest = run.latest_checkpoint()
    if latest is None:
        raise UserError(f"{run.path}: no complete checkpoint to resume from",
                        fix="start it again with omnittt train ... --overwrite")
    return latest


def _run_of(checkpoint: Path) -> RunDir | None:
    """The run directory a checkpoint is in (None: a checkpoint folder copied out of its run)."""
    try:
        return find_run_dir(checkpoint)
    except UserError:
        return None


# -- dataset vs model -------------------------------------------------------------------------------------------
def check_dataset_matches_model(dataset_settings: dict[str, Any], model: Any, model_tokenizer: Any,
                                data_dir: str) -> None:
    """Refuse, in one line with the fix, a dataset made with another tokenizer, mini-batch size or speech
    positions mode than the model uses."""
    text = model.config.text_config
    fix_data = "re-run `omnittt preprocess` with the model's settings into a new --output"
    recorded = dataset_settings.get("tokenizer_fingerprint")
    if model_tokenizer is not None and recorded and recorded != tokenizer_fingerprint(model_tokenizer):
        raise UserError(f"{data_dir}: made with tokenizer {dataset_settings.get('tokenizer_name')} "
                        f"({recorded[:12]}), the model uses another ({tokenizer_fingerprint(model_tokenizer)[:12]})",
                        fix=f"{fix_data} (--tokenizer pointing at the model's tokenizer)")
    vocab = dataset_settings.get("vocab_size")
    if vocab is not None and int(vocab) > int(text.vocab_size):
        raise UserError(f"{data_dir}: tokenizer of {vocab} tokens, the model's vocabulary has {text.vocab_size}",
                        fix=fix_data)
    mbs = dataset_settings.get("mini_batch_size")
    model_mbs = getattr(text, "ttt_mini_batch_size", None)
    if getattr(text, "ttt_layers", None) and mbs is not None and model_mbs is not None and int(mbs) != int(model_mbs):
        raise UserError(f"{data_dir}: samples aligned to mini-batch size {mbs}, the model's TTT layers use {model_mbs}",
                        fix=f"{fix_data} (--mini-batch-size {model_mbs}), or train with --ttt-mini-batch-size {mbs}")
    mode = dataset_settings.get("speech_positions") or "trim"
    if mode != model.config.speech_positions:
        raise UserError(f"{data_dir}: speech positions {mode!r}, the model uses {model.config.speech_positions!r}",
                        fix=f"{fix_data} (--speech-positions {model.config.speech_positions})")
