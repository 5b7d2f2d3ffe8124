"""A spoken-dialogue corpus made offline with espeak-ng, in the DeepDialogue-xtts layout (24 kHz PCM16 mono
segments `NNN_LLMx_<emotion>.wav`, one JSON per dialogue), so `omnittt preprocess synthetic` reads it with
the DeepDialogue source. Used by quickstart, tests, training and eval.

What a model can learn from it, and what eval can check (every task's answer is in the user's speech only, so a
model that does not hear cannot give it):
- `repeat`: the user says a few digits; the reply is the digits, written (the transcript task).
- `numbers`: the user says a number; the reply gives the next one or its double (and never writes the number
  said, so the answer follows from the speech only).
- `names`: the user says their name and a city; the replies use them.
- `recall`: the user says a code in the first exchange, and the reply does not repeat it; after several filler
  exchanges they ask for it, and the reply is the code (spoken recall: what was heard, kept in the state).
Each dialogue has two different voices (LLM1 = user, LLM2 = assistant); `voices` limits the user's voice to a set,
so an eval corpus can be spoken by voices no training dialogue has. Everything follows from the seed: the same
seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import soxr

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.errors import UserError

FOLDER = "dialogues_synthetic-espeak"
CORPUS_RATE = 24_000  # DeepDialogue-xtts' rate, so the resampling path is exercised
MARKER = "synthetic.json"
KINDS = ("numbers", "names", "recall")  # the default mix
ALL_KINDS = ("repeat", *KINDS)
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


def _digits(rng: random.Random, count: int) -> str:
    return " ".join(number_words(rng.randint(0, 9)) for _ in range(count))


class Exchange(NamedTuple):
    """One exchange, and what the user said that its reply needs: `answer` is the reply's ending that only the
    speech of exchange `heard` (an index in the dialogue) gives; None: nothing to score."""

    user: str
    reply: str
    answer: str | None = None
    heard: int | None = None


def _repeat(rng: random.Random, exchanges: int) -> list[Exchange]:
    digits = [_digits(rng, 4) for _ in range(exchanges)]
    return [Exchange(f"{d}.", f"You said {d}.", d, k) for k, d in enumerate(digits)]


def _numbers(rng: random.Random, exchanges: int) -> list[Exchange]:
    pairs = []
    for k in range(exchanges):
        n = rng.randint(1, 98)
        # the reply never writes the number said: under teacher forcing the answer would follow from the text
        if rng.random() < 0.5:
            pairs.append(Exchange(f"My number is {number_words(n)}. What comes after it?",
                                  f"The next number is {number_words(n + 1)}.", number_words(n + 1), k))
        else:
            pairs.append(Exchange(f"Please double the number {number_words(n)}.",
                                  f"Doubled, it is {number_words(2 * n)}.", number_words(2 * n), k))
    return pairs


def _filler(rng: random.Random) -> Exchange:
    colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
    if rng.random() < 0.5:
        return Exchange(f"I\u2019m thinking of a {colour} {thing}.", f"A {colour} {thing}, nice. Tell me more.")
    n = rng.randint(1, 49)
    return Exchange(f"I have {number_words(n)} {thing}s at home.",
                    f"{number_words(n).capitalize()} {thing}s, that is a lot.")


def _names(rng: random.Random, exchanges: int) -> list[Exchange]:
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    pairs = [Exchange(f"Hello, my name is {name}.", f"Nice to meet you, {name}!", name, 0),
             Exchange(f"I live in {city}.", f"{city} is a lovely city, {name}.")]
    pairs += [_filler(rng) for _ in range(max(0, exchanges - 3))]
    pairs.append(Exchange("Do you remember my name?", f"Yes, your name is {name} and you live in {city}.",
                          f"{name} and you live in {city}", 0))
    return pairs


def _recall(rng: random.Random, exchanges: int) -> list[Exchange]:
    code = _digits(rng, 3)
    pairs = [Exchange(f"Please remember this code: {code}.", "Got it. I will remember your code.")]
    pairs += [_filler(rng) for _ in range(exchanges - 2)]
    pairs.append(Exchange("What was the code I gave you at the start?", f"The code you gave me was {code}.", code, 0))
    return pairs


def query_table(exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """The recall probe's query table (docs/data_format.md): per scored reply, its exchange, the exchange whose
    speech holds the answer, and the answer."""
    return [{"exchange": k, "fact_exchange": x.heard, "answer": x.answer}
            for k, x in enumerate(exchanges) if x.answer is not None]


@dataclass(frozen=True)
class DialogueSpec:
    stem: str  # <domain>_<idx>_<nturns>
    kind: str
    voices: tuple[str, str]
    pitches: tuple[int, int]
    speed: int
    emotion: tuple[str, str]
    exchanges: list[Exchange]


def _exchanges(kind: str, rng: random.Random, recall_exchanges: tuple[int, int]) -> list[Exchange]:
    if kind == "repeat":
        return _repeat(rng, rng.randint(2, 4))
    if kind == "numbers":
        return _numbers(rng, rng.randint(2, 4))
    if kind == "names":
        return _names(rng, rng.randint(3, 5))
    return _recall(rng, rng.randint(*recall_exchanges))


def dialogue_specs(dialogues: int, seed: int = 0, recall_exchanges: int = 8, kinds: Sequence[str] = KINDS,
                   voices: Sequence[str] = VOICES, min_recall_exchanges: int | None = None) -> list[DialogueSpec]:
    """The corpus' text and voices, decided by the seed alone: kinds in turn, the user's voice from `voices`, a
    recall dialogue's length `recall_exchanges` or drawn from `min_recall_exchanges..recall_exchanges` (a mix of
    distances, which training needs: docs/memory.md)."""
    lengths = (min_recall_exchanges or recall_exchanges, recall_exchanges)
    specs = []
    for i in range(dialogues):
        rng = random.Random(f"{seed}:{i}")
        kind = kinds[i % len(kinds)]
        exchanges = _exchanges(kind, rng, lengths)
        user = rng.choice(list(voices))
        pair = (user, rng.choice([v for v in VOICES if v != user]))
        specs.append(DialogueSpec(
            stem=f"{kind}_{i + 1}_{2 * len(exchanges)}", kind=kind, voices=pair,
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
    for exchange in spec.exchanges:
        turns.append({"speaker": "LLM1", "text": exchange.user, "emotion": json_emotion})
        turns.append({"speaker": "LLM2", "text": exchange.reply, "emotion": json_emotion})
    # "recall" is ours, not DeepDialogue's: the probe's query table, which preprocessing keeps in the manifest
    data = {"domain": spec.kind, "timestamp": "2025-01-01 00:00:00", "model1": "omnittt/synthetic-espeak",
            "model2": "omnittt/synthetic-espeak", "conversation": turns,
            "recall": {"facts": 1, "queries": query_table(spec.exchanges)}}
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


def _check_choice(what: str, chosen: Sequence[str], known: Sequence[str]) -> None:
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise UserError(f"unknown synthetic {what} {unknown[0]!r}" if unknown else f"no synthetic {what} chosen",
                        fix=f"choose from: {', '.join(known)}")


@dataclass
class SyntheticSummary:
    path: Path
    dialogues: int
    turns: int
    audio_sec: float
    created: bool  # False: the same corpus was already there


def make_synthetic_corpus(target: str | Path, dialogues: int = 20, seed: int = 0, recall_exchanges: int = 8,
                          workers: int = 2, progress: Any = None, kinds: Sequence[str] = KINDS,
                          voices: Sequence[str] = VOICES, min_recall_exchanges: int | None = None,
                          ) -> SyntheticSummary:
    """Write the corpus to `target` (atomically: a killed run leaves nothing under that name). If `target`
    already holds the same corpus (same dialogues, seed, recall lengths, kinds and voices) nothing is redone."""
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed (the synthetic corpus is spoken with it)",
                        fix="install it: apt-get install espeak-ng (or brew install espeak-ng)")
    if dialogues < 1:
        raise UserError("--dialogues must be at least 1", fix="e.g. --dialogues 20")
    if recall_exchanges < 3:
        raise UserError("recall dialogues need at least 3 exchanges", fix="use --recall-exchanges 3 or more")
    if min_recall_exchanges is not None and not 2 <= min_recall_exchanges <= recall_exchanges:
        raise UserError(f"--min-recall-exchanges must be 2..{recall_exchanges} (--recall-exchanges), got "
                        f"{min_recall_exchanges}", fix="e.g. --min-recall-exchanges 2 --recall-exchanges 8")
    _check_choice("kind", kinds, ALL_KINDS)
    _check_choice("voice", voices, VOICES)
    target = Path(target)
    params = {"dialogues": dialogues, "seed": seed, "recall_exchanges": recall_exchanges, "rate": CORPUS_RATE,
              "layout": "deepdialogue", "folder": FOLDER, "kinds": list(kinds), "voices": list(voices),
              "min_recall_exchanges": min_recall_exchanges}
    if target.exists():
        marker = target / MARKER
        old = json.loads(marker.read_text()) if marker.exists() else None
        if old is not None and {k: old.get(k) for k in params} == params:
            return SyntheticSummary(target, dialogues, int(old.get("turns", 0)), float(old.get("audio_sec", 0)),
                                    created=False)
        raise UserError(f"{target}: already exists and is not this synthetic corpus",
                        fix="choose another --to, or delete the folder")
    specs = dialogue_specs(dialogues, seed, recall_exchanges, kinds, voices, min_recall_exchanges)
    utterances = [(d, t, text, spec.voices[t % 2], spec.pitches[t % 2], spec.speed)
                  for d, spec in enumerate(specs)
                  for t, text in enumerate(x for exchange in spec.exchanges for x in exchange[:2])]
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
