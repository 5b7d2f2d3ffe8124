"""A spoken-dialogue corpus made offline with espeak-ng, in the DeepDialogue-xtts layout (24 kHz PCM16 mono
segments `NNN_LLMx_<emotion>.wav`, one JSON per dialogue), so `omnittt preprocess synthetic` reads it with
the DeepDialogue source. Used by quickstart, tests, training and eval.

What a model can learn from it, and what eval can check:
- `numbers`: the user says a number; the reply repeats it and does arithmetic on it (the reply depends on
  the speech, not only on the context).
- `names`: the user says their name and a city; the replies use them.
- `recall`: the user gives a code in the first exchange; after several filler exchanges they ask for it, and
  the reply is the code (a fact from an early turn needed many turns later: the long-context test).
Each dialogue has two different voices (LLM1 = user, LLM2 = assistant). Everything follows from the seed:
the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.errors import UserError

FOLDER = "dialogues_synthetic-espeak"
CORPUS_RATE = 24_000  # DeepDialogue-xtts' rate, so the resampling path is exercised
MARKER = "synthetic.json"
KINDS = ("numbers", "names", "recall")
VOICES = ["en-us+m3", "en-us+f3", "en-gb+m1", "en-gb+f2", "en-us+m7", "en-us+f4", "en-gb+m4", "en-us+f1",
          "en-us+m2", "en-gb+f5"]
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isabel", "Jack", "Kate", "Leo",
         "Maria", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tom", "Victor"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Tokyo"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white"]
THINGS = ["cat", "dog", "bird", "fish", "apple", "bread", "coffee", "tea"]
# JSON emotions (dialogue level) and the RAVDESS word the segment file names carry: two label sets, as in
# the real corpus.
EMOTIONS = [("enthusiastic", "happy"), ("curious", "neutral"), ("relaxed", "calm"), ("surprised", "surprised"),
            ("worried", "fearful"), ("grateful", "happy")]
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """0..999 in words ("forty two"), the way espeak-ng reads them and the replies write them."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words covers 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def _numbers(rng: random.Random, exchanges: int) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(exchanges):
        n = rng.randint(1, 98)
        if rng.random() < 0.5:
            pairs.append((f"My number is {number_words(n)}. What comes after it?",
                          f"You said {number_words(n)}. The next number is {number_words(n + 1)}."))
        else:
            pairs.append((f"Please double the number {number_words(n)}.",
                          f"Double {number_words(n)} is {number_words(2 * n)}."))
    return pairs


def _filler(rng: random.Random) -> tuple[str, str]:
    colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
    if rng.random() < 0.5:
        return (f"I\u2019m thinking of a {colour} {thing}.", f"A {colour} {thing}, nice. Tell me more.")
    n = rng.randint(1, 49)
    return (f"I have {number_words(n)} {thing}s at home.", f"{number_words(n).capitalize()} {thing}s, that is a lot.")


def _names(rng: random.Random, exchanges: int) -> list[tuple[str, str]]:
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    pairs = [(f"Hello, my name is {name}.", f"Nice to meet you, {name}!"),
             (f"I live in {city}.", f"{city} is a lovely city, {name}.")]
    pairs += [_filler(rng) for _ in range(max(0, exchanges - 3))]
    pairs.append(("Do you remember my name?", f"Yes, your name is {name} and you live in {city}."))
    return pairs


def _recall(rng: random.Random, exchanges: int) -> list[tuple[str, str]]:
    code = " ".join(number_words(rng.randint(0, 9)) for _ in range(3))
    pairs = [(f"Please remember this code: {code}.", f"Got it. I will remember {code}.")]
    pairs += [_filler(rng) for _ in range(exchanges - 2)]
    pairs.append(("What was the code I gave you at the start?", f"The code you gave me was {code}."))
    return pairs


@dataclass(frozen=True)
class DialogueSpec:
    stem: str  # <domain>_<idx>_<nturns>
    kind: str
    voices: tuple[str, str]
    pitches: tuple[int, int]
    speed: int
    emotion: tuple[str, str]
    exchanges: list[tuple[str, str]]


def dialogue_specs(dialogues: int, seed: int = 0, recall_exchanges: int = 8) -> list[DialogueSpec]:
    """The corpus' text and voices, decided by the seed alone."""
    specs = []
    for i in range(dialogues):
        rng = random.Random(f"{seed}:{i}")
        kind = KINDS[i % len(KINDS)]
        if kind == "numbers":
            exchanges = _numbers(rng, rng.randint(2, 4))
        elif kind == "names":
            exchanges = _names(rng, rng.randint(3, 5))
        else:
            exchanges = _recall(rng, recall_exchanges)
        voices = tuple(rng.sample(VOICES, 2))
        specs.append(DialogueSpec(
            stem=f"{kind}_{i + 1}_{2 * len(exchanges)}", kind=kind, voices=voices,  # type: ignore[arg-type]
            pitches=(rng.randint(35, 65), rng.randint(35, 65)), speed=rng.randint(150, 185),
            emotion=rng.choice(EMOTIONS), exchanges=exchanges,
        ))
    return specs


def speak(text: str, voice: str, pitch: int = 50, speed: int = 170) -> np.ndarray:
    """espeak-ng -> int16 PCM at 24 kHz (text on stdin, so nothing in it is read as an option)."""
    done = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout"],
                          input=text.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0 or not done.stdout:
        raise UserError(f"espeak-ng failed for voice {voice}: {done.stderr.decode(errors='replace').strip()}",
                        fix="check `espeak-ng --voices=en` works")
    data, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    audio = soxr.resample(data, rate, CORPUS_RATE) if rate != CORPUS_RATE else data
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype(np.int16)


def _write_dialogue(folder: Path, spec: DialogueSpec, audio: list[np.ndarray]) -> None:
    json_emotion, file_emotion = spec.emotion
    turns = []
    for user_text, reply_text in spec.exchanges:
        turns.append({"speaker": "LLM1", "text": user_text, "emotion": json_emotion})
        turns.append({"speaker": "LLM2", "text": reply_text, "emotion": json_emotion})
    data = {"domain": spec.kind, "timestamp": "2025-01-01 00:00:00", "model1": "omnittt/synthetic-espeak",
            "model2": "omnittt/synthetic-espeak", "conversation": turns}
    # ensure_ascii: like the real files, non-ASCII text (the \u2019 apostrophe) is written as \u escapes.
    (folder / f"{spec.stem}.json").write_text(json.dumps(data, indent=2, ensure_ascii=True) + "\n")
    seg_dir = folder / spec.stem / "segments"
    seg_dir.mkdir(parents=True)
    gap = np.zeros(CORPUS_RATE * 3 // 10, dtype=np.int16)
    rows = ["segment_id\tfilename\tspeaker\tmodel\tactor\toriginal_text\tsubstituted_text\tcleaned_text"
            "\tdialogue_emotion\travdess_emotion"]
    full = []
    for i, (turn, pcm) in enumerate(zip(turns, audio, strict=True), start=1):
        name = f"{i:03d}_{turn['speaker']}_{file_emotion}.wav"
        sf.write(seg_dir / name, pcm, CORPUS_RATE, subtype="PCM_16")
        voice = spec.voices[(i - 1) % 2]
        rows.append(f"{i}\t{name}\t{turn['speaker']}\t{data['model1']}\t{voice}\t{turn['text']}\t{turn['text']}"
                    f"\t{turn['text']}\t{json_emotion}\t{file_emotion}")
        full += [pcm, gap]
    sf.write(folder / spec.stem / f"{spec.stem}_full.wav", np.concatenate(full), CORPUS_RATE, subtype="PCM_16")
    (folder / spec.stem / "metadata.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


@dataclass
class SyntheticSummary:
    path: Path
    dialogues: int
    turns: int
    audio_sec: float
    created: bool  # False: the same corpus was already there


def make_synthetic_corpus(target: str | Path, dialogues: int = 20, seed: int = 0, recall_exchanges: int = 8,
                          workers: int = 2, progress: Any = None) -> SyntheticSummary:
    """Write the corpus to `target` (atomically: a killed run leaves nothing under that name). If `target`
    already holds the same corpus (same dialogues, seed and recall length) nothing is redone."""
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed (the synthetic corpus is spoken with it)",
                        fix="install it: apt-get install espeak-ng (or brew install espeak-ng)")
    if dialogues < 1:
        raise UserError("--dialogues must be at least 1", fix="e.g. --dialogues 20")
    if recall_exchanges < 3:
        raise UserError("recall dialogues need at least 3 exchanges", fix="use --recall-exchanges 3 or more")
    target = Path(target)
    params = {"dialogues": dialogues, "seed": seed, "recall_exchanges": recall_exchanges, "rate": CORPUS_RATE,
              "layout": "deepdialogue", "folder": FOLDER}
    if target.exists():
        marker = target / MARKER
        old = json.loads(marker.read_text()) if marker.exists() else None
        if old is not None and {k: old.get(k) for k in params} == params:
            return SyntheticSummary(target, dialogues, int(old.get("turns", 0)), float(old.get("audio_sec", 0)),
                                    created=False)
        raise UserError(f"{target}: already exists and is not this synthetic corpus",
                        fix="choose another --to, or delete the folder")
    specs = dialogue_specs(dialogues, seed, recall_exchanges)
    utterances = [(d, t, text, spec.voices[t % 2], spec.pitches[t % 2], spec.speed)
                  for d, spec in enumerate(specs)
                  for t, text in enumerate(x for pair in spec.exchanges for x in pair)]
    audio: list[list[np.ndarray]] = [[] for _ in specs]
    task = progress.add_task("speaking", total=len(utterances)) if progress is not None else None
    with ThreadPoolExecutor(max(1, workers)) as pool:  # espeak-ng runs as subprocesses: threads suffice
        for (d, _t, *_), pcm in zip(utterances, pool.map(lambda u: speak(*u[2:]), utterances), strict=True):
            audio[d].append(pcm)
            if task is not None:
                progress.advance(task)
    total_sec = sum(len(pcm) for turns in audio for pcm in turns) / CORPUS_RATE
    with atomic_directory(target) as tmp:
        folder = tmp / "data" / FOLDER
        folder.mkdir(parents=True)
        for d, spec in enumerate(specs):
            _write_dialogue(folder, spec, audio[d])
        atomic_write_json(tmp / MARKER, {**params, "turns": len(utterances), "audio_sec": round(total_sec, 3),
                                         "generator": "espeak-ng"})
    return SyntheticSummary(target, dialogues, len(utterances), total_sec, created=True)
