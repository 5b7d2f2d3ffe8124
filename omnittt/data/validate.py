"""Validation of a processed dataset: every check names the samples that fail it.

Structural checks read only the index, the manifest and the settings, so they always cover everything:
`settings`, `index` (fields, unique ids, paths inside the dataset, files exist) and `conversations` (turns
0..n-1, manifest agrees). Per-sample checks load samples (all, or a seeded sample) in parallel workers through
the store (`torch.load(weights_only=True)`: a pickle payload is refused, nothing executes): `format`, `audio`,
`alignment` (positions from the core speech arithmetic, as the model sees them), `labels` (only assistant
replies trained) and `tokens` (ids inside the vocabulary; length distribution and outliers).

Alignment is measured on LLM positions (speech spliced in), never on text tokens, and the per-sample work is a few
numpy passes over each sample.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import posixpath
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnittt.core.constants import (
    ASSISTANT_ROLE,
    DEFAULT_SPEECH_TOKEN,
    IGNORE_INDEX,
    SPEECH_TOKEN_INDEX,
)
from omnittt.core.speech import (
    SAMPLE_RATE,
    SEGMENT_SAMPLES,
    SPEECH_POSITION_MODES,
    padding_for,
    sample_positions,
)
from omnittt.core.tokenizer import chat_tokens, load_tokenizer, tokenizer_fingerprint
from omnittt.data.store import open_dataset
from omnittt.errors import UserError

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"

CHECKS: dict[str, str] = {
    "settings": "recorded settings present, tokenizer matches its fingerprint",
    "index": "fields, unique ids, paths inside the dataset, files exist",
    "conversations": "turns 0..n-1 contiguous, manifest agrees",
    "format": "keys, dtypes, shapes, safe load, agrees with the index",
    "audio": "16 kHz mono float32, finite, in [-1, 1], segments sum up, not silent",
    "alignment": "positions incl. padding a multiple of the mini-batch size",
    "labels": "some trained, only assistant replies, padding and speech ignored",
    "tokens": "ids inside the vocabulary, no <speech> id, length outliers",
}
STRUCTURAL = ("settings", "index", "conversations")
PER_SAMPLE = ("format", "audio", "alignment", "labels", "tokens")

INDEX_FIELDS = ("sample_id", "conversation_id", "turn_number", "num_tokens", "original_length",
                "audio_duration_sec")
TENSOR_DTYPES = {"speech": "float32", "speech_lengths": "int64", "input_ids": "int64", "labels": "int64",
                 "attention_mask": "int64"}
SCALAR_TYPES = {"conversation_id": str, "turn_number": int, "speaker_id": str, "original_length": int,
                "prefix_len": int}
REQUIRED_SETTINGS = ("mini_batch_size", "speech_positions", "tokenizer_name", "tokenizer_fingerprint",
                     "vocab_size", "sample_rate", "task")  # what the dataset depends on (docs/data_format.md)
SILENCE_PEAK = 1e-4  # about -80 dBFS: digital silence, not quiet speech
CLIP_LEVEL = 0.999
CLIP_SHARE_WARN = 0.001
DURATION_TOLERANCE_SEC = 1e-3
OUTLIER_IQR = 3.0
MIN_SAMPLES_PER_WORKER = 64  # below this, checking in-process beats starting a pool
MAX_OFFENDERS = 200  # kept per check in the JSON report (all are counted)


@dataclass
class CheckResult:
    name: str
    description: str
    passed: int = 0
    warned: int = 0
    failed: int = 0
    skipped: int = 0
    offenders: list[dict[str, str]] = field(default_factory=list)
    note: str = ""  # why a check could not run

    def add(self, level: str, item: str = "", message: str = "") -> None:
        if level == PASS:
            self.passed += 1
            return
        if level == SKIP:
            self.skipped += 1
            return
        if level == WARN:
            self.warned += 1
        else:
            self.failed += 1
        if len(self.offenders) < MAX_OFFENDERS:
            self.offenders.append({"level": level, "item": item, "message": message})

    @property
    def status(self) -> str:
        return FAIL if self.failed else WARN if self.warned else PASS if self.passed else SKIP

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "status": self.status, "passed": self.passed,
                "warned": self.warned, "failed": self.failed, "skipped": self.skipped,
                "offenders": self.offenders, "note": self.note}


@dataclass
class ValidationReport:
    data_dir: str
    format: str
    total_samples: int
    checked_samples: int
    sample_size: int | None
    seed: int
    workers: int
    checks: dict[str, CheckResult]
    token_stats: dict[str, Any] = field(default_factory=dict)
    skipped_inputs: dict[str, int] = field(default_factory=dict)  # what preprocessing left out, by reason
    elapsed_sec: float = 0.0

    @property
    def errors(self) -> int:
        return sum(check.failed for check in self.checks.values())

    @property
    def warnings(self) -> int:
        return sum(check.warned for check in self.checks.values())

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def samples_per_sec(self) -> float:
        return self.checked_samples / self.elapsed_sec if self.elapsed_sec > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir, "format": self.format, "ok": self.ok, "errors": self.errors,
            "warnings": self.warnings, "total_samples": self.total_samples,
            "checked_samples": self.checked_samples, "sample_size": self.sample_size, "seed": self.seed,
            "workers": self.workers, "elapsed_sec": round(self.elapsed_sec, 3),
            "samples_per_sec": round(self.samples_per_sec, 1),
            "checks": {name: check.to_dict() for name, check in self.checks.items()},
            "token_stats": self.token_stats, "skipped_inputs": self.skipped_inputs,
        }


@dataclass(frozen=True)
class SampleRules:
    """What the per-sample checks need, as plain values (sent once to every worker)."""

    data_dir: str
    mini_batch_size: int | None
    speech_positions: str
    vocab_size: int | None
    pad_id: int | None
    start_header: int | None = None
    end_header: int | None = None
    eot: int | None = None
    assistant_role: tuple[int, ...] = ()
    header_gap: tuple[int, ...] = ()  # the "\n\n" after a header
    speech_vocab_id: int | None = None  # the id of a "<speech>" text token, if the vocabulary has one


def sample_name(entry: dict[str, Any]) -> str:
    where = entry.get("file_path") or f"sample {entry.get('sample_id')}"
    return f"{where} (sample {entry.get('sample_id')}, {entry.get('conversation_id')} turn {entry.get('turn_number')})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inside(root: Path, path: Path) -> bool:
    """`path` (symlinks resolved) lies inside the resolved dataset directory `root`."""
    target = path.resolve()
    return target == root or root in target.parents


class SampleFiles:
    """Which index paths are safe to load: relative, no `..` escape, no symlink leading out of the dataset,
    and present. One directory listing per shard folder instead of a stat + resolve per file (the index of a
    large dataset has hundreds of thousands of entries)."""

    def __init__(self, data_dir: Path, rels: Iterable[Any]) -> None:
        self.root = data_dir.resolve()
        self.present: set[str] = set()
        self.escaping: set[str] = set()
        folders = {posixpath.dirname(rel) for rel in map(self.normal, rels) if rel is not None}
        for folder in folders:
            if not inside(self.root, self.root / folder):  # the folder itself is a link out
                self.escaping.add(folder)
                continue
            try:
                with os.scandir(self.root / folder) as entries:
                    for entry in entries:
                        rel = posixpath.join(folder, entry.name) if folder else entry.name
                        if entry.is_symlink() and not inside(self.root, Path(entry.path)):
                            self.escaping.add(rel)
                        elif entry.is_file():
                            self.present.add(rel)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                pass

    @staticmethod
    def normal(rel: Any) -> str | None:
        """The normalised relative path, or None for an absolute path / a `..` escape / not a path."""
        if not isinstance(rel, str) or not rel or os.path.isabs(rel):
            return None
        rel = posixpath.normpath(rel.replace(os.sep, "/"))
        return None if rel == ".." or rel.startswith("../") else rel

    def problem(self, rel: Any) -> str | None:
        normal = self.normal(rel)
        if normal is None or normal in self.escaping or posixpath.dirname(normal) in self.escaping:
            return f"file_path {rel!r} is not a relative path inside the dataset"
        if normal not in self.present:
            return f"file {rel} does not exist"
        return None


# ----------------------------------------------------------------------------------------------- structure

def check_settings(store: Any, result: CheckResult) -> tuple[dict[str, Any], Any]:
    """Settings the other checks depend on; returns (settings, tokenizer or None)."""
    settings = store.settings or {}
    where = "preprocessing_stats.json"
    missing = [key for key in REQUIRED_SETTINGS if settings.get(key) in (None, "")]
    if missing:
        result.add(FAIL, where, f"settings missing: {', '.join(missing)}")
    mbs = settings.get("mini_batch_size")
    if mbs is not None and (not _is_int(mbs) or mbs <= 0):
        result.add(FAIL, where, f"mini_batch_size {mbs!r} is not a positive integer")
    if settings.get("speech_positions") not in (None, *SPEECH_POSITION_MODES):
        result.add(FAIL, where, f"speech_positions {settings.get('speech_positions')!r} not in {SPEECH_POSITION_MODES}")
    if store.stats.get("complete") is False:
        result.add(FAIL, where, "preprocessing did not finish (complete: false)")
    if settings.get("sample_rate") not in (None, SAMPLE_RATE):
        result.add(FAIL, where, f"sample_rate {settings.get('sample_rate')} is not {SAMPLE_RATE}")
    tokenizer = None
    try:
        tokenizer = load_tokenizer(store.tokenizer_dir)
    except UserError as exc:
        result.add(FAIL, "tokenizer/", exc.message)
    except Exception as exc:  # a damaged tokenizer folder
        result.add(FAIL, "tokenizer/", f"cannot load the tokenizer ({exc.__class__.__name__}: {exc})")
    if tokenizer is not None:
        fingerprint = settings.get("tokenizer_fingerprint")
        if fingerprint and tokenizer_fingerprint(tokenizer) != fingerprint:
            result.add(FAIL, "tokenizer/", "tokenizer differs from the one recorded in the settings (fingerprint)")
            tokenizer = None
        elif settings.get("vocab_size") not in (None, len(tokenizer)):
            result.add(FAIL, "tokenizer/", f"vocab_size {settings.get('vocab_size')} != tokenizer's {len(tokenizer)}")
    if result.failed == 0:
        result.add(PASS)
    return settings, tokenizer


def check_index(store: Any, mini_batch_size: int | None, result: CheckResult) -> set[int]:
    """Index entries; returns the sample ids whose files are safe to load."""
    files = SampleFiles(Path(store.data_dir), (e.get("file_path") for e in store.index)) \
        if store.format == "pt" else None
    counts = Counter(entry.get("sample_id") for entry in store.index)
    loadable: set[int] = set()
    for entry in store.index:
        problems = [f"missing field {key}" for key in INDEX_FIELDS if key not in entry]
        sid = entry.get("sample_id")
        if counts[sid] > 1:
            problems.append(f"sample_id {sid} appears {counts[sid]} times")
        if not _is_int(sid) or sid < 0 or (store.format == "arrow" and sid >= len(store.index)):
            problems.append(f"sample_id {sid!r} is not a valid id")
        if files is not None and (problem := files.problem(entry.get("file_path"))):
            problems.append(problem)
        num_tokens, original = entry.get("num_tokens"), entry.get("original_length")
        if _is_int(num_tokens) and _is_int(original):
            if mini_batch_size and num_tokens % mini_batch_size:
                problems.append(f"num_tokens {num_tokens} is not a multiple of {mini_batch_size}")
            if not 0 < original <= num_tokens:
                problems.append(f"original_length {original} not in 1..num_tokens ({num_tokens})")
        if problems:
            result.add(FAIL, sample_name(entry), "; ".join(problems))
        else:
            result.add(PASS)
            loadable.add(sid)
    if not store.index:
        result.add(FAIL, "index.json", "the index holds no samples")
    recorded = store.stats.get("samples")
    if _is_int(recorded) and recorded != len(store.index):
        result.add(FAIL, "index.json", f"{len(store.index)} entries, preprocessing_stats.json says {recorded} samples")
    return loadable


def check_conversations(store: Any, result: CheckResult) -> None:
    turns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in store.index:
        turns[str(entry.get("conversation_id"))].append(entry)
    manifest: dict[str, dict[str, Any]] = {}
    for line in store.manifest:
        cid = str(line.get("conversation_id"))
        if cid in manifest:
            result.add(FAIL, f"manifest.jsonl {cid}", "conversation listed twice in the manifest")
        manifest[cid] = line
    for cid in sorted(turns):
        entries = turns[cid]
        numbers = sorted(e.get("turn_number") for e in entries if _is_int(e.get("turn_number")))
        problems = []
        if numbers != list(range(len(entries))):
            dup = sorted(n for n, c in Counter(numbers).items() if c > 1)
            gaps = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
            shown = f"{numbers[:12]}{'...' if len(numbers) > 12 else ''}"
            problems.append(f"turn numbers {shown} are not 0..{len(entries) - 1}"
                            + (f" (duplicates {dup})" if dup else "") + (f" (missing {gaps[:5]})" if gaps else ""))
        line = manifest.get(cid)
        if line is None:
            problems.append("not in manifest.jsonl")
        else:
            if line.get("num_turns") != len(entries):
                problems.append(f"manifest num_turns {line.get('num_turns')} != {len(entries)} samples")
            total = sum(int(e.get("num_tokens") or 0) for e in entries)
            if line.get("total_tokens") not in (None, total):
                problems.append(f"manifest total_tokens {line.get('total_tokens')} != {total}")
        if problems:
            result.add(FAIL, f"conversation {cid}", "; ".join(problems))
        else:
            result.add(PASS)
    for cid in sorted(set(manifest) - set(turns)):
        result.add(FAIL, f"conversation {cid}", "in manifest.jsonl but no sample has it")


# ----------------------------------------------------------------------------------------------- per sample

def check_sample(sample: Any, entry: dict[str, Any], rules: SampleRules) -> tuple[dict[str, tuple[str, str]], tuple]:
    """All per-sample checks on one loaded sample: {check: (level, message)} and its statistics
    (positions, text tokens, trained tokens, speech samples, ids array or None)."""
    out: dict[str, tuple[str, str]] = {}
    problems = _format_problems(sample, entry)
    if problems:
        out["format"] = (FAIL, "; ".join(problems))
        return {**out, **{name: (SKIP, "") for name in PER_SAMPLE if name != "format"}}, (0, 0, 0, 0, None)
    extra = sorted(set(sample) - set(TENSOR_DTYPES) - set(SCALAR_TYPES))
    out["format"] = (WARN, f"unexpected keys {extra}") if extra else (PASS, "")

    speech = sample["speech"].numpy()[:, 0]
    lengths = sample["speech_lengths"].numpy()
    ids = sample["input_ids"].numpy()
    labels = sample["labels"].numpy()
    mask = sample["attention_mask"].numpy()
    out["audio"] = _audio(speech, lengths, ids, entry)
    positions = None
    try:  # needs well-formed segment lengths (the audio check names them when they are not)
        positions = sample_positions(len(ids), lengths.tolist(), rules.speech_positions)
    except ValueError:
        pass
    if rules.mini_batch_size and positions is not None:
        out["alignment"] = _alignment(positions, ids, mask, sample, entry, rules)
    else:
        out["alignment"] = (SKIP, "")
    out["labels"] = _labels(ids, labels, mask, rules) if rules.start_header is not None else (SKIP, "")
    out["tokens"] = _tokens(ids, rules)
    real = (ids >= 0) & (mask == 1)
    stats = (positions or 0, int(real.sum()), int((labels != IGNORE_INDEX).sum()), len(speech),
             ids[real] if out["tokens"][0] != FAIL else None)
    return out, stats


def _format_problems(sample: Any, entry: dict[str, Any]) -> list[str]:
    if not isinstance(sample, dict):
        return [f"not a sample dict ({type(sample).__name__})"]
    problems = [f"missing key {key}" for key in (*TENSOR_DTYPES, *SCALAR_TYPES) if key not in sample]
    for key, dtype in TENSOR_DTYPES.items():
        value = sample.get(key)
        if key in sample and not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif key in sample and str(value.dtype).removeprefix("torch.") != dtype:
            problems.append(f"{key} dtype {str(value.dtype).removeprefix('torch.')} != {dtype}")
        elif key in sample and value.dim() != (2 if key == "speech" else 1):
            problems.append(f"{key} has shape {list(value.shape)}")
    for key, kind in SCALAR_TYPES.items():
        value = sample.get(key)
        if key in sample and not (isinstance(value, kind) and not isinstance(value, bool)):
            problems.append(f"{key} is {type(value).__name__}, not {kind.__name__}")
    if problems:
        return problems
    if sample["speech"].shape[1] != 1:
        problems.append(f"speech has shape {list(sample['speech'].shape)}, not [n, 1] (mono)")
    n = len(sample["input_ids"])
    if len(sample["labels"]) != n or len(sample["attention_mask"]) != n:
        problems.append(f"input_ids/labels/attention_mask lengths {n}/{len(sample['labels'])}/"
                        f"{len(sample['attention_mask'])} differ")
    for key in ("conversation_id", "turn_number", "original_length"):
        if key in entry and sample[key] != entry[key]:
            problems.append(f"{key} {sample[key]!r} != index {entry[key]!r}")
    prefix = sample["prefix_len"]
    if not 0 <= prefix <= n or (sample["turn_number"] > 0 and prefix) or (sample["turn_number"] == 0 and not prefix):
        problems.append(f"prefix_len {prefix} does not fit turn {sample['turn_number']} of {n} tokens")
    return problems


def _audio(speech: Any, lengths: Any, ids: Any, entry: dict[str, Any]) -> tuple[str, str]:
    n = len(speech)
    placeholders = int((ids == SPEECH_TOKEN_INDEX).sum())
    if int(lengths.sum()) != n:
        return FAIL, f"speech_lengths sum {int(lengths.sum())} != {n} speech samples"
    if placeholders != len(lengths):
        return FAIL, f"{placeholders} <speech> placeholders for {len(lengths)} segments"
    if len(lengths) and (lengths.min() <= 0 or lengths.max() > SEGMENT_SAMPLES):
        return FAIL, f"segment lengths {lengths.tolist()} outside 1..{SEGMENT_SAMPLES} samples"
    duration = entry.get("audio_duration_sec")
    if isinstance(duration, (int, float)) and abs(duration - n / SAMPLE_RATE) > DURATION_TOLERANCE_SEC:
        return FAIL, f"{n} samples at {SAMPLE_RATE} Hz = {n / SAMPLE_RATE:.3f} s, index says {duration} s (not 16 kHz?)"
    if n == 0:
        return PASS, ""
    # Two reductions instead of an |x| copy: NaN propagates through max/min, so they also test finiteness.
    high, low = float(speech.max()), float(speech.min())
    if not (math.isfinite(high) and math.isfinite(low)):
        return FAIL, f"{int((~np.isfinite(speech)).sum())} non-finite audio samples (NaN/inf)"
    top = max(high, -low)
    if top > 1.0:
        return FAIL, f"audio peak {top:.3f} outside [-1, 1]"
    start = 0
    for k, length in enumerate(lengths.tolist()):
        segment = speech[start:start + length]
        if max(float(segment.max()), -float(segment.min())) < SILENCE_PEAK:
            return FAIL, f"segment {k} is silent (peak < {SILENCE_PEAK})"
        start += length
    if top >= CLIP_LEVEL:
        clipped = int((speech >= CLIP_LEVEL).sum() + (speech <= -CLIP_LEVEL).sum())
        if clipped > CLIP_SHARE_WARN * n:
            return WARN, f"{clipped} clipped samples ({clipped / n:.2%})"
    return PASS, ""


def _alignment(positions: int, ids: Any, mask: Any, sample: dict[str, Any], entry: dict[str, Any],
               rules: SampleRules) -> tuple[str, str]:
    b = rules.mini_batch_size
    real = int(mask.sum())
    if not ((mask == 1) | (mask == 0)).all() or (mask[:real] != 1).any():
        return FAIL, "attention_mask is not ones followed by zeros (padding only at the end)"
    pad = len(ids) - real
    if positions % b:
        return FAIL, f"{positions} positions (speech spliced in) are not a multiple of the mini-batch size {b}"
    if positions - pad != sample["original_length"]:
        return FAIL, f"{positions} positions - {pad} padding != original_length {sample['original_length']}"
    if pad != padding_for(positions - pad, b):
        return FAIL, f"{pad} padding positions where {padding_for(positions - pad, b)} align to {b}"
    if entry.get("num_tokens") != positions:
        return FAIL, f"{positions} positions but the index says num_tokens {entry.get('num_tokens')}"
    if pad and rules.pad_id is not None and (ids[real:] != rules.pad_id).any():
        return FAIL, f"padding is not the pad token {rules.pad_id}"
    return PASS, ""


def assistant_spans(ids: Any, rules: SampleRules) -> list[tuple[int, int]]:
    """[start, end) of every assistant reply body (its `<eot>` included), found from the header tokens."""
    spans = []
    starts = np.flatnonzero(ids == rules.start_header).tolist()
    ends = np.flatnonzero(ids == rules.end_header).tolist()
    eots = np.flatnonzero(ids == rules.eot).tolist()
    role, gap = rules.assistant_role, rules.header_gap
    for s in starts:
        e = next((e for e in ends if e > s), None)
        if e is None or tuple(ids[s + 1:e].tolist()) != role:
            continue
        body = e + 1 + (len(gap) if tuple(ids[e + 1:e + 1 + len(gap)].tolist()) == gap else 0)
        stop = next((t for t in eots if t >= body), None)
        spans.append((body, (stop + 1) if stop is not None else len(ids)))
    return spans


def _labels(ids: Any, labels: Any, mask: Any, rules: SampleRules) -> tuple[str, str]:
    trained = labels != IGNORE_INDEX
    if not trained.any():
        return FAIL, "no label is trained (all are -100)"
    if (labels[trained] == SPEECH_TOKEN_INDEX).any() or (trained & (ids == SPEECH_TOKEN_INDEX)).any():
        return FAIL, "a <speech> position is trained"
    if (trained & (mask == 0)).any():
        return FAIL, f"padding position {int(np.flatnonzero(trained & (mask == 0))[0])} is trained"
    wrong = trained & (labels != ids)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        return FAIL, f"label {int(labels[i])} at position {i} is not the token {int(ids[i])} there"
    expected = np.zeros(len(ids), dtype=bool)
    spans = assistant_spans(ids, rules)
    for start, stop in spans:
        expected[start:stop] = True
    if not spans:
        return FAIL, "no assistant reply found (no assistant header)"
    outside = trained & ~expected
    if outside.any():
        return FAIL, f"position {int(np.flatnonzero(outside)[0])} is trained outside an assistant reply"
    missed = expected & ~trained
    if missed.any():
        return FAIL, f"assistant reply position {int(np.flatnonzero(missed)[0])} is not trained"
    return PASS, ""


def _tokens(ids: Any, rules: SampleRules) -> tuple[str, str]:
    text = ids[ids != SPEECH_TOKEN_INDEX]
    if len(text) and (text.min() < 0 or (rules.vocab_size and text.max() >= rules.vocab_size)):
        bad = sorted({int(i) for i in text if i < 0 or (rules.vocab_size and i >= rules.vocab_size)})
        return FAIL, f"ids {bad[:5]} outside the vocabulary 0..{(rules.vocab_size or 0) - 1}"
    if rules.speech_vocab_id is not None and (ids == rules.speech_vocab_id).any():
        return FAIL, f"{DEFAULT_SPEECH_TOKEN} appears as vocabulary id {rules.speech_vocab_id} (must be -200)"
    return PASS, ""


# ----------------------------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(rules: SampleRules, pooled: bool = True) -> None:
    if pooled:  # one thread per worker process; never change the caller's own torch settings

        torch.set_num_threads(1)
    _WORKER["rules"] = rules
    _WORKER["store"] = open_dataset(rules.data_dir)


def _check_chunk(entries: list[dict[str, Any]]) -> tuple[list[tuple], Any]:
    rules: SampleRules = _WORKER["rules"]
    store = _WORKER["store"]
    results = []
    counts = np.zeros(rules.vocab_size or 1, dtype=np.int64)
    for entry in entries:
        try:
            sample = store.load(entry)
        except UserError as exc:
            checks = {"format": (FAIL, f"refused to load: {exc.message}")}
            checks.update({name: (SKIP, "") for name in PER_SAMPLE if name != "format"})
            results.append((entry.get("sample_id"), sample_name(entry), checks, (0, 0, 0, 0)))
            continue
        checks, (positions, text, trained, n_speech, used) = check_sample(sample, entry, rules)
        if used is not None and rules.vocab_size:
            counts += np.bincount(used, minlength=rules.vocab_size)
        results.append((entry.get("sample_id"), sample_name(entry), checks, (positions, text, trained, n_speech)))
    return results, counts


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def sample_rules(store: Any, settings: dict[str, Any], tokenizer: Any) -> SampleRules:
    rules: dict[str, Any] = {
        "data_dir": str(store.data_dir),
        "mini_batch_size": settings.get("mini_batch_size") if _is_int(settings.get("mini_batch_size")) else None,
        "speech_positions": settings.get("speech_positions") or "trim",
        "vocab_size": len(tokenizer) if tokenizer is not None else settings.get("vocab_size"),
        "pad_id": None,
    }
    if tokenizer is not None:
        tokens = chat_tokens(tokenizer)
        vocab = tokenizer.get_vocab()
        rules.update(
            pad_id=tokens.pad, start_header=tokens.start_header, end_header=tokens.end_header, eot=tokens.eot,
            assistant_role=tuple(tokenizer.encode(ASSISTANT_ROLE, add_special_tokens=False)),
            header_gap=tuple(tokenizer.encode("\n\n", add_special_tokens=False)),
            speech_vocab_id=vocab.get(DEFAULT_SPEECH_TOKEN),
        )
    return SampleRules(**rules)


def select_samples(index: Sequence[dict[str, Any]], sample_size: int | None, seed: int) -> list[dict[str, Any]]:
    """All entries, or a seeded sample of them (in index order, for locality on disk)."""
    if sample_size is None or sample_size >= len(index):
        return list(index)
    if sample_size <= 0:
        raise UserError(f"--sample-size must be positive, got {sample_size}", fix="leave it out to check everything")
    chosen = sorted(random.Random(seed).sample(range(len(index)), sample_size))
    return [index[i] for i in chosen]


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def validate_dataset(
    data_dir: str | os.PathLike,
    sample_size: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Run every check; `on_progress(done, total)` is called as per-sample chunks finish. Raises `UserError`
    only when the dataset cannot be read at all (exit 2); problems in it go into the report."""
    started = time.perf_counter()
    store = open_dataset(data_dir)
    checks = {name: CheckResult(name, description) for name, description in CHECKS.items()}
    settings, tokenizer = check_settings(store, checks["settings"])
    rules = sample_rules(store, settings, tokenizer)
    if rules.mini_batch_size is None:
        checks["alignment"].note = "not run: the settings record no valid mini_batch_size"
    if tokenizer is None:
        checks["labels"].note = "not run: the dataset's tokenizer is missing or not the recorded one"
    loadable = check_index(store, rules.mini_batch_size, checks["index"])
    check_conversations(store, checks["conversations"])

    chosen = select_samples(store.index, sample_size, seed)
    safe = [entry for entry in chosen if entry.get("sample_id") in loadable]
    for entry in chosen:
        if entry.get("sample_id") not in loadable:  # named by the index check; never load an unsafe path
            for name in PER_SAMPLE:
                checks[name].add(SKIP)
    workers = max(1, workers or default_workers())
    results, counts, workers = _check_samples(safe, rules, workers, on_progress)

    token_stats = _token_stats(results, counts, tokenizer)
    for _sid, name, sample_checks, _stats in results:
        for check, (level, message) in sample_checks.items():
            checks[check].add(level, name, message)
    return ValidationReport(
        data_dir=str(store.data_dir), format=store.format, total_samples=len(store.index),
        checked_samples=len(chosen), sample_size=sample_size, seed=seed, workers=workers, checks=checks,
        token_stats=token_stats, skipped_inputs=dict(store.stats.get("skipped") or {}),
        elapsed_sec=time.perf_counter() - started,
    )


def _check_samples(safe: list[dict[str, Any]], rules: Any, workers: int,
                   on_progress: Callable[[int, int], None] | None) -> tuple[list[tuple], Any, int]:
    """The per-sample checks of `safe` in chunks, in worker processes unless too few samples make a pool worth
    it: (per-sample results, token id counts, the workers used)."""
    chunk = max(8, min(256, math.ceil(len(safe) / (workers * 8)) if safe else 8))
    results: list[tuple] = []
    counts = np.zeros(rules.vocab_size or 1, dtype=np.int64)
    done = 0
    if workers == 1 or len(safe) < workers * MIN_SAMPLES_PER_WORKER:  # a pool would cost more than it saves
        workers = 1
        _init_worker(rules, pooled=False)
        outputs: Iterable[tuple] = map(_check_chunk, _chunks(safe, chunk))
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(rules,))
        outputs = pool.imap(_check_chunk, _chunks(safe, chunk))
    try:
        for chunk_results, chunk_counts in outputs:
            results.extend(chunk_results)
            counts += chunk_counts
            done += len(chunk_results)
            if on_progress is not None:
                on_progress(done, len(safe))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _WORKER.clear()
    return results, counts, workers


def _summary(values: Any) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 25, 50, 75, 95, 100])
    return {"min": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(q[5]), "mean": float(np.mean(values))}


def _token_stats(results: list[tuple], counts: Any, tokenizer: Any) -> dict[str, Any]:
    """Length distributions over the checked samples; samples far above the rest turn their `tokens`
    check into a warning."""
    rows = [(checks, stats) for _sid, _name, checks, stats in results if checks["format"][0] != FAIL]
    if not rows:
        return {}
    positions = np.array([stats[0] for _name, stats in rows], dtype=np.float64)
    text = np.array([stats[1] for _name, stats in rows], dtype=np.float64)
    trained = np.array([stats[2] for _name, stats in rows], dtype=np.float64)
    speech_sec = np.array([stats[3] for _name, stats in rows], dtype=np.float64) / SAMPLE_RATE
    q1, q3 = np.percentile(positions, [25, 75])
    limit = q3 + OUTLIER_IQR * max(q3 - q1, 1.0)
    outliers = 0
    for (checks, _stats), p in zip(rows, positions, strict=True):
        if p > limit:
            outliers += 1
            if checks["tokens"][0] == PASS:
                checks["tokens"] = (WARN, f"{int(p)} positions, far above the rest (> {limit:.0f})")
    edges = np.unique(np.linspace(positions.min(), positions.max() + 1, 11).round())  # whole positions
    hist, edges = np.histogram(positions, bins=edges)
    top = np.argsort(counts)[::-1][:10]
    top_ids = [{"id": int(i), "token": tokenizer.convert_ids_to_tokens(int(i)) if tokenizer is not None else None,
                "count": int(counts[i])} for i in top if counts[i] > 0]
    return {
        "positions": _summary(positions),
        "positions_histogram": {"edges": [int(e) for e in edges], "counts": [int(c) for c in hist]},
        "text_tokens": _summary(text), "trained_tokens": _summary(trained),
        "speech_sec": _summary(speech_sec), "total_positions": int(positions.sum()),
        "total_trained_tokens": int(trained.sum()), "total_speech_hours": round(float(speech_sec.sum()) / 3600, 4),
        "distinct_ids": int((counts > 0).sum()), "top_ids": top_ids, "outlier_limit": float(limit),
        "outliers": outliers,
    }
