"""A generated long-form corpus in the LibriLight layouts, for the audio objective's tests and benchmark.

espeak-ng (`omnittt.data.synthetic.speak`) reads generated text: each speaker is one voice (variant, pitch and
speed of its own) and each book a vocabulary of its own, so what is the same across a recording, its speaker and
its book, is what a carried TTT state can learn. A recording is sentences with pauses between them; the pauses
are the voice activity (`[start, end]` seconds of every sentence).

    raw (layout "raw" or "both"):  TARGET/<subset>/<speaker>/<book>/<stem>.flac + <stem>.json
        the .json as LibriLight's: {"speaker", "book_meta": {"id", "title"}, "snr", "voice_activity"}
    cut (layout "cut" or "both"):  TARGET/<subset>_cut/<speaker>/<book_id>/<stem>_NNNN.flac
        the same recordings cut at the voice-activity pauses into pieces of at most `cut_sec` (as cut_by_vad.py
        does; `omnittt.data.audio_index_store.vad_chunks` is the one grouping rule)
    TARGET/longform.json           what was made: speakers (voice, pitch, speed), books, recordings, settings

16 kHz FLAC, as LibriLight ships. `omnittt preprocess librilight TARGET/<subset> --output DIR` indexes either.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.core.speech import SAMPLE_RATE
from omnittt.data.audio_index_store import vad_chunks
from omnittt.data.synthetic import CORPUS_RATE, speak
from omnittt.errors import UserError

MARKER = "longform.json"
LAYOUTS = ("raw", "cut", "both")
# (espeak-ng voice, pitch, words per minute): far apart, so a speaker is recognisable from its voice alone
SPEAKER_VOICES = [("en-us+m3", 35, 150), ("en-gb+f2", 70, 175), ("en-us+f4", 55, 135), ("en-gb+m1", 45, 190),
                  ("en-us+m7", 25, 165), ("en-us+f1", 80, 155)]
# book: (title, nouns, verbs, adjectives): the words a book's sentences are made of
BOOKS = [
    ("the_quiet_garden", ["rose", "tulip", "hedge", "meadow", "willow", "pond", "daisy", "orchard"],
     ["blooms", "grows", "waits", "sways"], ["green", "gentle", "silver", "early"]),
    ("voyage_of_the_comet", ["ship", "captain", "harbour", "anchor", "island", "storm", "sail", "compass"],
     ["drifts", "turns", "returns", "leans"], ["salty", "distant", "northern", "brave"]),
    ("the_clockmakers_son", ["clock", "gear", "spring", "workshop", "pendulum", "hammer", "bench", "tower"],
     ["ticks", "stops", "rings", "shines"], ["brass", "tiny", "ancient", "careful"]),
    ("letters_from_the_valley", ["river", "farmer", "village", "bridge", "harvest", "lantern", "mill", "goat"],
     ["rests", "sings", "crosses", "sleeps"], ["warm", "muddy", "golden", "quiet"]),
]


@dataclass(frozen=True)
class Recording:
    speaker: str
    voice: str
    pitch: int
    speed: int
    book: str  # the title
    book_id: str
    stem: str
    seed: int


def _sentence(rng: random.Random, book: tuple[str, list[str], list[str], list[str]]) -> str:
    _, nouns, verbs, adjectives = book
    a, b = rng.sample(nouns, 2)
    return f"the {rng.choice(adjectives)} {a} {rng.choice(verbs)} by the {b}, and the {b} {rng.choice(verbs)}."


def _recording_audio(rec: Recording, seconds: float) -> tuple[np.ndarray, list[list[float]]]:
    """16 kHz float32 audio of sentences read with pauses until `seconds`, and the voice activity."""
    rng = random.Random(rec.seed)
    book = next(b for b in BOOKS if b[0] == rec.book)
    pieces: list[np.ndarray] = [np.zeros(int(0.2 * SAMPLE_RATE), dtype=np.float32)]
    activity: list[list[float]] = []
    length = len(pieces[0])
    while length < seconds * SAMPLE_RATE:
        pcm = speak(_sentence(rng, book), rec.voice, pitch=rec.pitch, speed=rec.speed).astype(np.float32) / 32768
        voiced = soxr.resample(pcm, CORPUS_RATE, SAMPLE_RATE).astype(np.float32)
        activity.append([round(length / SAMPLE_RATE, 3), round((length + len(voiced)) / SAMPLE_RATE, 3)])
        pause = np.zeros(int(rng.uniform(0.3, 0.9) * SAMPLE_RATE), dtype=np.float32)
        pieces += [voiced, pause]
        length += len(voiced) + len(pause)
    return np.clip(np.concatenate(pieces), -1.0, 1.0), activity


def plan_recordings(speakers: int, books_per_speaker: int, recordings_per_book: int,
                    seed: int = 0) -> list[Recording]:
    """Who reads what: speaker i has voice i and reads `books_per_speaker` books (rotating through BOOKS)."""
    if not 1 <= speakers <= len(SPEAKER_VOICES):
        raise UserError(f"--speakers {speakers}: between 1 and {len(SPEAKER_VOICES)} voices are available",
                        fix=f"use --speakers 1..{len(SPEAKER_VOICES)}")
    if not 1 <= books_per_speaker <= len(BOOKS) or recordings_per_book < 1:
        raise UserError(f"books per speaker 1..{len(BOOKS)} and at least one recording per book",
                        fix="pass --books 2 --recordings 2, for instance")
    plan = []
    for s in range(speakers):
        voice, pitch, speed = SPEAKER_VOICES[s]
        speaker = str(100 + 11 * s)
        for b in range(books_per_speaker):
            index = (s + b) % len(BOOKS)
            title, book_id = BOOKS[index][0], str(1000 + index)
            for r in range(recordings_per_book):
                plan.append(Recording(speaker, voice, pitch, speed, title, book_id, f"{title}_{r + 1:02d}_{speaker}",
                                      seed * 100_003 + len(plan)))
    return plan


def _write_raw(folder: Path, rec: Recording, audio: np.ndarray, activity: list[list[float]]) -> None:
    book_dir = folder / rec.speaker / f"{rec.book}_{rec.book_id}_librivox"
    book_dir.mkdir(parents=True, exist_ok=True)
    sf.write(book_dir / f"{rec.stem}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
    meta = {"speaker": rec.speaker, "book_meta": {"id": rec.book_id, "title": rec.book.replace("_", " ")},
            "snr": 30.0, "voice_activity": activity}
    (book_dir / f"{rec.stem}.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")


def _write_cut(folder: Path, rec: Recording, audio: np.ndarray, activity: list[list[float]], cut_sec: float) -> int:
    """The recording cut at its pauses into <= `cut_sec` pieces `<stem>_NNNN.flac`; returns how many."""
    book_dir = folder / rec.speaker / rec.book_id
    book_dir.mkdir(parents=True, exist_ok=True)
    chunks = vad_chunks(activity, cut_sec)
    for i, (start, end) in enumerate(chunks):
        piece = audio[int(start * SAMPLE_RATE): int(end * SAMPLE_RATE)]
        sf.write(book_dir / f"{rec.stem}_{i:04d}.flac", piece, SAMPLE_RATE, subtype="PCM_16")
    return len(chunks)


def make_longform_corpus(target: str | Path, speakers: int = 3, books_per_speaker: int = 2,
                         recordings_per_book: int = 1, seconds: float = 180.0, seed: int = 0,
                         layout: str = "both", subset: str = "small", cut_sec: float = 16.0,
                         progress: Any = None) -> dict[str, Any]:
    """Write the corpus (see the module doc) into `target`, which must be empty or absent (atomically: a killed
    run leaves nothing under that name); returns what `longform.json` records."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}", fix=f"use one of {', '.join(LAYOUTS)}")
    if seconds <= 0 or not 0 < cut_sec <= 30:
        raise UserError("seconds per recording must be > 0 and cut pieces 0..30 s", fix="e.g. --seconds 180")
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target}: not empty", fix="choose a new folder, or remove this one")
    plan = plan_recordings(speakers, books_per_speaker, recordings_per_book, seed)
    task = progress.add_task("recordings", total=len(plan)) if progress is not None else None
    total = 0.0
    if target.exists():
        target.rmdir()  # empty: the finished corpus takes its place
    with atomic_directory(target) as tmp:
        for rec in plan:
            audio, activity = _recording_audio(rec, seconds)
            total += len(audio) / SAMPLE_RATE
            if layout in ("raw", "both"):
                _write_raw(tmp / subset, rec, audio, activity)
            if layout in ("cut", "both"):
                _write_cut(tmp / f"{subset}_cut", rec, audio, activity, cut_sec)
            if task is not None:
                progress.advance(task)
        record = {"generator": "omnittt/longform-espeak", "layout": layout, "subset": subset, "seed": seed,
                  "seconds_per_recording": seconds, "cut_sec": cut_sec, "hours": round(total / 3600, 4),
                  "recordings": [asdict(rec) for rec in plan]}
        atomic_write_json(tmp / MARKER, record)
    return record
