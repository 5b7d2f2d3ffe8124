"""DailyTalk (github.com/keonlee9420/DailyTalk), the real layout (docs/data_format.md `dailytalk`):

    <root>/data/<d>/<u>_<speaker>_d<d>.wav     utterance u (0-based) of dialogue d by speaker 0 or 1
    <root>/data/<d>/<u>_<speaker>_d<d>.txt     its text (first line)
    <root>/metadata.json                       {"<d>": {"<u>": {speaker, text, index, turn, topic, emotion, act}}}

A dialogue is a conversation, id `d<d>`, in numeric order of d (the input order). Dialogue task: the speaker
of utterance 0 is the user (speech), the other the assistant (text target); `--user-speaker 1` fixes one
speaker instead. INPUT may be the corpus root or its `data/` folder. An utterance index with neither file is
a `missing_audio` turn (the numbering says it existed).

The labels of metadata.json (DailyDialog's emotion and dialogue act per utterance, its topic per dialogue) are
kept: each turn's `metadata` holds `emotion`, `act` and `topic`, and the conversation's metadata, which becomes
its manifest line, holds `topic`, `emotions` and `acts` (lists indexed by the utterance number u, null where
metadata.json has no entry). metadata.json is read once by `discover`; without it there are no labels (not an
error); one that does not parse stops the run in one line.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

_FILE = re.compile(r"^(\d+)_(\d+)_d(\d+)\.(wav|txt)$")
METADATA = "metadata.json"
LABELS = ("topic", "emotion", "act")


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


def _metadata_path(root: Path) -> Path | None:
    """The corpus root's metadata.json (INPUT may be the root or its data/ folder)."""
    for folder in (root, root.parent) if root.name == "data" else (root,):
        if (folder / METADATA).is_file():
            return folder / METADATA
    return None


def read_labels(root: Path) -> dict[str, tuple[tuple[int, str | None, str | None, str | None], ...]]:
    """metadata.json -> {dialogue number: ((u, topic, emotion, act), ...) in order of u}; {} without the file."""
    path = _metadata_path(root)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: does not parse ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})",
                        fix="restore DailyTalk's metadata.json, or move it away to go on without its labels") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not DailyTalk's metadata ({{dialogue: {{utterance: {{...}}}}}} expected)",
                        fix="restore DailyTalk's metadata.json, or move it away to go on without its labels")
    labels = {}
    for dialogue, utterances in data.items():
        if not isinstance(utterances, dict):
            continue
        rows = []
        for key, entry in utterances.items():
            if str(key).isdigit() and isinstance(entry, dict):
                rows.append((int(key), *(_label(entry.get(name)) for name in LABELS)))
        labels[str(dialogue)] = tuple(sorted(rows, key=lambda row: row[0]))
    return labels


def _label(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    labels = read_labels(root)
    refs = [ConversationRef(f"d{folder.name}", str(folder), labels.get(folder.name, ()))
            for folder in _dialogue_dirs(_base(root))]
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
    labels = {row[0]: dict(zip(LABELS, row[1:], strict=True)) for row in ref.items}
    if labels:
        count = max(max(files), max(labels)) + 1
        topics = [row["topic"] for row in labels.values() if row["topic"]]
        conv.metadata["topic"] = Counter(topics).most_common(1)[0][0] if topics else None  # one per dialogue
        conv.metadata["emotions"] = [labels.get(u, {}).get("emotion") for u in range(count)]
        conv.metadata["acts"] = [labels.get(u, {}).get("act") for u in range(count)]
    for index in range(max(files) + 1):
        entry = files.get(index, {})
        # a lost utterance's speaker: the two speakers alternate
        speaker = entry.get("speaker") or next((files[i]["speaker"] for i in (index - 1, index + 1) if i in files
                                                and "speaker" in files[i]), "?")
        if "speaker" not in entry and speaker in ("0", "1"):
            speaker = "1" if speaker == "0" else "0"
        turn = Turn(index=index, speaker=speaker, metadata=dict(labels.get(index, {})))
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
