"""The generation settings of a chat reply (`GenerationSettings`) and the ones saved with a model
(`generation_defaults`: `generation_config.json` beside the weights)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from omnittt.config import Settings
from omnittt.errors import UserError

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass
class GenerationSettings(Settings):
    """Sampling settings of a reply. `temperature` 0 is greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None  # seeds sampling once per session (a script then replays exactly)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (got {self.temperature})", fix="use 0 for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1] (got {self.top_p})", fix="use e.g. --top-p 0.9")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})", fix="use e.g. 256")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, "temperature": None, "top_p": None,
                    "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None,
                "max_new_tokens": self.max_new_tokens}


def generation_defaults(model_dir: str | os.PathLike) -> GenerationSettings:
    """The generation settings saved with the model (`generation_config.json` beside the weights, the Hugging
    Face convention: `model.generation_config` is written by every checkpoint and export); values it does not set
    explicitly keep `GenerationSettings`' defaults."""
    path = Path(model_dir)
    settings = GenerationSettings()
    if not (path / GENERATION_CONFIG_FILE).is_file():
        return settings
    try:
        saved = GenerationConfig.from_pretrained(str(path), local_files_only=True).to_diff_dict()
    except (OSError, ValueError) as exc:
        raise UserError(f"{path / GENERATION_CONFIG_FILE}: cannot read it ({exc.__class__.__name__})",
                        fix="fix or delete the file (chat then uses its own defaults)") from None
    values = {key: saved[key] for key in ("temperature", "top_p", "max_new_tokens") if saved.get(key) is not None}
    if saved.get("do_sample") is False and "temperature" not in values:
        values["temperature"] = 0.0
    return GenerationSettings.from_dict(values, source=str(path / GENERATION_CONFIG_FILE))
