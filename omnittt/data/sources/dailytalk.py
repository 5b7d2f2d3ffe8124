"""DailyTalk (github.com/keonlee9420/DailyTalk), the real layout (research/datasets.md 2.3):

    <root>/data/<d>/<u>_<speaker>_d<d>.wav     utterance u (0-based) of dialogue d by speaker 0 or 1
    <root>/data/<d>/<u>_<speaker>_d<d>.txt     its text (first line)

A dialogue is a conversation, id `d<d>`, in numeric order of d (the input order). Dialogue task: the speaker
of utterance 0 is the user (speech), the other the assistant (text target); `--user-speaker 1` fixes one
speaker instead. INPUT may be the corpus root or its `data/` folder. An utterance index with neither file is
a `missing_audio` turn (the numbering says it existed).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

_FILE = re.compile(r"^(\d+)_(\d+)_d(\d+)\.(wav|txt)$")


def _base(root: Path) -> Path:
    return root / "data" if (root / "data").is_dir() else root


def _dialogue_dirs(base: Path) -> list[Path]:
    with os.scandir(base) as entries:
        return sorted((Path(e.path) for e in entries if e.name.isdigit() and e.is_dir()), key=lambda p: int(p.name))


def looks_like(root: Path) -> str | None:
    base = _base(root)
    for folder in _dialogue_dirs(base)[:3]:
        if any(_FILE.match(name) and name.endswith(f"_d{folder.name}.wav") for name in os.listdir(folder)):
            return f"DailyTalk dialogue folders ({base.name}/<d>/<u>_<speaker>_d<d>.wav)"
    return None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    refs = [ConversationRef(f"d{folder.name}", str(folder)) for folder in _dialogue_dirs(_base(root))]
    if not refs:
        raise UserError(f"{root}: no DailyTalk dialogues here (no data/<d>/ folders)",
                        fix="point INPUT at the DailyTalk root or its data/ folder")
    return refs  # numeric order of the dialogue number


def read(root: Path, ref: ConversationRef, source: str = "dailytalk") -> Conversation:
    folder = Path(ref.path)
    number = folder.name
    conv = Conversation(conversation_id=ref.conversation_id, source=source, group="dailytalk",
                        path=str(folder), metadata={"dialogue": int(number)})
    files: dict[int, dict[str, str]] = {}
    for name in os.listdir(folder):
        match = _FILE.match(name)
        if match and match.group(3) == number:
            entry = files.setdefault(int(match.group(1)), {})
            entry["speaker"] = match.group(2)
            entry[match.group(4)] = name
    if not files:
        conv.problem, conv.problem_detail = "missing_audio", f"no <u>_<speaker>_d{number}.wav files"
        return conv
    for index in range(max(files) + 1):
        entry = files.get(index, {})
        # a lost utterance's speaker: the two speakers alternate
        speaker = entry.get("speaker") or next((files[i]["speaker"] for i in (index - 1, index + 1) if i in files
                                                and "speaker" in files[i]), "?")
        if "speaker" not in entry and speaker in ("0", "1"):
            speaker = "1" if speaker == "0" else "0"
        turn = Turn(index=index, speaker=speaker)
        conv.turns.append(turn)
        stem = folder / f"{index}_{speaker}_d{number}"
        if "txt" in entry:
            try:
                lines = (folder / entry["txt"]).read_text(encoding="utf-8").splitlines()
                turn.text = lines[0].strip() if lines and lines[0].strip() else None
            except (OSError, UnicodeDecodeError):
                turn.text = None  # reported as missing_text where the text is needed
        if "wav" not in entry:
            turn.problem, turn.problem_path = "missing_audio", str(stem.with_suffix(".wav"))
            continue
        turn.audio_path = folder / entry["wav"]
        if not is_inside(root, turn.audio_path):
            turn.problem, turn.problem_path = "path_outside_input", str(turn.audio_path)
    return conv
