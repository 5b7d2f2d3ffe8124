"""`open_chat`: a `ChatSession` on a run directory's latest checkpoint or on a model directory, with the tokenizer,
feature extractor and generation settings saved beside the weights, checked against the run's training data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnittt.chat.generation import generation_defaults
from omnittt.chat.session import ChatSession
from omnittt.core.constants import SYSTEM_PROMPT
from omnittt.core.features import build_feature_extractor
from omnittt.errors import UserError

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"


@dataclass
class ChatSource:
    """Where the model came from, for the banner."""

    path: str
    run: str | None = None
    step: int | None = None
    warnings: list[str] = field(default_factory=list)


def set_attention_window(model: Any, window: int | None) -> None:
    """Make the model's attention layers sliding-window over the last `window` positions (None: full attention).
    The weights do not depend on it: only the layer kinds, the masks and the cache layers a new cache gets."""
    from omnittt.core.ttt_llama import MASK_KIND, prepare_ttt_config

    text = model.config.text_config
    if window is not None and int(window) < 2:
        raise UserError(f"--attention-window must be at least 2 positions (got {window})", fix="use e.g. 4096")
    text.attention_window = None if window is None else int(window)
    prepare_ttt_config(text)
    model.language_model.model.mask_kinds = [MASK_KIND[kind] for kind in text.layer_types]


def open_chat(run: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None, *,
              attention_window: int | None = None, device: str | None = None, dtype: str | None = None,
              speech_encoder: str | os.PathLike | None = None, generation: dict[str, Any] | None = None,
              system_prompt: str = SYSTEM_PROMPT) -> tuple[ChatSession, ChatSource]:
    """A `ChatSession` on a run directory's latest checkpoint (or a checkpoint folder inside it) or on a model
    directory (an export, a checkpoint, or a released LLaMA-Omni layout with `speech_encoder`). `generation`
    overrides (None values ignored) apply on top of the settings saved with the model."""
    from omnittt.core.loading import load_model
    from omnittt.core.tokenizer import load_tokenizer
    from omnittt.train.checkpoint import read_trainer_state
    from omnittt.train.run_dir import TRAINER_STATE_FILE, find_run_dir, resolve_checkpoint

    if (run is None) == (model_dir is None):
        raise UserError("give exactly one of --run RUN and --model DIR", fix="e.g. omnittt chat --run runs/tiny")
    if run is not None:
        path = resolve_checkpoint(run)
        source = ChatSource(path=str(path), run=str(find_run_dir(path).path),
                            step=read_trainer_state(path).get("step"))
    else:
        path = Path(model_dir)
        if not path.is_dir():
            raise UserError(f"{path}: no such model directory", fix="pass an `omnittt export` folder or a checkpoint")
        source = ChatSource(path=str(path))
        if (path / TRAINER_STATE_FILE).is_file():
            source.step = read_trainer_state(path).get("step")
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise UserError(f"{path}: no tokenizer beside the weights",
                        fix="use a checkpoint written by omnittt train or an omnittt export folder")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers.utils import logging as hf_logging

    # one banner line, not a weight-loading bar and a tokenizer warning about the `omnittt` model type
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = load_model(path, speech_encoder=speech_encoder, dtype=dtype, device=device).model
        tokenizer = load_tokenizer(path)
    finally:
        hf_logging.set_verbosity(verbosity)
    alignment = None
    if run is not None:
        alignment = _check_run_settings(find_run_dir(path), model, tokenizer)
    if attention_window is not None:
        set_attention_window(model, attention_window)
    feature_extractor = _feature_extractor(path, model)
    settings = generation_defaults(path).with_overrides(generation or {})
    session = ChatSession(model, tokenizer, feature_extractor, settings, system_prompt, source=source.path)
    if alignment:
        session.alignment = alignment
    return session, source


def _feature_extractor(path: Path, model: Any) -> Any:
    n_mels = int(model.config.speech_config.num_mel_bins)
    if (path / FEATURE_EXTRACTOR_FILE).is_file():
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        if int(extractor.feature_size) != n_mels:
            raise UserError(f"{path / FEATURE_EXTRACTOR_FILE}: {extractor.feature_size} mel bins, the speech encoder "
                            f"takes {n_mels}", fix="use the feature-extractor config the model was trained with")
        return extractor
    return build_feature_extractor(n_mels)


def _check_run_settings(run: Any, model: Any, tokenizer: Any) -> int | None:
    """The run recorded the dataset settings it was trained on: refuse a model/tokenizer that disagrees. Returns
    the alignment (mini-batch size) its samples were padded to, if recorded."""
    from omnittt.train.setup import check_dataset_matches_model

    dataset = (run.read_config() or {}).get("dataset") or {}
    if dataset:
        check_dataset_matches_model(dataset, model, tokenizer, f"{run.path} (its training data)")
    mini_batch = dataset.get("mini_batch_size")
    return int(mini_batch) if mini_batch else None
