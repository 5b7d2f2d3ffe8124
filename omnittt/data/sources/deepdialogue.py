"""DeepDialogue-xtts (`SALT-Research/DeepDialogue-xtts`), the real layout (docs/data_format.md `deepdialogue`):

    data/dialogues_<model>[_<model2>]/<domain>_<idx>_<nturns>.json
    data/dialogues_<model>[_<model2>]/<domain>_<idx>_<nturns>/segments/001_LLM1_<emotion>.wav, 002_LLM2_...

JSON: `domain, timestamp, model1, model2, conversation: [{speaker, text, emotion}]`. Segment i (1-based,
3 digits) is turn i, found by its `NNN_` prefix: the emotion word in the file name is a different label set
from the JSON's, so names are never rebuilt from the JSON. Ids repeat across model folders, so the
conversation id is `<folder>/<stem>`. Accepts the repo root, `data/`, or one `dialogues_*` folder.
The synthetic corpus (omnittt/data/synthetic.py) is written in this layout and read by this module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

FOLDER_PREFIX = "dialogues_"
AUDIO_SUFFIXES = (".wav", ".flac")
# NNN_<speaker>[_<emotion>].<ext>; the emotion part is optional so that renamed copies still match.
_SEGMENT = re.compile(r"^(\d{3})_([^_.]+)(?:_(.+))?\.[A-Za-z0-9]+$")
_HF_CACHE_MODEL = re.compile(r"models--([^/]+?)--([^/]+)")


def dialogue_folders(root: Path) -> list[Path]:
    """The `dialogues_*` folders under the repo root, `data/`, or `root` itself if it is one."""
    base = root / "data" if (root / "data").is_dir() else root
    folders = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith(FOLDER_PREFIX))
    if folders:
        return folders
    if any(p.suffix == ".json" for p in root.iterdir()):
        return [root]
    raise UserError(f"{root}: no DeepDialogue dialogues here (no dialogues_* folder and no *.json)",
                    fix="point INPUT at the repo root, its data/ folder, or one dialogues_* folder")


def looks_like(root: Path) -> str | None:
    base = root / "data" if (root / "data").is_dir() else root
    folders = [p.name for p in base.iterdir() if p.is_dir() and p.name.startswith(FOLDER_PREFIX)]
    if folders:
        return f"{FOLDER_PREFIX}* folders ({', '.join(sorted(folders)[:3])}{', ...' if len(folders) > 3 else ''})"
    if root.name.startswith(FOLDER_PREFIX) and any(p.suffix == ".json" for p in root.iterdir()):
        return f"a {FOLDER_PREFIX}* folder of dialogue JSONs"
    return None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    refs = []
    for folder in dialogue_folders(root):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and entry.is_file():
                    stem = entry.name[: -len(".json")]
                    refs.append(ConversationRef(f"{folder.name}/{stem}", os.path.join(folder, entry.name)))
    return sorted(refs, key=lambda ref: ref.conversation_id)


def model_name(value: object) -> str:
    """`/home/u/hf_cache/hub/models--Qwen--Qwen2.5-72B-Instruct/snapshots/<sha>` -> `Qwen/Qwen2.5-72B-Instruct`
    (some JSONs carry local cache paths instead of model ids)."""
    text = str(value or "")
    match = _HF_CACHE_MODEL.search(text)
    return f"{match.group(1)}/{match.group(2)}" if match else text


def _segments(folder: Path) -> dict[int, list[str]]:
    by_number: dict[int, list[str]] = {}
    seg_dir = folder / "segments"
    if not seg_dir.is_dir():
        return by_number
    with os.scandir(seg_dir) as entries:
        for entry in entries:
            match = _SEGMENT.match(entry.name)
            if match and entry.name.lower().endswith(AUDIO_SUFFIXES):
                by_number.setdefault(int(match.group(1)), []).append(entry.name)
    return by_number


def read(root: Path, ref: ConversationRef, source: str = "deepdialogue") -> Conversation:
    json_path = Path(ref.path)
    folder_name = json_path.parent.name
    conv = Conversation(conversation_id=ref.conversation_id, source=source, group=folder_name,
                        path=str(json_path))
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        turns = data["conversation"]
        if not isinstance(turns, list):
            raise TypeError("`conversation` is not a list")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        conv.problem, conv.problem_detail = "bad_json", f"{exc.__class__.__name__}: {exc}"[:200]
        return conv
    domain = str(data.get("domain") or json_path.stem.split("_")[0])
    conv.group = f"{folder_name}/{domain}"
    conv.metadata = {
        "domain": domain,
        "timestamp": data.get("timestamp"),
        "model1": model_name(data.get("model1")),
        "model2": model_name(data.get("model2")),
        "configuration": folder_name,
        # not in DeepDialogue itself: the recall probe's query table of omnittt's synthetic corpus
        **({"recall": data["recall"]} if isinstance(data.get("recall"), dict) else {}),
    }
    audio_dir = json_path.with_suffix("")
    if not audio_dir.is_dir():
        conv.problem, conv.problem_detail = "missing_audio_folder", f"{audio_dir.name}/ not found"
        return conv
    segments = _segments(audio_dir)
    for index, raw in enumerate(turns):
        number = index + 1
        turn = Turn(index=index, speaker="")
        conv.turns.append(turn)
        if not isinstance(raw, dict) or not isinstance(raw.get("speaker"), str):
            turn.problem = "bad_turn"
            turn.problem_path = str(json_path)
            continue
        turn.speaker = raw["speaker"]
        text = raw.get("text")
        turn.text = text if isinstance(text, str) else None
        turn.metadata = {"emotion": raw.get("emotion")}
        names = segments.get(number, [])
        expected = audio_dir / "segments" / f"{number:03d}_{turn.speaker}_*.wav"
        if not names:
            turn.problem, turn.problem_path = "missing_audio", str(expected)
            continue
        if len(names) > 1:
            turn.problem, turn.problem_path = "ambiguous_audio", str(expected)
            continue
        path = audio_dir / "segments" / names[0]
        match = _SEGMENT.match(names[0])
        assert match is not None
        turn.audio_path = path
        turn.metadata["file_emotion"] = match.group(3)
        if match.group(2) != turn.speaker:
            turn.problem, turn.problem_path = "speaker_mismatch", str(path)
        elif not is_inside(root, path):
            turn.problem, turn.problem_path = "path_outside_input", str(path)
    return conv
