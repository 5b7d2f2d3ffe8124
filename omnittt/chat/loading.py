"""`open_chat`: a `ChatSession` on a run directory's latest checkpoint or on a model directory, with the tokenizer,
feature extractor and generation settings saved beside the weights, checked against the run's training data. The
run or model folder is opened by `omnittt.runs.open_run`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from omnittt.chat.generation import generation_defaults
from omnittt.chat.session import ChatSession
from omnittt.core.constants import SYSTEM_PROMPT
from omnittt.core.ttt_llama import MASK_KIND, prepare_ttt_config
from omnittt.errors import UserError
from omnittt.runs import open_run
from omnittt.train.run_dir import find_run_dir


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
    directory (an export, a checkpoint, or a released LLaMA-Omni layout with `speech_encoder`), opened by
    `omnittt.runs.open_run`. `generation` overrides (None values ignored) apply on top of the settings saved with
    the model."""
    if (run is None) == (model_dir is None):
        raise UserError("give exactly one of --run RUN and --model DIR", fix="e.g. omnittt chat --run runs/tiny")
    opened = open_run(run if run is not None else model_dir, accept="checkpoint" if run is not None else "model",
                      require_tokenizer=True, load=False)
    source = ChatSource(path=str(opened.path), step=opened.step)
    if run is not None:
        source.run = str((opened.run or find_run_dir(opened.path)).path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opened.load(device=device, dtype=dtype, speech_encoder=speech_encoder)
    alignment = opened.check_training_data() if run is not None else None
    if attention_window is not None:
        set_attention_window(opened.model, attention_window)
    settings = generation_defaults(opened.path).with_overrides(generation or {})
    session = ChatSession(opened.model, opened.tokenizer, opened.feature_extractor(), settings, system_prompt,
                          source=source.path)
    if alignment:
        session.alignment = alignment
    return session, source
