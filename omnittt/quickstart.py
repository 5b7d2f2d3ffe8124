"""`omnittt quickstart`: the whole pipeline offline on the tiny preset, in one folder.

The workflow in one place: the steps in order (synthetic corpus -> preprocess -> validate -> curriculum ->
train -> monitor -> eval -> chat), each the real commands' library calls with the quickstart's settings, where
each artefact goes, the record of what ran (summary.json), and the one number the commands do not print on
their own: the held-out loss before and after training, with each conversation's speech and with speech swapped
between conversations (`omnittt.train.loop.evaluate_loss`). How it is shown is a `View`'s business: `omnittt
quickstart` (omnittt/cli/quickstart.py) parses, calls `Quickstart.run` and renders each step with the commands'
own views.

Honesty rules: the held-out conversations are the last `val_conversations` of the dataset, which the trainer
never trains on (`TrainSettings.val_conversations`); the "before" figures are the same model, on the same
conversations, before its first optimizer step; the "after" figures are the trainer's own final validation
(also written to metrics.jsonl).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers.utils import logging as hf_logging

from omnittt.atomic import atomic_write_json, atomic_write_text
from omnittt.chat import open_chat
from omnittt.data.curriculum import STAGES
from omnittt.data.dataset import plan_stages
from omnittt.data.preprocess import PreprocessOptions, plan, run
from omnittt.data.store import open_dataset
from omnittt.data.validate import validate_dataset
from omnittt.errors import UserError
from omnittt.evaluation.evaluate import EvalOptions, evaluate
from omnittt.evaluation.statistics import StatOptions
from omnittt.inspect.run_state import MonitorSettings, RunState
from omnittt.train.settings import TrainSettings
from omnittt.train.setup import start_run

MARKER = "quickstart.json"  # written first into --dir: marks a folder this command may replace (--overwrite)
SUMMARY = "summary.json"
# Digits said and written back (omnittt.data.synthetic): the answer is only in the speech, and hearing is learnt
# within the budget (a phase change near step 200, docs/speech.md). Spoken recall needs ~1500 steps (docs/memory.md),
# more than the budget: benchmarks/speech_use.py holds it.
KINDS = ("repeat",)
CHAT_KIND = "repeat"  # the chat turn: digits said, written back
MINI_BATCH = 16  # the tiny model's TTT mini-batch: exchanges of ~100-400 positions waste little on padding
SEED = 0


@dataclass(frozen=True)
class Profile:
    """How much the quickstart does. `full` is the demo (goal: under 5 minutes on 2 cores), `fast` the CI check
    of the whole pipeline (goal: under 2)."""

    name: str
    dialogues: int  # synthetic dialogues, the kinds in turn
    recall_exchanges: int
    batch_size: int  # conversations per optimizer step
    val_conversations: int  # held out of training: the before/after loss is measured on them
    max_steps: int  # optimizer steps of the tiny preset
    eval_bootstrap: int
    chat_max_new_tokens: int


PROFILES = {
    "full": Profile("full", dialogues=500, recall_exchanges=6, batch_size=16, val_conversations=16, max_steps=300,
                    eval_bootstrap=500, chat_max_new_tokens=40),
    "fast": Profile("fast", dialogues=24, recall_exchanges=5, batch_size=4, val_conversations=4, max_steps=15,
                    eval_bootstrap=100, chat_max_new_tokens=24),
}

# The steps in order: (name, what it runs).
STEPS = (
    ("corpus", "a synthetic spoken-dialogue corpus (espeak-ng)"),
    ("preprocess", "omnittt preprocess synthetic"),
    ("validate", "omnittt validate"),
    ("curriculum", "omnittt curriculum"),
    ("train", "omnittt train --preset tiny"),
    ("monitor", "omnittt monitor --once"),
    ("eval", "omnittt eval"),
    ("chat", "omnittt chat --script (a held-out turn)"),
)


@dataclass(frozen=True)
class Paths:
    """Where every artefact of a quickstart goes, all under one folder."""

    root: Path

    corpus = property(lambda self: self.root / "corpus")  # the raw synthetic corpus (DeepDialogue layout)
    processed = property(lambda self: self.root / "processed_data")
    validate_report = property(lambda self: self.root / "validate.json")
    run = property(lambda self: self.root / "runs" / "tiny")
    eval_report = property(lambda self: self.root / "eval.json")
    chat_script = property(lambda self: self.root / "chat_script.txt")
    chat_transcript = property(lambda self: self.root / "chat_transcript.jsonl")
    summary = property(lambda self: self.root / SUMMARY)


def prepare_directory(root: str | os.PathLike, profile: Profile, overwrite: bool = False) -> Paths:
    """Create --dir. An earlier quickstart there is refused (or, with `overwrite`, removed); a folder this command
    did not make is never removed."""
    paths = Paths(Path(root))
    if paths.root.exists() and (not paths.root.is_dir() or any(paths.root.iterdir())):
        if not (paths.root / MARKER).is_file():
            raise UserError(f"{paths.root}: exists and was not made by omnittt quickstart",
                            fix="choose another --dir (nothing in this folder is touched)")
        if not overwrite:
            raise UserError(f"{paths.root}: holds an earlier quickstart",
                            fix=f"pass --overwrite to start over, or --dir another folder; its run is still there: "
                                f"omnittt monitor {paths.run} --once")
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.root / MARKER, {
        "profile": profile.name, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return paths


# -- the settings of each step --------------------------------------------------------------------------------
def workers() -> int:
    return os.cpu_count() or 1


def preprocess_options(paths: Paths) -> Any:
    return PreprocessOptions(source="synthetic", input_dir=str(paths.corpus), output=str(paths.processed),
                             mini_batch_size=MINI_BATCH, workers=workers())


def train_settings(paths: Paths, profile: Profile) -> Any:
    """The tiny preset on whole conversations (`--stage none`: the synthetic corpus is far shorter than the
    8k stage's sessions). Everything trains, the speech encoder too: a tiny encoder from scratch must learn to
    hear (docs/speech.md), unlike LLaMA-Omni's pretrained, frozen Whisper."""
    return TrainSettings(
        preset="tiny", data=str(paths.processed), stage="none", run=str(paths.run), train="all",
        ttt_mini_batch_size=MINI_BATCH, batch_size=profile.batch_size, tbptt_turns=4, lr=3e-3, warmup_steps=10,
        min_lr_ratio=1.0,
        max_steps=profile.max_steps, save_every=profile.max_steps, val_conversations=profile.val_conversations,
        log_ttt_every=5, fp32_check_every=10, num_threads=workers(), seed=SEED,
    )


def train_command(paths: Paths, profile: Profile) -> str:
    """The `omnittt train` line that does what the quickstart's training step does."""
    return (f"omnittt train --preset tiny --data {paths.processed} --stage none --run {paths.run} "
            f"--train all --ttt-mini-batch-size {MINI_BATCH} --batch-size {profile.batch_size} --tbptt-turns 4 "
            f"--lr 3e-3 --set min_lr_ratio=1.0 --max-steps {profile.max_steps} "
            f"--val-conversations {profile.val_conversations} --overwrite")


def eval_options(paths: Paths, profile: Profile) -> Any:
    return EvalOptions(run=str(paths.run), data=str(paths.processed), stage="none", batch_size=4, held_out=True,
                       stats=StatOptions(bootstrap=profile.eval_bootstrap),
                       device="cuda" if torch.cuda.is_available() else "cpu")


# -- held-out loss before and after ---------------------------------------------------------------------------
@dataclass
class HeldOut:
    """Held-out loss (nats per assistant token) with each conversation's own speech and with speech swapped."""

    conversation_ids: list[str] = field(default_factory=list)
    before: float | None = None
    before_swapped: float | None = None
    after: float | None = None
    after_swapped: float | None = None

    def measure_before(self, trainer: Any) -> None:
        """`trainer.validate()` on its held-out conversations before the first optimizer step, then with the
        speech swapped between them."""
        self.conversation_ids = [c.conversation_id for c in trainer.val_loader.dataset.conversations]
        self.before = trainer.validate()
        self.before_swapped = trainer.validate(swap_speech=True)

    def measure_after(self, trainer: Any) -> None:
        """The trainer's own final validation (the figure in metrics.jsonl), then with the speech swapped."""
        self.after = trainer.last_val_loss if trainer.last_val_loss is not None else trainer.validate()
        self.after_swapped = trainer.validate(swap_speech=True)
        trainer.last_val_loss = self.after

    def verdicts(self) -> list[str]:
        """What the figures show, in words, from the figures alone."""
        lines = []
        values = (self.before, self.after, self.before_swapped, self.after_swapped)
        if any(v is None or not math.isfinite(v) for v in values):
            return ["[red]a held-out loss is missing or not finite: nothing can be concluded[/red]"]
        drop = self.before - self.after
        lines.append(f"held-out loss {'fell' if drop > 0 else 'did not fall'} by {drop:.3f} nats/token "
                     f"({self.before:.3f} -> {self.after:.3f}) on {len(self.conversation_ids)} conversations "
                     "never trained on")
        gap = self.after_swapped - self.after
        if gap > 0.01:
            lines.append(f"swapping the speech costs {gap:.3f} nats/token: the model uses what the user said")
        else:
            lines.append(f"swapping the speech changes the loss by only {gap:+.5f} nats/token: after this short "
                         "run the model predicts the replies from the text context alone; using the speech takes "
                         "much longer training (omnittt train on real data)")
        return lines


# -- the chat turn ---------------------------------------------------------------------------------------------
@dataclass
class ChatTurn:
    conversation_id: str
    audio: Path  # the user's first turn of a held-out conversation (a corpus wav)
    said: str  # what that audio says
    expected: str  # the reply in the corpus


def held_out_turn(paths: Paths, held_out: list[str]) -> ChatTurn:
    """The first exchange of a held-out conversation (never trained on), from the raw corpus: a `repeat` one if
    there is one, whose reply needs what the audio says."""
    manifest = {str(line["conversation_id"]): line for line in open_dataset(paths.processed).manifest}
    conversation_id = next((c for c in held_out if manifest.get(c, {}).get("domain") == CHAT_KIND), held_out[0])
    line = manifest.get(conversation_id)
    if line is None or not line.get("source_path"):
        raise UserError(f"{conversation_id}: not in {paths.processed}/manifest.jsonl",
                        fix="rerun omnittt quickstart --overwrite")
    dialogue = paths.corpus / line["source_path"]
    turns = json.loads(dialogue.read_text())["conversation"]
    audio = sorted((dialogue.with_suffix("") / "segments").glob("001_*.wav"))
    if not audio or len(turns) < 2:
        raise UserError(f"{dialogue}: the first turn's audio is missing", fix="rerun omnittt quickstart --overwrite")
    return ChatTurn(conversation_id, audio[0], turns[0]["text"], turns[1]["text"])


def write_chat_script(paths: Paths, turn: ChatTurn) -> Path:
    atomic_write_text(paths.chat_script, f"# a held-out turn ({turn.conversation_id}): \"{turn.said}\"\n"
                                         f"{turn.audio.resolve()}\n/state\n")
    return paths.chat_script


# -- the record ------------------------------------------------------------------------------------------------
@dataclass
class Record:
    """summary.json: what ran, how long each step took, the figures, and where everything went."""

    profile: str
    dir: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"status", "seconds", ...}
    held_out: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    total_seconds: float = 0.0

    def step(self, name: str, status: str, seconds: float, **details: Any) -> None:
        self.steps[name] = {"status": status, "seconds": round(seconds, 2), **details}
        self.total_seconds = round(sum(step["seconds"] for step in self.steps.values()), 2)

    def write(self, paths: Paths) -> None:
        atomic_write_json(paths.summary, asdict(self))


# -- the workflow ----------------------------------------------------------------------------------------------
# What the end lists when it exists: name -> (the `Paths` attribute, what it holds).
ARTEFACTS = {
    "synthetic corpus": ("corpus", "24 kHz wavs + JSON, DeepDialogue-xtts layout"),
    "processed dataset": ("processed", "exchange samples, index, manifest, errors.jsonl"),
    "validation report": ("validate_report", "omnittt validate --output"),
    "run directory": ("run", "config.yaml, metrics.jsonl, ttt_state.jsonl, checkpoints/"),
    "eval report": ("eval_report", "omnittt eval --output"),
    "chat script": ("chat_script", "a held-out turn + /state"),
    "chat transcript": ("chat_transcript", "JSON lines"),
    "summary": ("summary", "step times, held-out figures, these paths"),
}


class View(Protocol):
    """How a quickstart is shown. The steps that have a command run through that command's own view (a progress
    display, its tables): `run_*` hooks get the library call to run and return its result; the others show."""

    def begin(self, quickstart: Quickstart) -> None: ...
    def step(self, number: int, name: str, title: str) -> None: ...
    def status(self, message: str, work: Callable[[], Any]) -> Any: ...
    def run_corpus(self, target: Path, dialogues: int, seed: int, recall_exchanges: int, kinds: list[str]) -> Any: ...
    def run_preprocess(self, plan: Any, run: Callable[..., Any]) -> Any: ...
    def run_validate(self, work: Callable[[Callable[[int, int], None]], Any]) -> Any: ...
    def curriculum(self, store: Any, plans: list[Any]) -> None: ...
    def run_train(self, command: str, prepare: Callable[[Any], Any]) -> None: ...
    def held_out(self, held_out: HeldOut) -> None: ...
    def monitor(self, summary: dict[str, Any]) -> None: ...
    def run_eval(self, work: Callable[[Any], dict[str, Any]]) -> dict[str, Any]: ...
    def run_chat(self, script: Path, turn: ChatTurn, load: Callable[[], tuple[Any, Any]]) -> str: ...
    def finish(self) -> None: ...


class Quickstart:
    """Runs the steps in order, each timed into summary.json; `view` shows them."""

    def __init__(self, paths: Paths, profile: Profile, view: View) -> None:
        self.paths = paths
        self.profile = profile
        self.view = view
        self.record = Record(profile=profile.name, dir=str(paths.root))
        self.held_out = HeldOut()
        self.trainer: Any = None  # set when training starts

    def run(self) -> None:
        self.view.begin(self)
        for number, (name, title) in enumerate(STEPS, start=1):
            self.view.step(number, name, title)
            started = time.perf_counter()
            details = getattr(self, f"_{name}")()
            self.record.step(name, "done", time.perf_counter() - started, **details)
            self.record.write(self.paths)
        for name, (attribute, _) in ARTEFACTS.items():
            if getattr(self.paths, attribute).exists():
                self.record.artefacts[name] = str(getattr(self.paths, attribute))
        self.record.write(self.paths)
        self.view.finish()

    # -- the steps: each returns what summary.json records of it -------------------------------------------------
    def _corpus(self) -> dict[str, Any]:
        summary = self.view.run_corpus(self.paths.corpus, self.profile.dialogues, SEED, self.profile.recall_exchanges,
                                       list(KINDS))
        return {"dialogues": summary.dialogues, "turns": summary.turns, "audio_sec": round(summary.audio_sec, 1)}

    def _preprocess(self) -> dict[str, Any]:
        summary = self.view.run_preprocess(plan(preprocess_options(self.paths)), run)
        if not summary.stats.get("samples"):
            raise UserError(f"{self.paths.processed}: preprocessing made no samples",
                            fix=f"see {self.paths.processed / 'errors.jsonl'}")
        return {"samples": summary.stats["samples"], "conversations": summary.stats["conversations"],
                "skipped": summary.stats["skipped"]}

    def _validate(self) -> dict[str, Any]:
        report = self.view.run_validate(lambda on_progress: validate_dataset(self.paths.processed, workers=workers(),
                                                                             on_progress=on_progress))
        atomic_write_json(self.paths.validate_report, report.to_dict())
        if not report.ok:
            raise UserError(f"{self.paths.processed}: validation found {report.errors} error(s)",
                            fix=f"see {self.paths.validate_report}")
        return {"errors": report.errors, "warnings": report.warnings, "samples": report.checked_samples}

    def _curriculum(self) -> dict[str, Any]:
        store = open_dataset(self.paths.processed)
        plans = plan_stages(store, list(STAGES))
        self.view.curriculum(store, plans)
        return {"stages": {plan.stage.name: len(plan.items) for plan in plans}}

    def _train(self) -> dict[str, Any]:
        settings = train_settings(self.paths, self.profile)

        def prepare(console: Any) -> Any:
            prepared = start_run(settings, console=console)
            self.trainer = prepared.trainer
            self.held_out.measure_before(prepared.trainer)  # the same model before its first step
            return prepared

        self.view.run_train(train_command(self.paths, self.profile), prepare)
        self.view.status("held-out loss after training, own and swapped speech ...",
                         lambda: self.held_out.measure_after(self.trainer))
        self.view.held_out(self.held_out)
        self.record.held_out = asdict(self.held_out)
        return {"steps": self.trainer.step, "positions": self.trainer.state.tokens,
                "skipped_windows": self.trainer.state.skipped, "checkpoint": str(self.trainer.last_checkpoint)}

    def _monitor(self) -> dict[str, Any]:
        state = RunState(self.paths.run, MonitorSettings())
        state.poll()
        summary = state.summary()
        self.view.monitor(summary)
        return {"fp32_ok": summary["fp32"]["ok"], "alerts": len(summary["alerts"])}

    def _eval(self) -> dict[str, Any]:
        report = self.view.run_eval(self._evaluate)
        atomic_write_json(self.paths.eval_report, report)
        return {"loss": report["runs"][0]["overall"].get("loss"), "uniform_loss": report["uniform_loss"]}

    def _evaluate(self, progress: Any) -> dict[str, Any]:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # as chat does: no warning about the `omnittt` model type while loading
        try:
            return evaluate(eval_options(self.paths, self.profile), progress=progress)
        finally:
            hf_logging.set_verbosity(verbosity)

    def _chat(self) -> dict[str, Any]:
        turn = held_out_turn(self.paths, self.held_out.conversation_ids)
        script = write_chat_script(self.paths, turn)
        reply = self.view.run_chat(script, turn, lambda: open_chat(self.paths.run, generation={
            "temperature": 0.0, "max_new_tokens": self.profile.chat_max_new_tokens}))
        return {"conversation_id": turn.conversation_id, "reply": reply, "expected": turn.expected}
