"""Processed datasets for the validate / curriculum / dataset tests, made by the real preprocessor from small
generated corpora (espeak-ng synthetic in the DeepDialogue layout, and a `conversations`-layout corpus cut
from it), built once per test session and shared through the session's temp folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import soundfile as sf

SYNTHETIC_DIALOGUES = 9


def _once(base: Path, name: str, build) -> Path:
    target = base / name
    if not (target / "index.json").exists():
        build(target)
    return target


def synthetic_corpus(base: Path) -> Path:
    from omnittt.data.synthetic import make_synthetic_corpus

    target = base / "synthetic_corpus"
    make_synthetic_corpus(target, dialogues=SYNTHETIC_DIALOGUES, seed=0, recall_exchanges=4, workers=2)
    return target


def processed(base: Path, source: str = "synthetic", fmt: str = "pt", speech_positions: str = "trim") -> Path:
    """The preprocessor's output for `source` (`synthetic`, `deepdialogue` or `conversations`) in `fmt`."""
    from omnittt.data.preprocess import PreprocessOptions, preprocess

    corpus = conversations_corpus(base) if source == "conversations" else synthetic_corpus(base)

    def build(target: Path) -> None:
        preprocess(PreprocessOptions(source=source, input_dir=str(corpus), output=str(target), format=fmt,
                                     speech_positions=speech_positions, workers=1))

    return _once(base, f"processed_{source}_{fmt}_{speech_positions}", build)


def conversations_corpus(base: Path) -> Path:
    """The `conversations` layout: user turns with audio (one text-only user turn), assistant turns as text."""
    target = base / "conversations_corpus"
    if target.exists():
        return target
    wavs = sorted((synthetic_corpus(base) / "data").glob("dialogues_*/*/segments/*_LLM1_*.wav"))
    for c in range(3):
        folder = target / "conversations" / f"conv_{c}"
        folder.mkdir(parents=True)
        turns = []
        for k in range(2 + c):
            user = {"turn_id": 2 * k, "speaker": "A", "role": "user"}
            if (c, k) == (1, 1):
                user["text"] = "What did I say before?"
            else:
                audio, rate = sf.read(wavs[(3 * c + k) % len(wavs)], dtype="int16")
                sf.write(folder / f"turn_{2 * k}.wav", audio, rate, subtype="PCM_16")
                user.update(audio_file=f"turn_{2 * k}.wav", text="")
            turns += [user, {"turn_id": 2 * k + 1, "speaker": "B", "role": "assistant",
                             "text": f"Reply {k} of conversation {c}."}]
        (folder / "metadata.json").write_text(json.dumps(
            {"conversation_id": f"conv_{c}", "speakers": ["A", "B"], "domain": "chat", "turns": turns}))
    # A damaged audio file: preprocessing reports it and keeps the rest (validate must still pass).
    folder = target / "conversations" / "conv_broken"
    folder.mkdir(parents=True)
    (folder / "turn_0.wav").write_bytes(b"RIFF not really a wav file")
    (folder / "metadata.json").write_text(json.dumps({"conversation_id": "conv_broken", "turns": [
        {"turn_id": 0, "speaker": "A", "role": "user", "audio_file": "turn_0.wav"},
        {"turn_id": 1, "speaker": "B", "role": "assistant", "text": "Never seen."}]}))
    # One exchange far longer than the rest (a length outlier for the token statistics).
    folder = target / "conversations" / "conv_long"
    folder.mkdir(parents=True)
    reply = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)
    turns = [{"turn_id": 0, "speaker": "A", "role": "user", "text": "Tell me a long story."},
             {"turn_id": 1, "speaker": "B", "role": "assistant", "text": reply}]
    (folder / "metadata.json").write_text(json.dumps(
        {"conversation_id": "conv_long", "speakers": ["A", "B"], "domain": "chat", "turns": turns}))
    return target


def copy_dataset(source: Path, target: Path) -> Path:
    """A private copy to break (the tokenizer folder and samples included)."""
    shutil.copytree(source, target)
    return target
