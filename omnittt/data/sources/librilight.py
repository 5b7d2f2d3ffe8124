"""LibriLight (facebookresearch/libri-light), audio-only (research/datasets.md 2.2):

    <subset>/<speaker>/<book>/<file>.flac + <file>.json      subset: small, medium, large, duplicate

There are no transcripts and no conversations, so this source makes no samples. `omnittt preprocess
librilight` writes an audio index for a later pre-training stage instead:

    OUTPUT/audio_index.jsonl          one line per usable file: path (relative to INPUT), subset, speaker, book,
                                      duration_sec, sample_rate, channels, frames, snr, and `metadata` = the
                                      file's own .json (speaker, book_meta, snr, voice_activity) or null
    OUTPUT/errors.jsonl               files skipped (unreadable / empty audio), as errors.jsonl elsewhere
    OUTPUT/preprocessing_stats.json   counts and hours, `"kind": "audio_index"`, `"samples": 0`

Only headers are read (fast: no decoding). A flac without its .json is indexed with `metadata: null` and
counted (`without_metadata`): its audio is still good for pre-training. INPUT is a subset folder or the
folder holding the subsets.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnittt.atomic import atomic_write, atomic_write_json
from omnittt.data import store
from omnittt.data.sources import ConversationRef, SourceOptions
from omnittt.errors import UserError

INDEX_FILE = "audio_index.jsonl"
SUBSETS = ("small", "medium", "large", "duplicate")


def _subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted((Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")),
                      key=lambda p: p.name)


def _is_subset(folder: Path) -> bool:
    """`<speaker>/<book>/` folders of `.flac` + `.json` (no `.trans.txt`: that is LibriSpeech)."""
    for speaker in _subdirs(folder)[:3]:
        for book in _subdirs(speaker)[:2]:
            names = os.listdir(book)
            if any(n.endswith(".flac") for n in names) and any(n.endswith(".json") for n in names) \
                    and not any(n.endswith(".trans.txt") for n in names):
                return True
    return False


def subsets(root: Path, split: str | None = None) -> list[Path]:
    found = [root] if _is_subset(root) else [p for p in _subdirs(root) if _is_subset(p)]
    if split:
        wanted = {s.strip() for s in split.split(",")}
        found = [p for p in found if p.name in wanted]
    if not found:
        raise UserError(f"{root}: no LibriLight subset here (no <speaker>/<book>/*.flac + *.json folders)",
                        fix="point INPUT at a subset folder (small/) or the folder holding the subsets")
    return found


def looks_like(root: Path) -> str | None:
    if _is_subset(root):
        return "a LibriLight subset folder (<speaker>/<book>/*.flac + *.json, no transcripts)"
    named = [p.name for p in _subdirs(root) if _is_subset(p)]
    return f"LibriLight subset folders ({', '.join(named)})" if named else None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    raise UserError("librilight is audio-only: it has no conversations to make samples from",
                    fix="`omnittt preprocess librilight INPUT --output DIR` writes an audio index instead")


@dataclass
class IndexSummary:
    output: Path
    files: int
    hours: float
    without_metadata: int
    skipped: dict[str, int]
    stats: dict[str, Any]


def _flacs(root: Path, split: str | None) -> list[Path]:
    paths = []
    for subset in subsets(root, split):
        for dirpath, dirnames, filenames in os.walk(subset):
            dirnames.sort()
            paths.extend(Path(dirpath) / n for n in sorted(filenames) if n.endswith(".flac"))
    return paths


def _entry(root: Path, path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """(index line, error line, had metadata) for one flac."""
    import soundfile as sf

    rel = path.relative_to(root).as_posix()
    parts = rel.split("/")

    def skip(reason: str, detail: str) -> tuple[None, dict[str, Any], bool]:
        return None, {"path": rel, "conversation_id": "", "reason": reason, "detail": detail}, False

    try:
        if path.stat().st_size == 0:
            return skip("empty_audio", "zero-length file")
        info = sf.info(str(path))
    except Exception as exc:  # any libsndfile failure is an unreadable file
        return skip("unreadable_audio", str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__)
    if info.frames <= 0:
        return skip("empty_audio", "no audio frames")
    meta = None
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    book_meta = meta.get("book_meta") if isinstance(meta, dict) and isinstance(meta.get("book_meta"), dict) else {}
    line = {
        "path": rel,
        "subset": parts[-4] if len(parts) >= 4 else root.name,
        "speaker": str(meta.get("speaker")) if isinstance(meta, dict) and meta.get("speaker") else parts[-3],
        "book": parts[-2],
        "book_id": book_meta.get("id"),
        "title": book_meta.get("title"),
        "duration_sec": round(info.frames / info.samplerate, 4),
        "sample_rate": int(info.samplerate),
        "channels": int(info.channels),
        "frames": int(info.frames),
        "snr": meta.get("snr") if isinstance(meta, dict) else None,
        "metadata": meta if isinstance(meta, dict) else None,
    }
    return line, None, isinstance(meta, dict)


def build_index(root: Path, output: Path, split: str | None = None, overwrite: bool = False,
                progress: Any = None) -> IndexSummary:
    """Write OUTPUT/audio_index.jsonl (+ errors.jsonl, preprocessing_stats.json) for a LibriLight folder."""
    import shutil

    root, output = root.resolve(), output.resolve()
    if output == root or root in output.parents:
        raise UserError(f"{output}: the output lies inside the input {root}", fix="choose another --output")
    # what a killed run leaves (temp files of the index) is ours to replace
    if output.exists() and any(not p.name.startswith(f".{INDEX_FILE}") for p in output.iterdir()):
        ours = (output / INDEX_FILE).exists() or (output / store.INDEX_FILE).exists()
        if not overwrite or not ours:
            raise UserError(f"{output}: already holds {'a dataset or index' if ours else 'other files'}",
                            fix="add --overwrite, or pick another --output" if ours else "pick another --output")
        shutil.rmtree(output)
    started = time.perf_counter()
    paths = _flacs(root, split)
    task = progress.add_task("files", total=len(paths)) if progress is not None else None
    errors: list[dict[str, Any]] = []
    files = without_metadata = 0
    seconds = 0.0
    speakers: set[str] = set()
    books: set[str] = set()
    output.mkdir(parents=True, exist_ok=True)

    def write_index(tmp: Path) -> None:
        # streamed: the voice_activity lists of a large subset would not fit in memory as Python objects
        nonlocal files, without_metadata, seconds
        with open(tmp, "w", encoding="utf-8") as handle:
            for path in paths:
                line, error, has_meta = _entry(root, path)
                if line is not None:
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                    files += 1
                    without_metadata += int(not has_meta)
                    seconds += line["duration_sec"]
                    speakers.add(line["speaker"])
                    books.add(line["book"])
                if error is not None:
                    errors.append(error)
                if task is not None:
                    progress.update(task, advance=1)

    staged = output / f".{INDEX_FILE}.partial"
    atomic_write(staged, write_index)
    skipped = dict(sorted(Counter(e["reason"] for e in errors).items()))
    stats = {"complete": True, "kind": "audio_index", "source": "librilight", "input": str(root),
             "files_found": len(paths), "files": files, "samples": 0, "speech_sec": round(seconds, 3),
             "speech_hours": round(seconds / 3600, 4), "without_metadata": without_metadata, "skipped": skipped,
             "errors": len(errors), "elapsed_sec": round(time.perf_counter() - started, 3),
             "speakers": len(speakers), "books": len(books)}
    store.write_jsonl(output / store.ERRORS_FILE, errors)
    atomic_write_json(output / store.STATS_FILE, stats)
    os.replace(staged, output / INDEX_FILE)  # last: its presence means complete
    return IndexSummary(output, files, seconds / 3600, without_metadata, skipped, stats)
