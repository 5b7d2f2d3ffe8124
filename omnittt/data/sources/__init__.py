"""Corpus sources: each turns one corpus layout into `Conversation`s.

A source module offers `discover(root, options) -> list[ConversationRef]` (cheap: lists files; its order is
the input order, sorted by conversation id unless the module says otherwise), `read(root, ref, source) ->
Conversation` (parses one conversation; called in workers) and `looks_like(root) -> str | None` (for `auto`:
why `root` holds this layout, or None). Defects found while reading are recorded on the conversation or turn,
never raised: the pipeline reports them. `librilight` is audio-only: it has no conversations and builds an
audio index instead (omnittt/data/sources/librilight.py).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from omnittt.errors import UserError

# Where `omnittt download SOURCE` puts each corpus (relative to the working directory); `omnittt preprocess
# SOURCE` reads from there when INPUT is left out.
DEFAULT_INPUT: dict[str, str] = {
    "deepdialogue": "deepdialogue-xtts",
    "synthetic": "synthetic",
    "recall": "recall_corpus",
    "librispeech": "LibriSpeech",
    "librilight": "LibriLight",
    "longform": "longform",  # generated (omnittt.data.longform), in the LibriLight layouts
}
# The speaker that is the user in the dialogue task when --user-speaker is not given (None: the first
# speaker of each conversation).
DEFAULT_USER_SPEAKER: dict[str, str | None] = {
    "deepdialogue": "LLM1",
    "synthetic": "LLM1",
    "conversations": None,
    "dailytalk": None,
}
# The task a source is preprocessed for when --task is not given: read speech has no replies.
DEFAULT_TASK: dict[str, str] = {"librispeech": "asr", "commonvoice": "asr"}
# Sources whose conversations are pseudo-conversations of independent utterances (no dialogue task).
PSEUDO_CONVERSATIONS = ("librispeech", "commonvoice")
# Module per source name (synthetic is written in the DeepDialogue layout).
_MODULES = {"deepdialogue": "deepdialogue", "synthetic": "deepdialogue", "conversations": "conversations",
            "librispeech": "librispeech", "dailytalk": "dailytalk", "commonvoice": "commonvoice",
            "librilight": "librilight"}
AUDIO_ONLY = ("librilight",)


@dataclass(frozen=True)
class ConversationRef:
    """One conversation found by `discover`: its id and the file it is read from."""

    conversation_id: str
    path: str  # absolute
    # What `read` needs beyond the path when discovery already parsed it (commonvoice: the TSV rows of a
    # pseudo-conversation, so workers never re-read a million-line TSV).
    items: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SourceOptions:
    """Source-specific choices (CLI flags): `split` = librispeech subset folder(s), comma-separated, or the
    commonvoice TSV (default `train`); `group_size` = commonvoice clips per pseudo-conversation."""

    split: str | None = None
    group_size: int = 16


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
    return list(_MODULES)


def get_source(name: str) -> ModuleType:
    if name not in _MODULES:
        raise UserError(f"unknown source {name!r}", fix=f"use one of: auto, {', '.join(source_names())}")
    return importlib.import_module(f"omnittt.data.sources.{_MODULES[name]}")


def detect(root: str | os.PathLike) -> tuple[str, str]:
    """`auto`: (source, why) for the layout `root` holds. Sources are tried from the most specific layout
    to the most general; the first that recognises it wins. librilight comes before librispeech: a folder cut
    by libri-light's cut_by_vad.py (`<speaker>/<book_id>/<file>_NNNN.flac`, numeric folders, no transcripts)
    would otherwise pass for a LibriSpeech subset."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory", fix="give the corpus folder as INPUT")
    if (root / "synthetic.json").is_file() and get_source("synthetic").looks_like(root):
        return "synthetic", "synthetic.json beside a DeepDialogue layout (made by `omnittt download synthetic`)"
    for name in ("deepdialogue", "librilight", "librispeech", "dailytalk", "commonvoice", "conversations"):
        why = get_source(name).looks_like(root)
        if why:
            return name, why
    raise UserError(f"{root}: no known corpus layout here",
                    fix="point INPUT at the corpus root, or name the source (deepdialogue, librispeech, "
                        "dailytalk, commonvoice, librilight, conversations); see docs/data_format.md")


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
