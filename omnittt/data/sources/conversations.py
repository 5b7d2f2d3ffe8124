"""The `conversations` layout (one folder per conversation, the format of the earlier project;
docs/data_format.md shows how LLaMA-Omni's own multi-turn data maps onto it):

    ROOT/manifest.jsonl                       optional: {"conversation_id", "path", ...} per conversation
    ROOT/conversations/<conv>/metadata.json   {"conversation_id", "speakers", "domain"?, "turns": [
                                                 {"turn_id", "speaker", "role"?, "audio_file"?,
                                                  "transcript_file"? | "text"?}, ...]}
    ROOT/conversations/<conv>/turn_<N>.wav + turn_<N>.txt

`role` ("user"/"assistant") is optional; without it the task assigns roles by speaker. A turn without
`audio_file` is a text turn. Without `turns`, the `turn_<N>.wav/.txt` files are used in order of N with
speakers alternating. Paths that leave ROOT are refused (`path_outside_input`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omnittt.core.constants import ASSISTANT_ROLE, USER_ROLE
from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

_TURN_FILE = re.compile(r"^turn_(\d+)\.(wav|flac|txt)$")


def _conversation_dirs(root: Path) -> Path:
    return root / "conversations" if (root / "conversations").is_dir() else root


def looks_like(root: Path) -> str | None:
    if (root / "manifest.jsonl").is_file() and (root / "conversations").is_dir():
        return "manifest.jsonl + conversations/"
    base = root / "conversations"
    if base.is_dir() and any(p.is_dir() and ((p / "metadata.json").exists() or any(p.glob("turn_*")))
                             for p in base.iterdir()):
        return "conversations/<id>/ folders with metadata.json or turn_N files"
    return None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    manifest = root / "manifest.jsonl"
    refs: list[ConversationRef] = []
    if manifest.exists():
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                conv_id, rel = str(row["conversation_id"]), str(row.get("path") or row["conversation_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{manifest}:{number}: not a manifest line with conversation_id and path",
                                fix="fix the line or delete manifest.jsonl to scan conversations/") from None
            # Relative paths resolve against ROOT (the earlier project wrote `conversations/conv_X`); escapes are caught
            # in read() so they are reported, not fatal.
            refs.append(ConversationRef(conv_id, str(root / rel)))
    else:
        base = _conversation_dirs(root)
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and ((entry / "metadata.json").exists() or any(entry.glob("turn_*"))):
                refs.append(ConversationRef(entry.name, str(entry)))
    if not refs:
        raise UserError(f"{root}: no conversations here (no manifest.jsonl, no conversations/<id>/ folders)",
                        fix="see docs/data_format.md for the conversations layout")
    return sorted(refs, key=lambda ref: ref.conversation_id)


def _file_turns(folder: Path) -> list[dict[str, Any]]:
    numbers: dict[int, dict[str, Any]] = {}
    for entry in folder.iterdir():
        match = _TURN_FILE.match(entry.name)
        if match:
            turn = numbers.setdefault(int(match.group(1)), {"turn_id": int(match.group(1))})
            turn["transcript_file" if match.group(2) == "txt" else "audio_file"] = entry.name
    return [numbers[n] for n in sorted(numbers)]


def read(root: Path, ref: ConversationRef, source: str = "conversations") -> Conversation:
    folder = Path(ref.path)
    conv = Conversation(conversation_id=ref.conversation_id, source=source, group="conversations",
                        path=str(folder / "metadata.json"))
    if not is_inside(root, folder):
        conv.problem, conv.problem_detail = "path_outside_input", f"{folder} is outside {root}"
        return conv
    if not folder.is_dir():
        conv.problem, conv.problem_detail = "missing_audio_folder", f"{folder} not found"
        return conv
    meta: dict[str, Any] = {}
    if (folder / "metadata.json").exists():
        try:
            meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise TypeError("not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            conv.problem, conv.problem_detail = "bad_json", f"{exc.__class__.__name__}: {exc}"[:200]
            return conv
    turns = meta.get("turns") if isinstance(meta.get("turns"), list) else _file_turns(folder)
    speakers = [str(s) for s in meta.get("speakers") or []] or ["A", "B"]
    domain = str(meta.get("domain") or meta.get("group") or "conversations")
    conv.group = domain
    conv.metadata = {k: v for k, v in meta.items() if k not in ("turns", "conversation_id")}
    for index, raw in enumerate(turns):
        turn = Turn(index=index, speaker=speakers[index % len(speakers)])
        conv.turns.append(turn)
        if not isinstance(raw, dict):
            turn.problem, turn.problem_path = "bad_turn", conv.path
            continue
        turn.speaker = str(raw.get("speaker") or turn.speaker)
        role = raw.get("role")
        if role in ("human", "gpt"):  # LLaMA-Omni / ShareGPT names
            role = USER_ROLE if role == "human" else ASSISTANT_ROLE
        turn.role = role if role in (USER_ROLE, ASSISTANT_ROLE) else None
        turn.metadata = {k: raw[k] for k in ("turn_id", "duration_sec", "emotion") if k in raw}
        text = raw.get("text")
        if isinstance(text, str):
            turn.text = text
        elif raw.get("transcript_file"):
            path = folder / str(raw["transcript_file"])
            if not is_inside(root, path):
                turn.problem, turn.problem_path = "path_outside_input", str(path)
                continue
            try:
                turn.text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                turn.text = None  # reported as missing_text if the task needs it
        if raw.get("audio_file"):
            path = folder / str(raw["audio_file"])
            if not is_inside(root, path):
                turn.problem, turn.problem_path = "path_outside_input", str(path)
                continue
            turn.audio_path = path
    return conv

