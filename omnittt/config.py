"""Typed run settings (preprocess, train, chat, eval): dataclasses with their defaults in one place, YAML in
and out, CLI / dotted `key=value` overrides on top.

The Hugging Face `PretrainedConfig` stays the truth for the model itself; `model_overrides()` is the one
mapping from these settings to the keyword overrides `build_model` / `from_pretrained` take.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from omnittt.atomic import atomic_write_text
from omnittt.core.ttt_config import TTTConfig
from omnittt.errors import UserError

T = TypeVar("T", bound="Settings")

# Settings fields that belong to the model config: the TTT attributes (pure Python, no torch behind the import).
MODEL_KEYS = TTTConfig.keys()


@dataclasses.dataclass
class Settings:
    """Base for typed settings: strict dict/YAML round trip and overrides."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, source: str = "settings") -> T:
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                continue
            value = data.pop(field.name)
            sub = hints[field.name]
            if isinstance(sub, type) and issubclass(sub, Settings) and isinstance(value, dict):
                value = sub.from_dict(value, f"{source}.{field.name}")
            kwargs[field.name] = value
        if data:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise UserError(f"{source}: unknown key(s) {', '.join(sorted(data))}", fix=f"known keys: {known}")
        return cls(**kwargs)

    @classmethod
    def load_yaml(cls: type[T], path: str | os.PathLike) -> T:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: no such file", fix="check the --config path") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__})", fix="fix the file") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping at the top level", fix="write `key: value` lines")
        return cls.from_dict(data, source=str(path))

    def dump_yaml(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self: T, overrides: dict[str, Any] | None) -> T:
        """Overrides by (dotted) field name; `None` values are ignored so unset CLI flags keep the default."""
        data = self.to_dict()
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            target = data
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(target.get(part), dict):
                    raise UserError(f"unknown setting {key!r}", fix="see the YAML written by --print-config")
                target = target[part]
            if leaf not in target:
                raise UserError(f"unknown setting {key!r}", fix="see the YAML written by --print-config")
            target[leaf] = value
        return type(self).from_dict(data)


def parse_dotted_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-4", "seed=3"]` -> `{"train.lr": 1e-4, "seed": 3}` with YAML scalar typing."""
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value", fix="write e.g. lr=1e-4")
        key, raw = item.split("=", 1)
        result[key.strip()] = yaml.safe_load(raw)
    return result


def model_overrides(settings: Settings) -> dict[str, Any]:
    """The model-config keys a settings object sets (not None), for `build_model(**overrides)`."""
    data = settings.to_dict()
    return {key: data[key] for key in MODEL_KEYS if data.get(key) is not None}

