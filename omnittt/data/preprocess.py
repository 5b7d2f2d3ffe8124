"""`omnittt preprocess`: a corpus -> a processed dataset of exchange samples (docs/data_format.md:
"What an exchange becomes" and "The processed dataset").

How it stays correct when things go wrong:
- Bad input never stops the run (unless --strict): every skipped dialogue, turn or file gets a line in
  errors.jsonl with a reason; a bad exchange truncates its conversation there (the later exchanges are
  reported `after_hole`), or, with --split-at-holes, the later exchanges form a new conversation `<id>#2`.
- Workers only compute; the main process writes, in input order, so sample ids follow input order whatever
  the worker count. Each dialogue's samples are written atomically, then one line is appended to the journal
  (`.preprocess/journal.jsonl`). A rerun after a kill reads the journal (dropping a torn last line), skips the
  dialogues it holds and continues with the next sample id: it ends with exactly the samples of an
  uninterrupted run. The index files are written atomically from the journal at the end, index.json last.
- Crash tests inject faults through `OMNITTT_FAULT_AT=phase@n[,phase@n]` (`omnittt.faults`; phases: `sample`
  after the n-th sample file, `rename` between a sample's temp write and its rename, `journal` in the middle of
  the n-th dialogue's journal line, `finalize` after the n-th index file); `OMNITTT_FAULT_MODE=kill` makes the
  fault a SIGKILL.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.config import Settings
from omnittt.core.constants import ASSISTANT_ROLE, IGNORE_INDEX, USER_ROLE
from omnittt.core.prompt import Exchange, PromptBuilder, pair_turns
from omnittt.core.speech import SAMPLE_RATE, SPEECH_POSITION_MODES, padding_for, sample_positions, split_segments
from omnittt.core.tokenizer import build_default_tokenizer, chat_tokens, load_tokenizer, tokenizer_settings
from omnittt.data import store
from omnittt.data.audio import AudioError, audio_info, load_audio
from omnittt.data.conversation import Conversation
from omnittt.data.sources import (
    AUDIO_ONLY,
    DEFAULT_TASK,
    DEFAULT_USER_SPEAKER,
    PSEUDO_CONVERSATIONS,
    ConversationRef,
    SourceOptions,
    detect,
    get_source,
    resolve_input,
)
from omnittt.data.sources.commonvoice import DEFAULT_SPLIT as COMMONVOICE_SPLIT
from omnittt.errors import UserError
from omnittt.faults import fault_spec

TASKS = ("dialogue", "asr")
SPLIT_SOURCES = ("librispeech", "commonvoice", "librilight")  # sources with a --split choice
STATE_DIR = ".preprocess"
JOURNAL = "journal.jsonl"
IN_FLIGHT = 4  # dialogues queued per worker
ESTIMATE_DIALOGUES = 24  # dialogues read (evenly spread) to estimate the output size
# Problems of an assistant turn that make its text unusable (other assistant-turn problems concern its audio,
# which the dialogue task does not use).
_TEXT_PROBLEMS = ("bad_turn", "path_outside_input")


@dataclasses.dataclass
class PreprocessOptions(Settings):
    """Everything `omnittt preprocess` takes (CLI flags override these defaults)."""

    source: str = "deepdialogue"
    input_dir: str | None = None
    output: str = "processed_data"
    tokenizer: str | None = None
    format: str = "pt"
    task: str | None = None  # None: the source's task (asr for librispeech / commonvoice, else dialogue)
    user_speaker: str | None = None
    max_dialogues: int | None = None
    skip: int = 0
    workers: int = 1
    mini_batch_size: int = 64
    speech_positions: str = "trim"
    split_at_holes: bool = False
    strict: bool = False
    overwrite: bool = False
    split: str | None = None  # librispeech subset(s) / commonvoice TSV
    group_size: int = 16  # commonvoice clips per pseudo-conversation
    num_shards: int = 1  # this run processes block `shard_index` of `num_shards` equal blocks of dialogues
    shard_index: int = 0

    def source_options(self) -> SourceOptions:
        return SourceOptions(split=self.split, group_size=self.group_size)


# ----------------------------------------------------------------------------------------------- faults


class InjectedFault(BaseException):
    """Raised by OMNITTT_FAULT_AT (a BaseException so that no error handler swallows it)."""


class Faults:
    """`OMNITTT_FAULT_AT=phase@n[,phase@n]` (`omnittt.faults`): fail at the n-th time `hit(phase)` is reached in
    this run."""

    def __init__(self, spec: str | None = None, mode: str | None = None) -> None:
        self.mode = os.environ.get("OMNITTT_FAULT_MODE", "raise") if mode is None else mode
        self.at: dict[str, int] = {phase: n or 1 for phase, n in fault_spec(spec).items()}
        self.counts: Counter[str] = Counter()

    def armed(self, phase: str) -> bool:
        return phase in self.at

    def hit(self, phase: str) -> None:
        if phase not in self.at:
            return
        self.counts[phase] += 1
        if self.counts[phase] == self.at[phase]:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"injected fault at {phase}:{self.at[phase]}")


# ------------------------------------------------------------------------------------------ conversion


@dataclass
class Job:
    """What a worker needs to turn a conversation into samples."""

    root: Path
    source: str
    builder: PromptBuilder
    pad_id: int
    mini_batch_size: int
    speech_positions: str
    task: str
    user_speaker: str | None
    split_at_holes: bool


@dataclass
class DialogueResult:
    """One dialogue's samples (in order), its conversations (manifest lines, `num_samples` each), its skips."""

    conversation_id: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    speech_sec: float = 0.0
    clipped: int = 0
    converted: int = 0


def _rel(root: Path, path: str | os.PathLike | None) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _roles(conv: Conversation, task: str, user_speaker: str | None) -> list[str]:
    if task == "asr":
        return [USER_ROLE] * len(conv.turns)
    if user_speaker is None:
        user_speaker = next((t.speaker for t in conv.turns if t.speaker), None)
    return [t.role or (USER_ROLE if t.speaker == user_speaker else ASSISTANT_ROLE) for t in conv.turns]


def convert(conv: Conversation, job: Job) -> DialogueResult:
    """A conversation -> samples (one per exchange), manifest lines and error lines."""
    result = DialogueResult(conv.conversation_id)

    def error(reason: str, path: Any, detail: str = "", **where: int) -> None:
        result.errors.append({"path": _rel(job.root, path), "conversation_id": conv.conversation_id,
                              "reason": reason, **where, **({"detail": detail} if detail else {})})

    if conv.problem:
        error(conv.problem, conv.path, conv.problem_detail)
        return result
    part: dict[str, Any] | None = None
    part_number = 0
    hole = False
    for k, (u, a) in enumerate(_exchange_pairs(conv, job, error)):
        user, reply_turn = conv.turns[u], conv.turns[a]
        if hole and not job.split_at_holes:
            error("after_hole", user.audio_path or conv.path, exchange=k, turn=u)
            continue
        problem, audio = _load_exchange(conv, job, u, a)
        if problem is not None:
            error(problem[0], problem[1], problem[2], exchange=k, turn=u)
            if not conv.independent_turns:  # a pseudo-conversation just goes on without that utterance
                hole = True
                part = None  # with --split-at-holes, the next good exchange starts a new conversation
            continue
        if part is None:
            part_number += 1
            part = _new_part(conv, job.root, part_number)
            result.conversations.append(part)
        speech_text = "" if audio is not None else (user.text or "")
        result.samples.append(_sample(job, part, audio, speech_text, reply_turn.text or "", user.speaker))
        if audio is not None:
            result.speech_sec += audio.duration
            result.clipped += audio.clipped
            result.converted += int(audio.converted)
    return result


def _exchange_pairs(conv: Conversation, job: Job, error: Any) -> list[tuple[int, int]]:
    """(user turn, reply turn) per exchange; turns that cannot be paired are reported through `error`."""
    if job.task == "asr":
        return [(i, i) for i in range(len(conv.turns))]
    paired = pair_turns(_roles(conv, job.task, job.user_speaker))
    for turn_index, reason in paired.dropped:
        error(reason, conv.turns[turn_index].audio_path or conv.path, turn=turn_index)
    return paired.exchanges


def _load_exchange(conv: Conversation, job: Job, u: int, a: int) -> tuple[tuple[str, Any, str] | None, Any]:
    """(problem as (reason, path, detail) or None, the user turn's audio or None) of the exchange of turns u, a."""
    user, reply_turn = conv.turns[u], conv.turns[a]
    # The reply first: it is cheap to check and a missing reply saves decoding the audio.
    reply = reply_turn.text
    if reply_turn is not user and reply_turn.problem in _TEXT_PROBLEMS:
        return (reply_turn.problem, reply_turn.problem_path or conv.path, ""), None
    if reply is None or not reply.strip():
        named = reply_turn.problem_path if reply_turn.problem == "missing_text" else None
        return ("missing_text", named or conv.path, f"turn {a} has no text"), None
    if user.problem:
        return (user.problem, user.problem_path or user.audio_path or conv.path, ""), None
    if user.audio_path is not None:
        try:
            return None, load_audio(user.audio_path)
        except AudioError as exc:
            return (exc.reason, exc.path, exc.detail), None
    if job.task == "asr" or not (user.text or "").strip():
        # a text-only user turn is fine in a dialogue, but ASR needs the speech
        return ("missing_audio", conv.path, f"turn {u} has no audio"), None
    return None, None


def _new_part(conv: Conversation, root: Path, part_number: int) -> dict[str, Any]:
    """The manifest line of the conversation's `part_number`-th part (`<id>#n` after a hole with --split-at-holes)."""
    part_id = conv.conversation_id if part_number == 1 else f"{conv.conversation_id}#{part_number}"
    # source metadata first, so a corpus key never overrides the fields the loader relies on
    return {**conv.metadata, "conversation_id": part_id, "num_turns": 0, "total_tokens": 0,
            "duration_sec": 0.0, "source": conv.source, "group": conv.group,
            "source_path": _rel(root, conv.path), "num_samples": 0,
            **({"split_from": conv.conversation_id} if part_number > 1 else {})}


def _sample(job: Job, part: dict[str, Any], audio: Any, text: str, reply: str, speaker: str) -> dict[str, Any]:
    turn_number = part["num_turns"]
    speech = audio.samples if audio is not None else np.zeros(0, dtype=np.float32)
    segments = split_segments(len(speech)) if len(speech) else []
    prompt = job.builder.exchange(Exchange(len(segments), text, reply), first=turn_number == 0)
    original = sample_positions(len(prompt.input_ids), segments, job.speech_positions)  # type: ignore[arg-type]
    pad = padding_for(original, job.mini_batch_size)
    n = len(prompt.input_ids)
    part["num_turns"] += 1
    part["num_samples"] += 1
    part["total_tokens"] += original + pad
    part["duration_sec"] = round(part["duration_sec"] + len(speech) / SAMPLE_RATE, 4)
    return {
        "speech": speech,
        "speech_lengths": segments,
        "input_ids": prompt.input_ids + [job.pad_id] * pad,
        "labels": prompt.labels + [IGNORE_INDEX] * pad,
        "attention_mask": [1] * n + [0] * pad,
        "conversation_id": part["conversation_id"],
        "turn_number": turn_number,
        "speaker_id": speaker,
        "original_length": original,
        "prefix_len": prompt.prefix_len,
        "num_tokens": original + pad,
    }


_JOB: Job | None = None


def _set_job(job: Job) -> None:
    global _JOB
    _JOB = job


def _init_worker(job: Job) -> None:
    _set_job(job)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C


def _work(ref: ConversationRef) -> DialogueResult:
    assert _JOB is not None
    try:
        conv = get_source(_JOB.source).read(_JOB.root, ref, _JOB.source)
        return convert(conv, _JOB)
    except Exception as exc:  # input nobody foresaw: report the dialogue, keep the run going
        result = DialogueResult(ref.conversation_id)
        result.errors.append({"path": _rel(_JOB.root, ref.path), "conversation_id": ref.conversation_id,
                              "reason": "unexpected_error", "detail": f"{exc.__class__.__name__}: {exc}"[:300]})
        return result


# --------------------------------------------------------------------------------------------- journal


class Journal:
    """Append-only record of finished dialogues: a header line (the settings), then one line per dialogue."""

    def __init__(self, path: Path, faults: Faults) -> None:
        self.path = path
        self.faults = faults

    def read(self, repair: bool = True) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The header and the complete records; a torn last line (killed mid-append) is ignored, and with
        `repair` cut off the file."""
        if not self.path.exists():
            return None, []
        raw = self.path.read_bytes()
        good = raw.rfind(b"\n") + 1
        header, records = None, []
        for line in raw[:good].splitlines():
            row = json.loads(line)
            if header is None:
                header = row["header"]
            else:
                records.append(row)
        if repair and good != len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
        return header, records

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with open(self.path, "ab") as handle:
            if self.faults.armed("journal") and "header" not in row:
                handle.write(line[: len(line) // 2])
                handle.flush()
                self.faults.hit("journal")
                line = line[len(line) // 2:]
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """What a run will do, known before it writes anything (the CLI prints it)."""

    options: PreprocessOptions
    root: Path
    output: Path
    refs: list[ConversationRef]
    found: int  # dialogues discovered before --skip / --max-dialogues
    tokenizer: Any
    settings: dict[str, Any]
    done: int  # dialogues already in the journal (resume)
    estimate_bytes: int | None
    estimate_speech_sec: float | None
    detected: str | None = None  # `auto`: why INPUT was recognised as options.source
    selected: int = 0  # dialogues after --skip / --max-dialogues, before sharding


def _settings(options: PreprocessOptions, tok: Any, user_speaker: str | None) -> dict[str, Any]:
    return {
        "mini_batch_size": options.mini_batch_size,
        "speech_positions": options.speech_positions,
        **tokenizer_settings(tok),
        "pad_token_id": chat_tokens(tok).pad,
        "prefix_len": len(PromptBuilder(tok).prefix()),
        "sample_rate": SAMPLE_RATE,
        "task": options.task,
        "user_speaker": user_speaker,
        "source": options.source,
        "split_at_holes": options.split_at_holes,
        "format": options.format,
        "split": options.split,
        "group_size": options.group_size,
        # shard outputs record which block they hold (`omnittt preprocess merge` checks and drops these)
        **({"num_shards": options.num_shards, "shard_index": options.shard_index} if options.num_shards > 1 else {}),
    }


def resolve_source(options: PreprocessOptions) -> tuple[PreprocessOptions, str | None]:
    """`auto` -> the source INPUT holds (and why it was recognised); no --task -> the source's task."""
    detected = None
    if options.source == "auto":
        if options.input_dir is None:
            raise UserError("`auto` needs INPUT (the folder to look at)", fix="omnittt preprocess auto ./my_corpus")
        source, detected = detect(options.input_dir)
        options = dataclasses.replace(options, source=source)
    get_source(options.source)  # an unknown name fails here, in one line
    if options.task is None:
        options = dataclasses.replace(options, task=DEFAULT_TASK.get(options.source, "dialogue"))
    if options.source == "commonvoice" and not options.split:  # recorded in the settings as what it is
        options = dataclasses.replace(options, split=COMMONVOICE_SPLIT)
    return options, detected


def shard_block(refs: list[ConversationRef], num_shards: int, shard_index: int) -> list[ConversationRef]:
    """Block `shard_index` of `num_shards` contiguous, equal (+-1) blocks in input order: the same on every
    machine, and the blocks concatenated in shard order are the whole input, so merged shards number their
    samples exactly as one unsharded run would."""
    n = len(refs)
    return refs[n * shard_index // num_shards: n * (shard_index + 1) // num_shards]


def _check_options(options: PreprocessOptions) -> None:
    if options.task not in TASKS:
        raise UserError(f"unknown --task {options.task!r}", fix=f"use one of: {', '.join(TASKS)}")
    if options.source in AUDIO_ONLY:
        raise UserError(f"{options.source} is audio-only: it has no conversations to make samples from",
                        fix=f"`omnittt preprocess {options.source} INPUT --output DIR` writes an audio index "
                            "(omnittt.data.sources.librilight.build_index)")
    if options.source in PSEUDO_CONVERSATIONS and options.task != "asr":
        raise UserError(f"{options.source} has no dialogues (read speech, no replies): --task {options.task} "
                        "does not apply", fix="use --task asr (the default for this source)")
    if options.num_shards < 1 or not 0 <= options.shard_index < options.num_shards:
        raise UserError(f"--shard-index {options.shard_index} is not in 0..{options.num_shards - 1} "
                        f"(--num-shards {options.num_shards})", fix="e.g. --num-shards 3 --shard-index 0")
    if options.group_size <= 0:
        raise UserError("--group-size must be positive", fix="e.g. --group-size 16")
    if options.split and options.source not in SPLIT_SOURCES:
        raise UserError(f"--split does not apply to {options.source}",
                        fix=f"--split is for {', '.join(SPLIT_SOURCES)}; leave it out")
    if options.format not in store.FORMATS:
        raise UserError(f"unknown --format {options.format!r}", fix=f"use one of: {', '.join(store.FORMATS)}")
    if options.speech_positions not in SPEECH_POSITION_MODES:
        raise UserError(f"unknown --speech-positions {options.speech_positions!r}",
                        fix=f"use one of: {', '.join(SPEECH_POSITION_MODES)}")
    if options.mini_batch_size <= 0:
        raise UserError("--mini-batch-size must be positive", fix="use the model's TTT mini-batch size (64)")
    if options.workers < 0 or options.skip < 0 or (options.max_dialogues is not None and options.max_dialogues < 0):
        raise UserError("--workers, --skip and --max-dialogues take numbers >= 0", fix="e.g. --workers 2")


def _estimate(root: Path, source: str, refs: list[ConversationRef], task: str,
              user_speaker: str | None) -> tuple[int | None, float | None]:
    """Output size from the user audio of a few dialogues spread over the input (headers only)."""
    if not refs:
        return 0, 0.0
    step = max(1, len(refs) // ESTIMATE_DIALOGUES)
    picked = refs[::step][:ESTIMATE_DIALOGUES]
    reader = get_source(source)
    seconds = 0.0
    for ref in picked:
        conv = reader.read(root, ref, source)
        roles = _roles(conv, task, user_speaker)
        for turn, role in zip(conv.turns, roles, strict=True):
            if role == USER_ROLE and turn.audio_path is not None:
                info = audio_info(turn.audio_path)
                if info:
                    seconds += info[0] / max(info[1], 1)
    per_dialogue = seconds / len(picked)
    total_sec = per_dialogue * len(refs)
    # float32 speech + ~2.5 KB per sample of ids/labels/mask and pickling overhead, ~6 exchanges a dialogue.
    return int(total_sec * SAMPLE_RATE * 4 + len(refs) * 6 * 2500), total_sec


def plan(options: PreprocessOptions) -> Plan:
    """Validate the options, find the input, load the tokenizer, estimate: no writes."""
    options, detected = resolve_source(options)
    _check_options(options)
    reader = get_source(options.source)
    root = resolve_input(options.source, options.input_dir)
    output = Path(options.output).resolve()
    if output == root or root in output.parents:
        raise UserError(f"{output}: the output lies inside the input {root}", fix="choose another --output")
    all_refs = reader.discover(root, options.source_options())
    end = None if options.max_dialogues is None else options.skip + options.max_dialogues
    selected = all_refs[options.skip:end]
    refs = shard_block(selected, options.num_shards, options.shard_index)
    tok = load_tokenizer(options.tokenizer) if options.tokenizer else build_default_tokenizer()
    user_speaker = options.user_speaker or DEFAULT_USER_SPEAKER.get(options.source)
    settings = _settings(options, tok, user_speaker)
    journal_header, records = (None, []) if options.overwrite else \
        Journal(output / STATE_DIR / JOURNAL, Faults("")).read(repair=False)
    if journal_header is not None:
        _check_resume(output, journal_header, _header(options, root, settings, len(refs)))
    estimate = _estimate(root, options.source, refs, options.task, user_speaker) if refs else (0, 0.0)
    return Plan(options, root, output, refs, len(all_refs), tok, settings, len(records), *estimate,
                detected=detected, selected=len(selected))


def _header(options: PreprocessOptions, root: Path, settings: dict[str, Any], n: int) -> dict[str, Any]:
    return {**{k: v for k, v in settings.items() if k != "vocab_size"}, "input": str(root),
            "skip": options.skip, "max_dialogues": options.max_dialogues, "dialogues": n}


def _check_resume(output: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        shown = "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in differ[:4])
        raise UserError(f"{output} holds an unfinished or finished run with other settings ({shown})",
                        fix="rerun with the same flags to resume, or add --overwrite, or pick another --output")


# ------------------------------------------------------------------------------------------------- run


@dataclass
class Summary:
    stats: dict[str, Any]
    output: Path
    resumed_from: int
    already_complete: bool = False


def _prepare_output(plan: Plan) -> None:
    out = plan.output
    if plan.options.overwrite and out.exists():
        looks_ours = (out / store.INDEX_FILE).exists() or (out / STATE_DIR).exists() or not any(out.iterdir())
        if not looks_ours:
            raise UserError(f"{out}: not a processed dataset, refusing to delete it for --overwrite",
                            fix="choose another --output")
        shutil.rmtree(out)
    if out.exists() and not (out / STATE_DIR / JOURNAL).exists():
        # Only what a run killed before its first journal line leaves may be there.
        foreign = [p for p in out.iterdir() if p.name not in (STATE_DIR, store.TOKENIZER_DIR)
                   and not p.name.endswith(".tmp")]
        if foreign:
            what = "a processed dataset" if (out / store.INDEX_FILE).exists() else "other files"
            raise UserError(f"{out}: already holds {what}", fix="add --overwrite, or pick another --output")
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed run: temp files of atomic writes, a half-built arrow folder or cache.
    for stray in [*out.glob(".*.tmp"), *out.glob(f"{store.SAMPLES_DIR}/*/.*.tmp"), *out.glob(".arrow_cache.*")]:
        shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)


def _save_tokenizer(plan: Plan, fresh: bool) -> None:
    """A fresh run replaces any tokenizer left by a run killed before its journal existed; a resumed run
    has had its tokenizer fingerprint checked against the journal, so what is there is right."""
    target = plan.output / store.TOKENIZER_DIR
    if fresh and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        with atomic_directory(target) as tmp:
            plan.tokenizer.save_pretrained(str(tmp))


def _results(plan: Plan, job: Job, todo: list[ConversationRef]) -> Iterator[DialogueResult]:
    workers = plan.options.workers
    if workers <= 1:
        _set_job(job)
        for ref in todo:
            yield _work(ref)
        return
    # The tokenizers library would warn in every forked worker if the parent used its thread pool.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    # A bounded window of dialogues in flight, collected in input order: workers never run far ahead of
    # the writer, so memory stays flat on a 40k-dialogue corpus (Pool.imap would buffer without bound).
    refs = iter(todo)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        pending = deque(pool.apply_async(_work, (ref,)) for ref in itertools.islice(refs, IN_FLIGHT * workers))
        while pending:
            result = pending.popleft().get()
            following = next(refs, None)
            if following is not None:
                pending.append(pool.apply_async(_work, (following,)))
            yield result


def run(plan: Plan, progress: Any = None, on_error: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Process the planned dialogues (resuming a killed run) and write the dataset. `progress` is a rich
    Progress (optional); `on_error` sees each errors.jsonl line as it happens."""
    options, out = plan.options, plan.output
    faults = Faults()
    _prepare_output(plan)
    journal, records = _open_journal(plan, faults)
    if (out / store.INDEX_FILE).exists() and len(records) == len(plan.refs):
        stats = json.loads((out / store.STATS_FILE).read_text())
        return Summary(stats, out, len(records), already_complete=True)

    next_id = sum(len(r["index"]) for r in records)
    todo = plan.refs[len(records):]
    started = time.perf_counter()
    speech_done = 0.0
    hours = sum(r["speech_sec"] for r in records) / 3600
    task = None
    if progress is not None:
        task = progress.add_task("dialogues", total=len(plan.refs), completed=len(records), hours=hours, xrt=0.0)
    for n, result in enumerate(_results(plan, _job(plan), todo), start=len(records)):
        if options.strict and result.errors:
            bad = result.errors[0]
            raise UserError(f"{bad['path']}: {bad['reason']} ({bad['conversation_id']}) and --strict is on",
                            fix="fix or remove the file, or run without --strict to skip and report it")
        index = _write_samples(out, result, next_id, faults)
        next_id += len(index)
        for err in result.errors:
            if on_error is not None:
                on_error(err)
        journal.append({"n": n, "conversation_id": result.conversation_id, "index": index,
                        "manifest": result.conversations, "errors": result.errors,
                        "speech_sec": round(result.speech_sec, 4), "clipped": result.clipped,
                        "converted": result.converted})
        speech_done += result.speech_sec
        hours += result.speech_sec / 3600
        if progress is not None and task is not None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, hours=hours, xrt=speech_done / elapsed)
    elapsed = time.perf_counter() - started
    _, records = journal.read()
    stats = _finalize(plan, records, elapsed, speech_done, faults)
    return Summary(stats, out, plan.done)


def _open_journal(plan: Plan, faults: Faults) -> tuple[Journal, list[dict[str, Any]]]:
    """The output's journal and the dialogues it already holds: a new journal starts with the run's header, an
    existing one must have been written with the same settings. Saves the tokenizer beside it."""
    journal = Journal(plan.output / STATE_DIR / JOURNAL, faults)
    header = _header(plan.options, plan.root, plan.settings, len(plan.refs))
    old_header, records = journal.read()
    if old_header is None:
        journal.path.unlink(missing_ok=True)
        journal.append({"header": header})
    else:
        _check_resume(plan.output, old_header, header)
    _save_tokenizer(plan, fresh=old_header is None)
    return journal, records


def _job(plan: Plan) -> Job:
    options = plan.options
    return Job(root=plan.root, source=options.source, builder=PromptBuilder(plan.tokenizer),
               pad_id=chat_tokens(plan.tokenizer).pad, mini_batch_size=options.mini_batch_size,
               speech_positions=options.speech_positions, task=options.task,
               user_speaker=plan.settings["user_speaker"], split_at_holes=options.split_at_holes)


def _write_samples(out: Path, result: DialogueResult, first_id: int, faults: Faults) -> list[dict[str, Any]]:
    """Write a dialogue's samples as ids `first_id`, ... and return their index entries; sets each manifest
    line's `first_sample_id`."""
    index = []
    for sample_id, payload in enumerate(result.samples, start=first_id):
        sample = store.to_sample(**{k: payload[k] for k in store.SAMPLE_KEYS})
        rel = store.save_sample(out, sample_id, sample, before_rename=lambda: faults.hit("rename"))
        index.append({"sample_id": sample_id, "conversation_id": payload["conversation_id"],
                      "turn_number": payload["turn_number"], "num_tokens": payload["num_tokens"],
                      "original_length": payload["original_length"],
                      "audio_duration_sec": round(len(payload["speech"]) / SAMPLE_RATE, 4),
                      "speaker_id": payload["speaker_id"], "file_path": rel})
        faults.hit("sample")
    first = first_id
    for conv in result.conversations:
        conv["first_sample_id"] = first
        first += conv["num_samples"]
    return index


def _finalize(plan: Plan, records: list[dict[str, Any]], elapsed: float, speech_this_run: float,
              faults: Faults) -> dict[str, Any]:
    out, options = plan.output, plan.options
    index = [entry for r in records for entry in r["index"]]
    _remove_orphans(out, len(index))
    if options.format == "arrow":
        arrow = out / store.ARROW_DIR
        if arrow.exists():  # from a run killed after the arrow write but before index.json
            shutil.rmtree(arrow)
        with atomic_directory(arrow) as tmp:
            store.write_arrow(out, [str(out / e["file_path"]) for e in index], tmp)
    stats = dataset_stats(records, source=options.source, input_dir=str(plan.root), found=plan.found,
                          resumed_from=plan.done, elapsed=elapsed, speech_this_run=speech_this_run,
                          settings=plan.settings)
    write_dataset_files(out, records, stats, options.format, faults)
    if options.format == "arrow":
        shutil.rmtree(out / store.SAMPLES_DIR, ignore_errors=True)
    return stats


def dataset_stats(records: list[dict[str, Any]], *, source: str, input_dir: str, found: int, resumed_from: int,
                  elapsed: float, speech_this_run: float, settings: dict[str, Any]) -> dict[str, Any]:
    """preprocessing_stats.json from the journal records (a run's, or merged shards' in order)."""
    index = [entry for r in records for entry in r["index"]]
    errors = [err for r in records for err in r["errors"]]
    skipped = Counter(err["reason"] for err in errors)
    tokens = sum(e["num_tokens"] for e in index)
    real = sum(e["original_length"] for e in index)
    speech_sec = sum(r["speech_sec"] for r in records)
    return {
        "complete": True,
        "source": source,
        "input": input_dir,
        "dialogues_found": found,
        "dialogues": len(records),
        "dialogues_with_samples": sum(1 for r in records if r["index"]),
        "conversations": sum(len(r["manifest"]) for r in records),
        "samples": len(index),
        "speech_sec": round(speech_sec, 3),
        "speech_hours": round(speech_sec / 3600, 4),
        "total_tokens": tokens,
        "padding_tokens": tokens - real,
        "clipped_samples": sum(r["clipped"] for r in records),
        "converted_files": sum(r["converted"] for r in records),
        "skipped": dict(sorted(skipped.items())),
        "errors": len(errors),
        "elapsed_sec": round(elapsed, 3),
        "resumed_from_dialogue": resumed_from,
        "x_real_time": round(speech_this_run / elapsed, 2) if elapsed > 0 else None,
        "settings": settings,
    }


def write_dataset_files(out: Path, records: list[dict[str, Any]], stats: dict[str, Any], fmt: str,
                        faults: Faults | None = None) -> None:
    """errors.jsonl, manifest.jsonl, preprocessing_stats.json, then index.json (last: its presence means
    complete). The samples (pt files or the arrow folder) must already be in place."""
    faults = faults or Faults("")
    index = [dict(entry) for r in records for entry in r["index"]]
    if fmt == "arrow":
        for entry in index:
            entry["file_path"] = store.ARROW_DIR
    store.write_jsonl(out / store.ERRORS_FILE, [err for r in records for err in r["errors"]])
    faults.hit("finalize")
    store.write_jsonl(out / store.MANIFEST_FILE, [conv for r in records for conv in r["manifest"]])
    faults.hit("finalize")
    atomic_write_json(out / store.STATS_FILE, stats)
    faults.hit("finalize")
    atomic_write_json(out / store.INDEX_FILE, index, indent=None)


def _remove_orphans(out: Path, total: int) -> None:
    """Sample files beyond the journal's count (a dialogue killed half-written, then never redone)."""
    samples = out / store.SAMPLES_DIR
    if not samples.exists():
        return
    for shard in samples.iterdir():
        if shard.is_dir() and int(shard.name) >= total // store.SHARD_SIZE:
            for path in shard.glob("*.pt"):
                if int(path.stem) >= total:
                    path.unlink()


def preprocess(options: PreprocessOptions, progress: Any = None) -> Summary:
    """Plan and run in one call (tests, benchmarks, quickstart)."""
    return run(plan(options), progress)
