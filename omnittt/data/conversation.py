"""What corpus sources produce: a conversation as an ordered list of speaker turns (docs/data_format.md
"What an exchange becomes"). Roles (user speech / assistant text) are assigned later by the
preprocessing task, so one source serves both the dialogue and the ASR task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Turn:
    """One speaker turn. `problem` is a reason code found while reading the corpus (e.g. `missing_audio`,
    `missing_text`); the audio itself is only decoded when the turn is used as user speech."""

    index: int  # 0-based position in the conversation
    speaker: str
    text: str | None = None
    audio_path: Path | None = None
    role: str | None = None  # set by sources whose data names roles (conversations layout); else by the task
    problem: str | None = None
    problem_path: str | None = None  # the file the problem is about (defaults to audio_path / source path)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    """One conversation of a corpus, in turn order."""

    conversation_id: str  # unique within the corpus (DeepDialogue: `<folder>/<stem>`)
    source: str  # source name (deepdialogue, conversations, synthetic)
    group: str  # the folder/domain sessions are built from, e.g. `dialogues_phi4-mini/cars`
    path: str  # the file the conversation was read from (for errors.jsonl)
    turns: list[Turn] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # a whole-conversation defect (e.g. `missing_audio_folder`, `bad_json`)
    problem_detail: str = ""
    # A pseudo-conversation of independent utterances (a LibriSpeech chapter, a Common Voice speaker's
    # clips): a bad utterance is skipped alone instead of ending the conversation, since nothing later
    # depends on it.
    independent_turns: bool = False
