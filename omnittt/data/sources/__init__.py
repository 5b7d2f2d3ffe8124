"""Corpus sources: each turns one corpus layout into `Conversation`s.

A source module offers `discover(root) -> list[ConversationRef]` (cheap: lists files, sorted by conversation
id = input order) and `read(root, ref) -> Conversation` (parses one conversation; called in workers). Defects
found while reading are recorded on the conversation or turn, never raised: the pipeline reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from omnittt.errors import UserError

# Where `omnittt download SOURCE` puts each corpus (relative to the working directory); `omnittt preprocess
# SOURCE` reads from there when INPUT is left out.
DEFAULT_INPUT: dict[str, str] = {
    "deepdialogue": "deepdialogue-xtts",
    "synthetic": "synthetic",
}
# The speaker that is the user in the dialogue task when --user-speaker is not given (None: the first
# speaker of each conversation).
DEFAULT_USER_SPEAKER: dict[str, str | None] = {
    "deepdialogue": "LLM1",
    "synthetic": "LLM1",
    "conversations": None,
}


@dataclass(frozen=True)
class ConversationRef:
    """One conversation found by `discover`: its id and the file it is read from."""

    conversation_id: str
    path: str  # absolute


def _under(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True if `path` stays inside `root`: as written (no `../` out of it) and with symlinks resolved. One
    exception for symlinks: a Hugging Face cache snapshot links its files to `../../blobs/`, so inside a
    `datasets--*` / `models--*` cache folder a link may point anywhere in that folder."""
    if not _under(os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))):
        return False
    root_real, real = os.path.realpath(root), os.path.realpath(path)
    if _under(root_real, real):
        return True
    cache_repo = next((p for p in Path(root_real).parents if p.name.startswith(("datasets--", "models--"))), None)
    return cache_repo is not None and _under(str(cache_repo), real)


def source_names() -> list[str]:
    return ["deepdialogue", "conversations", "synthetic"]


def get_source(name: str) -> ModuleType:
    if name in ("deepdialogue", "synthetic"):
        from omnittt.data.sources import deepdialogue

        return deepdialogue
    if name == "conversations":
        from omnittt.data.sources import conversations

        return conversations
    raise UserError(f"unknown source {name!r}", fix=f"use one of: {', '.join(source_names())}")


def resolve_input(source: str, input_dir: str | os.PathLike | None) -> Path:
    """INPUT, or where `omnittt download SOURCE` puts the corpus."""
    if input_dir is None:
        default = DEFAULT_INPUT.get(source)
        if default is None:
            raise UserError(f"`{source}` has no default location", fix=f"give INPUT: omnittt preprocess {source} DIR")
        input_dir = default
        if not Path(input_dir).exists():
            raise UserError(f"{input_dir}: no corpus here (the default INPUT for {source})",
                            fix=f"run `omnittt download {source}` first, or give INPUT")
    path = Path(input_dir)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory", fix="give the corpus folder as INPUT")
    return path.resolve()
