"""LibriLight (facebookresearch/libri-light), audio-only (docs/data_format.md `librilight`), in either layout it
ships in:

    raw:      <subset>/<speaker>/<book>/<file>.flac + <file>.json         subset: small, medium, large, duplicate
    vad_cut:  <out>/<speaker>/<book_id>/<file>_NNNN.flac (or .wav, .mp3)  written by data_preparation/cut_by_vad.py

The raw layout is what the tars hold (`omnittt download librilight --subset small`): one long recording per
flac, its .json holding `voice_activity` (the cut points: [start, end] seconds of speech). cut_by_vad.py cuts
each recording at those points into consecutive pieces of about --target_len_sec: `<file>_0000`, `_0001`, ...
in the numeric book-id folder, with no .json and no subset folder (`--out_extension` picks .flac/.wav/.mp3).

There are no transcripts and no conversations, so this source makes no samples. `omnittt preprocess
librilight` writes an audio index for a later pre-training stage instead:

    OUTPUT/audio_index.jsonl          one line per usable file, a recording's pieces consecutive and in order:
        path          relative to INPUT
        layout        "raw" or "vad_cut"
        subset        the folder the layout sits in (small, ... or the cut_by_vad.py output folder's name)
        speaker       the speaker folder (raw: the .json's `speaker` when it has one)
        book          the book folder (raw: `<title>_<id>_librivox`-like; vad_cut: the numeric book id)
        book_id       raw: the .json's book_meta.id; vad_cut: the book folder
        title         raw: the .json's book_meta.title; vad_cut: null
        recording     the long recording the file belongs to: the raw file's stem, or the cut file's stem
                      without `_NNNN` (so a raw file and its cuts share it)
        segment       0 for a raw file; NNNN (an int) for a cut: its place in the recording
        duration_sec, sample_rate, channels, frames   from the header
        snr           raw: the .json's snr; vad_cut: null
        metadata      raw: the file's own .json (speaker, book_meta, snr, voice_activity) or null; vad_cut: null
    OUTPUT/errors.jsonl               files skipped (unreadable / empty audio; misplaced: not at <speaker>/<book>/;
                                      in a cut folder a file not named `<stem>_NNNN.<ext>`: bad_name)
    OUTPUT/preprocessing_stats.json   counts and hours, `"kind": "audio_index"`, `"samples": 0`, per layout

Sessions of one long recording: the lines with the same (subset, speaker, recording), ordered by `segment`
(missing numbers are pieces that were skipped); a raw file is one segment whose `metadata.voice_activity` gives
the cut points. Only headers are read (fast: no decoding). A raw flac without its .json is indexed with
`metadata: null` and counted (`without_metadata`): its audio is still good for pre-training. INPUT is a subset
or cut folder, or the folder holding several (`--split small,medium` picks them by folder name).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from omnittt.atomic import atomic_write, atomic_write_json
from omnittt.data import store
from omnittt.data.sources import ConversationRef, SourceOptions
from omnittt.data.sources.commonvoice import mp3_unsupported
from omnittt.errors import UserError

INDEX_FILE = "audio_index.jsonl"
SUBSETS = ("small", "medium", "large", "duplicate")
RAW, VAD_CUT = "raw", "vad_cut"
CUT_EXTENSIONS = (".flac", ".wav", ".mp3")  # cut_by_vad.py --out_extension
_CUT = re.compile(r"^(.+)_(\d{4,})$")  # `<stem>_NNNN` (cut_by_vad.py writes f"_{i:04}": 5 digits past 9999)


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


def _is_cut(folder: Path) -> bool:
    """`<speaker>/<book_id>/` folders (numeric book id) of `<stem>_NNNN.{flac,wav,mp3}`, with no .json and no
    transcripts (LibriSpeech's chapters hold a .trans.txt, and its `<spk>-<chap>-NNNN.flac` has no `_NNNN`)."""
    for speaker in _subdirs(folder)[:3]:
        for book in _subdirs(speaker)[:2]:
            if not book.name.isdigit():
                continue
            names = os.listdir(book)
            if any(n.endswith(CUT_EXTENSIONS) and _CUT.match(n.rsplit(".", 1)[0]) for n in names) \
                    and not any(n.endswith((".json", ".txt")) for n in names):
                return True
    return False


def _layout(folder: Path) -> str | None:
    return RAW if _is_subset(folder) else VAD_CUT if _is_cut(folder) else None


def subsets(root: Path, split: str | None = None) -> list[tuple[Path, str]]:
    """(folder, layout) of each raw subset or VAD-cut folder: INPUT itself, or the folders it holds."""
    own = _layout(root)
    found = [(root, own)] if own else [(p, layout) for p in _subdirs(root) if (layout := _layout(p))]
    if split:
        wanted = {s.strip() for s in split.split(",")}
        found = [(p, layout) for p, layout in found if p.name in wanted]
    if not found:
        raise UserError(f"{root}: no LibriLight subset here (no <speaker>/<book>/*.flac + *.json folders, and no "
                        "<speaker>/<book_id>/<file>_NNNN.flac folders of cut_by_vad.py)",
                        fix="point INPUT at a subset folder (small/), a cut_by_vad.py output folder, or the folder "
                            "holding them")
    return found


def looks_like(root: Path) -> str | None:
    layout = _layout(root)
    if layout == RAW:
        return "a LibriLight subset folder (<speaker>/<book>/*.flac + *.json, no transcripts)"
    if layout == VAD_CUT:
        return "a LibriLight folder cut by cut_by_vad.py (<speaker>/<book_id>/<file>_NNNN.flac, no transcripts)"
    named = [f"{p.name}{' (cut by VAD)' if layout == VAD_CUT else ''}" for p, layout in
             ((p, _layout(p)) for p in _subdirs(root)) if layout]
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


def _audio_names(folder: Path, names: list[str], layout: str) -> list[str]:
    """The audio files of one folder in index order: a recording's cuts by their number (numerically)."""
    if layout == RAW:
        return sorted(n for n in names if n.endswith(".flac"))

    def key(name: str) -> tuple[str, int, str]:
        match = _CUT.match(name.rsplit(".", 1)[0])
        return (match.group(1), int(match.group(2)), name) if match else (name, -1, name)

    return sorted((n for n in names if n.endswith(CUT_EXTENSIONS)), key=key)


def _folders(root: Path, split: str | None) -> Iterator[tuple[Path, Path, str, list[str]]]:
    """(subset, folder, layout, audio file names in order) for every folder holding audio, in path order.
    Listed again on each pass rather than kept: a cut `large` holds millions of files."""
    for subset, layout in subsets(root, split):
        for dirpath, dirnames, filenames in os.walk(subset):
            dirnames.sort()
            names = _audio_names(Path(dirpath), filenames, layout)
            if names:
                yield subset, Path(dirpath), layout, names


def _entry(root: Path, subset: Path, path: Path, layout: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                                                     bool]:
    """(index line, error line, lacks its .json) for one audio file of `subset` (a subset or cut folder)."""
    rel = path.relative_to(root).as_posix()
    parts = path.relative_to(subset).parts  # speaker, book, file

    def skip(reason: str, detail: str) -> tuple[None, dict[str, Any], bool]:
        return None, {"path": rel, "conversation_id": "", "reason": reason, "detail": detail}, False

    if len(parts) != 3:
        return skip("misplaced", "not <speaker>/<book>/<file> in its subset folder")
    cut = _CUT.match(path.stem) if layout == VAD_CUT else None
    if layout == VAD_CUT and cut is None:
        return skip("bad_name", "not <file>_NNNN.<ext> as cut_by_vad.py names its pieces")
    try:
        if path.stat().st_size == 0:
            return skip("empty_audio", "zero-length file")
        info = sf.info(str(path))
    except Exception as exc:  # any libsndfile failure is an unreadable file
        return skip("unreadable_audio", str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__)
    if info.frames <= 0:
        return skip("empty_audio", "no audio frames")
    meta = None
    if layout == RAW:
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = None
    meta = meta if isinstance(meta, dict) else None
    book_meta = meta.get("book_meta") if meta and isinstance(meta.get("book_meta"), dict) else {}
    line = {
        "path": rel,
        "layout": layout,
        "subset": subset.name,
        "speaker": str(meta.get("speaker")) if meta and meta.get("speaker") else parts[0],
        "book": parts[1],
        "book_id": parts[1] if cut else book_meta.get("id"),
        "title": book_meta.get("title"),
        "recording": cut.group(1) if cut else path.stem,
        "segment": int(cut.group(2)) if cut else 0,
        "duration_sec": round(info.frames / info.samplerate, 4),
        "sample_rate": int(info.samplerate),
        "channels": int(info.channels),
        "frames": int(info.frames),
        "snr": meta.get("snr") if meta else None,
        "metadata": meta,
    }
    return line, None, layout == RAW and meta is None


def _check_mp3(found: list[tuple[Path, str]]) -> None:
    """cut_by_vad.py --out_extension .mp3: the libsndfile here must decode MP3 (else every file would be
    reported unreadable). One book folder per cut folder tells: the script writes one extension throughout."""
    for folder, layout in found:
        books = [book for speaker in _subdirs(folder)[:1] for book in _subdirs(speaker)[:1]]
        if layout != VAD_CUT or not books or not any(n.endswith(".mp3") for n in os.listdir(books[0])):
            continue
        reason = mp3_unsupported(sf.__libsndfile_version__, sf.available_formats())
        if reason:
            raise UserError(f"{folder}: the cut files are MP3, but {reason}",
                            fix="pip install -U 'soundfile>=0.12' (its wheels bundle libsndfile 1.2 with MP3)")


def _clear_output(root: Path, output: Path, overwrite: bool) -> None:
    """Refuse an output inside the input or holding other files; remove an earlier index or dataset when
    `overwrite` (what a killed run leaves, temp files of the index, is ours to replace)."""
    if output == root or root in output.parents:
        raise UserError(f"{output}: the output lies inside the input {root}", fix="choose another --output")
    if output.exists() and any(not p.name.startswith(f".{INDEX_FILE}") for p in output.iterdir()):
        ours = (output / INDEX_FILE).exists() or (output / store.INDEX_FILE).exists()
        if not overwrite or not ours:
            raise UserError(f"{output}: already holds {'a dataset or index' if ours else 'other files'}",
                            fix="add --overwrite, or pick another --output" if ours else "pick another --output")
        shutil.rmtree(output)


def build_index(root: Path, output: Path, split: str | None = None, overwrite: bool = False,
                progress: Any = None, settings: dict[str, Any] | None = None) -> IndexSummary:
    """Write OUTPUT/audio_index.jsonl (+ errors.jsonl, preprocessing_stats.json) for a LibriLight folder.
    `settings` (mini_batch_size, speech_positions, segment_sec) are recorded in the stats for the training view
    of the index (omnittt/data/audio_index_store.py)."""
    root, output = root.resolve(), output.resolve()
    _clear_output(root, output, overwrite)
    started = time.perf_counter()
    _check_mp3(subsets(root, split))
    found = sum(len(names) for _, _, _, names in _folders(root, split))  # a first pass, for the progress total
    task = progress.add_task("files", total=found) if progress is not None else None
    errors: list[dict[str, Any]] = []
    files = without_metadata = 0
    seconds = 0.0
    speakers: set[str] = set()
    books: set[str] = set()
    recordings: set[tuple[str, str, str]] = set()
    layouts: Counter[str] = Counter()
    output.mkdir(parents=True, exist_ok=True)

    def write_index(tmp: Path) -> None:
        # streamed: the voice_activity lists of a large subset would not fit in memory as Python objects
        nonlocal files, without_metadata, seconds
        with open(tmp, "w", encoding="utf-8") as handle:
            for subset, folder, layout, names in _folders(root, split):
                for name in names:
                    line, error, lacks_json = _entry(root, subset, folder / name, layout)
                    if line is not None:
                        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                        files += 1
                        without_metadata += int(lacks_json)
                        seconds += line["duration_sec"]
                        speakers.add(line["speaker"])
                        books.add(line["book"])
                        recordings.add((line["subset"], line["speaker"], line["recording"]))
                        layouts[layout] += 1
                    if error is not None:
                        errors.append(error)
                    if task is not None:
                        progress.update(task, advance=1)

    staged = output / f".{INDEX_FILE}.partial"
    atomic_write(staged, write_index)
    skipped = dict(sorted(Counter(e["reason"] for e in errors).items()))
    stats = {"complete": True, "kind": "audio_index", "source": "librilight", "input": str(root),
             "files_found": found, "files": files, "layouts": dict(sorted(layouts.items())), "samples": 0,
             "speech_sec": round(seconds, 3),
             "speech_hours": round(seconds / 3600, 4), "without_metadata": without_metadata, "skipped": skipped,
             "errors": len(errors), "elapsed_sec": round(time.perf_counter() - started, 3),
             "speakers": len(speakers), "books": len(books), "recordings": len(recordings),
             "settings": dict(settings or {})}
    store.write_jsonl(output / store.ERRORS_FILE, errors)
    atomic_write_json(output / store.STATS_FILE, stats)
    os.replace(staged, output / INDEX_FILE)  # last: its presence means complete
    return IndexSummary(output, files, seconds / 3600, without_metadata, skipped, stats)
