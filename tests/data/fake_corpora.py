"""Generated corpora for the data tests: DeepDialogue-xtts in its real layout (named as the real corpus names
things) with one defect per dialogue, and the `conversations` layout. Audio is numpy tones written with
soundfile (fast); the expected outcome of each dialogue is listed next to it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 24_000
CROSS = "dialogues_llama3-70B_qwen2.5-72B"
MINI = "dialogues_phi4-mini"
QWEN_CACHE = "/home/someone/hf_cache/hub/models--Qwen--Qwen2.5-72B-Instruct/snapshots/0123abcd"


def tone(seconds: float, rate: int = RATE, freq: float = 220.0, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave, 0.5 * wave], axis=1)


def write_dialogue(folder: Path, stem: str, texts: list[str | None], seconds: float = 0.6,
                   model1: str = "Qwen/Qwen2.5-72B-Instruct", with_audio: bool = True) -> Path:
    """`<folder>/<stem>.json` + `<folder>/<stem>/segments/NNN_LLMx_<emotion>.wav` (24 kHz PCM16). The JSON
    emotion ("enthusiastic") differs from the file names' ("happy"); a None text leaves `text` out."""
    folder.mkdir(parents=True, exist_ok=True)
    turns = []
    for i, text in enumerate(texts):
        turn = {"speaker": f"LLM{i % 2 + 1}", "emotion": "enthusiastic"}
        if text is not None:
            turn["text"] = text
        turns.append(turn)
    data = {"domain": stem.split("_")[0], "timestamp": "2025-03-19 03:53:00", "model1": model1,
            "model2": "Qwen/Qwen2.5-72B-Instruct", "conversation": turns}
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2))  # ensure_ascii: \u2019 escapes
    if with_audio:
        seg = folder / stem / "segments"
        seg.mkdir(parents=True)
        for i, turn in enumerate(turns, start=1):
            sf.write(seg / f"{i:03d}_{turn['speaker']}_happy.wav", tone(seconds, freq=200 + 37 * i), RATE,
                     subtype="PCM_16")
        sf.write(folder / stem / f"{stem}_full.wav", tone(seconds * len(turns)), RATE, subtype="PCM_16")
        (folder / stem / "metadata.tsv").write_text("segment_id\tfilename\tspeaker\n")
    return folder / stem / "segments"


def texts(n: int, tag: str) -> list[str | None]:
    return [f"{tag} turn {i}: what\u2019s next? number {i}" for i in range(n)]


def make_deepdialogue(root: Path, outside: Path | None = None) -> dict[str, dict]:
    """A DeepDialogue-xtts repo root with defects. Returns conversation id -> expectation:
    `kept` = exchanges kept, `errors` = [(reason, exchange or None)] in order."""
    data = root / "data"
    cross, mini = data / CROSS, data / MINI
    expect: dict[str, dict] = {}

    write_dialogue(cross, "cars_5_4", texts(4, "cars"), model1=QWEN_CACHE)
    expect[f"{CROSS}/cars_5_4"] = {"kept": 2, "errors": []}
    write_dialogue(mini, "cars_5_4", texts(4, "mini cars"))  # the same stem in another folder
    expect[f"{MINI}/cars_5_4"] = {"kept": 2, "errors": []}

    seg = write_dialogue(mini, "education_7_6", texts(6, "edu"))
    path = seg / "003_LLM1_happy.wav"
    os.truncate(path, path.stat().st_size - 400)  # header still claims the full data size
    expect[f"{MINI}/education_7_6"] = {"kept": 1, "errors": [("truncated_audio", 1), ("after_hole", 2)]}

    seg = write_dialogue(mini, "health_2_4", texts(4, "health"))
    (seg / "001_LLM1_happy.wav").write_bytes(b"")
    expect[f"{MINI}/health_2_4"] = {"kept": 0, "errors": [("empty_audio", 0), ("after_hole", 1)]}

    seg = write_dialogue(mini, "music_3_6", texts(6, "music"))
    (seg / "005_LLM1_happy.wav").unlink()
    expect[f"{MINI}/music_3_6"] = {"kept": 2, "errors": [("missing_audio", 2)]}

    seg = write_dialogue(mini, "travel_4_4", texts(4, "travel"))
    sf.write(seg / "001_LLM1_happy.wav", tone(0.5, rate=44_100, channels=2), 44_100, subtype="PCM_16")
    expect[f"{MINI}/travel_4_4"] = {"kept": 2, "errors": [], "stereo": True}

    no_text = texts(4, "sports")
    no_text[1] = None  # the assistant turn of exchange 0 has no `text`
    write_dialogue(mini, "sports_6_4", no_text)
    expect[f"{MINI}/sports_6_4"] = {"kept": 0, "errors": [("missing_text", 0), ("after_hole", 1)]}

    write_dialogue(mini, "food_8_2", texts(2, "food"), with_audio=False)
    expect[f"{MINI}/food_8_2"] = {"kept": 0, "errors": [("missing_audio_folder", None)]}

    write_dialogue(mini, "books_9_5", texts(5, "books"))  # trailing user turn without reply
    expect[f"{MINI}/books_9_5"] = {"kept": 2, "errors": [("no_reply", None)]}

    if outside is not None:
        seg = write_dialogue(mini, "movies_10_2", texts(2, "movies"))
        target = outside / "elsewhere.wav"
        sf.write(target, tone(0.5), RATE, subtype="PCM_16")
        (seg / "001_LLM1_happy.wav").unlink()
        (seg / "001_LLM1_happy.wav").symlink_to(target)
        expect[f"{MINI}/movies_10_2"] = {"kept": 0, "errors": [("path_outside_input", 0)]}
    return expect


def make_conversations(root: Path) -> None:
    """The `conversations` layout: conv_a (explicit roles, a text-only user turn), conv_b (no metadata turns:
    turn_N files), conv_c (an audio path escaping ROOT)."""
    conv = root / "conversations"
    a = conv / "conv_a"
    a.mkdir(parents=True)
    sf.write(a / "turn_0.wav", tone(0.7, rate=16_000), 16_000, subtype="PCM_16")
    (a / "turn_0.txt").write_text("hello there")
    (a / "turn_1.txt").write_text("Hi! How can I help?")
    (a / "turn_3.txt").write_text("Paris is in France.")
    (a / "metadata.json").write_text(json.dumps({
        "conversation_id": "conv_a", "speakers": ["spk1", "bot"], "domain": "travel",
        "turns": [
            {"turn_id": 0, "speaker": "spk1", "role": "user", "audio_file": "turn_0.wav",
             "transcript_file": "turn_0.txt"},
            {"turn_id": 1, "speaker": "bot", "role": "assistant", "transcript_file": "turn_1.txt"},
            {"turn_id": 2, "speaker": "spk1", "role": "user", "text": "Where is Paris?"},
            {"turn_id": 3, "speaker": "bot", "role": "assistant", "transcript_file": "turn_3.txt"},
        ]}))
    b = conv / "conv_b"
    b.mkdir()
    for n in range(4):
        sf.write(b / f"turn_{n}.wav", tone(0.4, rate=22_050, freq=300 + n), 22_050, subtype="PCM_16")
        (b / f"turn_{n}.txt").write_text(f"sentence number {n}")
    c = conv / "conv_c"
    c.mkdir()
    (c / "turn_1.txt").write_text("reply")
    (c / "metadata.json").write_text(json.dumps({"speakers": ["u", "a"], "turns": [
        {"speaker": "u", "audio_file": "../../../outside.wav"}, {"speaker": "a", "transcript_file": "turn_1.txt"}]}))
    (root / "manifest.jsonl").write_text("".join(
        json.dumps({"conversation_id": name, "path": f"conversations/{name}"}) + "\n"
        for name in ("conv_a", "conv_b", "conv_c")))
