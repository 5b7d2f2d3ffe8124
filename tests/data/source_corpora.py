"""Generated corpora in the real layouts of LibriSpeech, DailyTalk, Common Voice and LibriLight
(docs/data_format.md "Input layouts"), each with defects, for tests/data/test_sources.py and test_shards.py. Audio is
short numpy tones written with soundfile (FLAC 16 kHz, WAV 44.1 kHz, MP3 48 kHz). Each builder returns what
a correct preprocessor must make of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


GARBAGE = b"this is not audio at all " * 40


def make_librispeech(base: Path) -> dict:
    """`base/LibriSpeech/{dev-clean,test-clean}/<spk>/<chap>/` with a README. Defects: in 84-121123 the flac
    of utterance 0001 is missing (its transcript line is there); in 174-50561 utterance 0003 has a flac but
    no transcript line; 251-136532 has an unreadable flac. Returns {conversation_id: {"texts": [kept
    transcripts in order], "errors": [(reason, path)]}} and the transcripts of every utterance."""
    root = base / "LibriSpeech"
    root.mkdir(parents=True)
    (root / "README.TXT").write_text("LibriSpeech ASR corpus\n")
    (root / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET | MINUTES | NAME\n84 | F | dev-clean | 8.02 | Christie\n")
    expect: dict = {}
    chapters = [("dev-clean", "84", "121123", 4), ("dev-clean", "174", "50561", 3), ("dev-clean", "251", "136532", 3),
                ("test-clean", "1089", "134686", 2)]
    for subset, spk, chap, n in chapters:
        folder = root / subset / spk / chap
        folder.mkdir(parents=True)
        lines, texts, errors = [], [], []
        for u in range(n):
            utt = f"{spk}-{chap}-{u:04d}"
            text = f"CHAPTER {chap} UTTERANCE {u} SAID BY {spk} DON'T STOP"
            sf.write(folder / f"{utt}.flac", tone(0.3 + 0.05 * u, 16_000, 180 + 20 * u), 16_000, subtype="PCM_16")
            lines.append(f"{utt} {text}")
            texts.append(text)
        rel = f"LibriSpeech/{subset}/{spk}/{chap}"
        if spk == "84":
            (folder / f"{spk}-{chap}-0001.flac").unlink()
            errors.append(("missing_audio", f"{rel}/{spk}-{chap}-0001.flac"))
            texts.pop(1)
        if spk == "174":
            sf.write(folder / f"{spk}-{chap}-0003.flac", tone(0.3, 16_000), 16_000, subtype="PCM_16")
            errors.append(("missing_text", f"{rel}/{spk}-{chap}-0003.flac"))
        if spk == "251":
            (folder / f"{spk}-{chap}-0002.flac").write_bytes(GARBAGE)
            errors.append(("unreadable_audio", f"{rel}/{spk}-{chap}-0002.flac"))
            texts.pop(2)
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
        expect[f"{subset}/{spk}-{chap}"] = {"texts": texts, "errors": errors}
    return expect


def make_dailytalk(base: Path) -> dict:
    """`base/DailyTalk/data/<d>/<u>_<spk>_d<d>.wav + .txt` (44.1 kHz), plus metadata.json in the real shape
    `{"<d>": {"<u>": {speaker, text, index, turn, topic, emotion, act}}}`. Dialogue 0 is clean (speaker 1 opens
    it, so speaker 1 is the user); in dialogue 1 the user's utterance 2 has no wav; in dialogue 2 the first wav
    does not decode; dialogue 10 checks numeric order and has no metadata entry. Returns {conversation_id:
    {"replies": [kept replies], "errors": [(reason, exchange)], "labels": {"topic", "emotions", "acts"} or
    None}}."""
    root = base / "DailyTalk"
    data = root / "data"
    (root).mkdir(parents=True)
    emotions = ("no emotion", "happiness", "surprise", "sadness", "anger", "disgust", "fear")
    acts = ("inform", "question", "directive", "commissive")
    topics = {0: "ordinary_life", 1: "work", 2: "relationship"}
    metadata: dict = {}
    expect: dict = {}
    for d, n, first in ((0, 4, 1), (1, 6, 0), (2, 4, 0), (10, 2, 1)):
        folder = data / str(d)
        folder.mkdir(parents=True)
        replies = []
        labels = {"topic": topics.get(d), "emotions": [], "acts": []} if d in topics else None
        for u in range(n):
            spk = first if u % 2 == 0 else 1 - first
            stem = folder / f"{u}_{spk}_d{d}"
            sf.write(stem.with_suffix(".wav"), tone(0.35, 44_100, 200 + 10 * u), 44_100, subtype="PCM_16")
            text = f"dialogue {d} utterance {u}: isn't it \"nice\"?"
            stem.with_suffix(".txt").write_text(text + "\n")
            if u % 2 == 1:
                replies.append(text)
            if labels is not None:
                emotion, act = emotions[(d + u) % len(emotions)], acts[(2 * d + u) % len(acts)]
                labels["emotions"].append(emotion)
                labels["acts"].append(act)
                metadata.setdefault(str(d), {})[str(u)] = {"speaker": spk, "text": text, "index": u, "turn": u // 2,
                                                           "topic": labels["topic"], "emotion": emotion, "act": act}
        errors: list = []
        if d == 1:
            (folder / "2_0_d1.wav").unlink()
            errors = [("missing_audio", 1), ("after_hole", 2)]
            replies = replies[:1]
        if d == 2:
            (folder / "0_0_d2.wav").write_bytes(GARBAGE)
            errors = [("unreadable_audio", 0), ("after_hole", 1)]
            replies = []
        expect[f"d{d}"] = {"replies": replies, "errors": errors, "labels": labels}
    (root / "metadata.json").write_text(json.dumps(metadata, indent=1))
    return expect


CV_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "variant",
             "locale", "segment"]
CLIENT_A = "a" * 20 + "0123456789abcdef" * 6
CLIENT_B = "b" * 20 + "fedcba9876543210" * 6


def make_commonvoice(base: Path) -> dict:
    """`base/cv-corpus-17.0/en/{clips/*.mp3, train.tsv, dev.tsv, validated.tsv}` (48 kHz MP3). Client A has
    6 train clips (clip 2 does not decode, clip 4 is missing), client B 3 (one sentence has an unbalanced
    `"`, which quoting would swallow). With group size 4: A-0000 (clips 0-3), A-0001 (4-5), B-0000.
    Returns {conversation_id: {"texts": [...], "errors": [(reason, clip)]}} for train."""
    locale = base / "cv-corpus-17.0" / "en"
    clips = locale / "clips"
    clips.mkdir(parents=True)
    rows = []
    expect: dict = {}
    for client, count, tag in ((CLIENT_A, 6, "a"), (CLIENT_B, 3, "b")):
        for i in range(count):
            name = f"common_voice_en_{tag}{i}.mp3"
            sentence = f"Speaker {tag} reads sentence {i}."
            if (tag, i) == ("b", 1):
                sentence = 'He said "hello and walked away.'
            sf.write(clips / name, tone(0.3, 48_000, 150 + 30 * i), 48_000, format="MP3")
            rows.append([client, name, sentence, "2", "0", "twenties", "", "", "", "en", ""])
    (clips / "common_voice_en_a2.mp3").write_bytes(GARBAGE)
    (clips / "common_voice_en_a4.mp3").unlink()
    texts_a = [r[2] for r in rows if r[0] == CLIENT_A]
    texts_b = [r[2] for r in rows if r[0] == CLIENT_B]
    pre = "en/train/"
    expect[f"{pre}{CLIENT_A[:16]}-0000"] = {"texts": [texts_a[i] for i in (0, 1, 3)],
                                             "errors": [("unreadable_audio", "common_voice_en_a2.mp3")]}
    expect[f"{pre}{CLIENT_A[:16]}-0001"] = {"texts": [texts_a[5]],
                                             "errors": [("missing_audio", "common_voice_en_a4.mp3")]}
    expect[f"{pre}{CLIENT_B[:16]}-0000"] = {"texts": texts_b, "errors": []}

    def tsv(name: str, body: list[list[str]]) -> None:
        (locale / name).write_text("\n".join("\t".join(r) for r in [CV_HEADER, *body]) + "\n", encoding="utf-8")

    tsv("train.tsv", rows)
    tsv("dev.tsv", rows[:2])
    tsv("validated.tsv", rows)
    return expect


def make_librilight(base: Path) -> dict:
    """`base/librilight/small/<spk>/<book>/<file>.flac + .json`: 3 good files (one without its .json), one
    unreadable flac. Returns the expected index paths (relative to INPUT) and error paths."""
    root = base / "librilight"
    good, bad = [], []
    for spk, book, name, seconds in (("100", "sea_fairies_0812_librivox", "sea_fairies_01_baum", 0.5),
                                     ("100", "sea_fairies_0812_librivox", "sea_fairies_02_baum", 0.7),
                                     ("2043", "emma_0001_librivox", "emma_01_austen", 0.4)):
        folder = root / "small" / spk / book
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{name}.flac", tone(seconds, 16_000), 16_000, subtype="PCM_16")
        if name != "emma_01_austen":
            (folder / f"{name}.json").write_text(json.dumps({
                "speaker": spk, "snr": 12.5,
                "book_meta": {"id": book.split("_")[-2], "title": book.split("_0")[0].replace("_", " "),
                              "genre": ["Fiction"], "Dramatic Readings": False, "meta_genre": "Literature"},
                "voice_activity": [[0.0, seconds / 2], [seconds / 2 + 0.05, seconds]]}))
        good.append((f"small/{spk}/{book}/{name}.flac", seconds))
    broken = root / "small" / "2043" / "emma_0001_librivox" / "emma_02_austen.flac"
    broken.write_bytes(GARBAGE)
    broken.with_suffix(".json").write_text(json.dumps({"speaker": "2043", "snr": 3.0, "book_meta": {}}))
    bad.append("small/2043/emma_0001_librivox/emma_02_austen.flac")
    return {"root": root, "good": sorted(good), "bad": bad}


def make_librilight_cut(base: Path, extension: str = ".flac") -> dict:
    """What libri-light's data_preparation/cut_by_vad.py writes: `base/<speaker>/<book_id>/<stem>_NNNN<ext>`,
    no .json, no subset folder. sea_fairies_01_baum is cut in 12 pieces (numbers past 9 check the order),
    sea_fairies_02_baum in 3 (piece 2 does not decode), emma_01_austen's pieces are numbered 9999 and 10000
    (`_{i:04}` grows a digit there); `notes<ext>` in its folder is not a cut. Returns the root, the expected
    {(speaker, book_id, recording): [(segment, duration_sec), ...]} and the error (path, reason) pairs."""
    import soundfile as sf

    recordings: dict = {}
    errors = []
    for spk, book, stem, segments in (("100", "0812", "sea_fairies_01_baum", range(12)),
                                      ("100", "0812", "sea_fairies_02_baum", range(3)),
                                      ("2043", "0001", "emma_01_austen", (9999, 10000))):
        folder = base / spk / book
        folder.mkdir(parents=True, exist_ok=True)
        for k, segment in enumerate(segments):
            name = f"{stem}_{segment:04}{extension}"
            if (stem, segment) == ("sea_fairies_02_baum", 2):
                (folder / name).write_bytes(GARBAGE)
                errors.append((f"{spk}/{book}/{name}", "unreadable_audio"))
                continue
            seconds = round(0.1 + 0.01 * k, 2)
            fmt = {".flac": "FLAC", ".wav": "WAV", ".mp3": "MP3"}[extension]
            sf.write(folder / name, tone(seconds, 16_000, 200 + 15 * k), 16_000, format=fmt)
            recordings.setdefault((spk, book, stem), []).append((segment, seconds))
    sf.write(base / "2043" / "0001" / f"notes{extension}", tone(0.1, 16_000), 16_000)
    errors.append((f"2043/0001/notes{extension}", "bad_name"))
    return {"root": base, "recordings": recordings, "errors": sorted(errors)}
