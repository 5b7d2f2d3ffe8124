"""`omnittt quickstart`: the whole pipeline offline on the tiny preset, rendered with each command's own views
(the settings and the held-out before/after figures are in omnittt/train/quickstart.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """The whole pipeline offline on a tiny model, in minutes: a synthetic spoken-dialogue corpus (espeak-ng),
preprocess, validate, the curriculum table, training of the tiny preset, the monitor summary, a short eval, and
a scripted chat turn from a conversation the model never trained on.

It shows learning honestly: the loss on held-out conversations before and after training, with their own speech
and with speech swapped between conversations. Every artefact goes under --dir; the end lists them and the
commands to try next. Rerunning into the same --dir is refused unless --overwrite.

--fast is the CI profile (fewer dialogues and steps); the default is the demo (goal: under 5 minutes on 2 cores).

Example: [bold]omnittt quickstart --dir quickstart --fast[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command("quickstart", help=HELP, short_help="The whole pipeline offline on a tiny model, in minutes.")
    @handle_errors
    def command(
        directory: Path = typer.Option(Path("quickstart"), "--dir", help="Folder for every artefact."),
        fast: bool = typer.Option(False, "--fast", help="The CI profile: 12 dialogues, 15 training steps."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier quickstart in --dir."),
    ) -> Any:
        from omnittt.train.quickstart import PROFILES, prepare_directory

        profile = PROFILES["fast" if fast else "full"]
        paths = prepare_directory(directory, profile, overwrite=overwrite)
        Quickstart(paths, profile).run()


class Quickstart:
    """Runs the steps in order, each under a rule with its number, timed into summary.json."""

    def __init__(self, paths: Any, profile: Any) -> None:
        from omnittt.console import console
        from omnittt.train.quickstart import HeldOut, Record

        self.paths = paths
        self.profile = profile
        self.console = console
        self.record = Record(profile=profile.name, dir=str(paths.root))
        self.held_out = HeldOut()
        self.trainer: Any = None  # set when training starts
        self.steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("corpus", "a synthetic spoken-dialogue corpus (espeak-ng)", self.corpus),
            ("preprocess", "omnittt preprocess synthetic", self.preprocess),
            ("validate", "omnittt validate", self.validate),
            ("curriculum", "omnittt curriculum", self.curriculum),
            ("train", "omnittt train --preset tiny", self.train),
            ("monitor", "omnittt monitor --once", self.monitor),
            ("eval", "omnittt eval", self.eval),
            ("chat", "omnittt chat --script (a held-out turn)", self.chat),
        ]

    def run(self) -> None:
        from rich.panel import Panel

        p = self.profile
        self.console.print(Panel(
            f"profile [bold]{p.name}[/bold]: {p.dialogues} synthetic dialogues, the tiny preset for {p.max_steps} "
            f"optimizer steps, {p.val_conversations} conversations held out of training\n"
            f"everything goes under [bold]{self.paths.root}[/bold]; nothing is downloaded",
            title="omnittt quickstart", expand=False))
        for number, (name, title, step) in enumerate(self.steps, start=1):
            self.console.rule(f"[bold]{number}/{len(self.steps)} {name}[/bold] [dim]{title}[/dim]", align="left")
            started = time.perf_counter()
            details = step()
            status = details.pop("status", "done")
            self.record.step(name, status, time.perf_counter() - started, **details)
            self.record.write(self.paths)
        self.finish()

    # -- the steps ---------------------------------------------------------------------------------------------
    def corpus(self) -> dict[str, Any]:
        from omnittt.cli.download import synthetic
        from omnittt.train.quickstart import SEED

        summary = synthetic(self.paths.corpus, self.profile.dialogues, SEED, self.profile.recall_exchanges)
        return {"dialogues": summary.dialogues, "turns": summary.turns, "audio_sec": round(summary.audio_sec, 1)}

    def preprocess(self) -> dict[str, Any]:
        from omnittt.cli.preprocess import print_plan, print_summary, run_with_progress
        from omnittt.data.preprocess import plan, run
        from omnittt.errors import UserError
        from omnittt.train.quickstart import preprocess_options

        the_plan = plan(preprocess_options(self.paths))
        print_plan(the_plan)
        summary = run_with_progress(the_plan, run)
        print_summary(summary)
        if not summary.stats.get("samples"):
            raise UserError(f"{self.paths.processed}: preprocessing made no samples",
                            fix=f"see {self.paths.processed / 'errors.jsonl'}")
        return {"samples": summary.stats["samples"], "conversations": summary.stats["conversations"],
                "skipped": summary.stats["skipped"]}

    def validate(self) -> dict[str, Any]:
        from omnittt.atomic import atomic_write_json
        from omnittt.cli.validate import render
        from omnittt.console import make_progress
        from omnittt.data.validate import validate_dataset
        from omnittt.errors import UserError
        from omnittt.train.quickstart import workers

        with make_progress(transient=True) as progress:
            task = progress.add_task("checking samples", total=None)
            report = validate_dataset(self.paths.processed, workers=workers(),
                                      on_progress=lambda done, total: progress.update(task, completed=done,
                                                                                      total=total))
        render(report, self.console)
        atomic_write_json(self.paths.validate_report, report.to_dict())
        if not report.ok:
            raise UserError(f"{self.paths.processed}: validation found {report.errors} error(s)",
                            fix=f"see {self.paths.validate_report}")
        return {"errors": report.errors, "warnings": report.warnings, "samples": report.checked_samples}

    def curriculum(self) -> dict[str, Any]:
        from omnittt.cli.curriculum import render
        from omnittt.data.curriculum import STAGES
        from omnittt.data.dataset import plan_stages
        from omnittt.data.store import open_dataset

        store = open_dataset(self.paths.processed)
        plans = plan_stages(store, list(STAGES))
        render(store, plans, self.console)
        self.console.print("[bold]quickstart:[/bold] the synthetic corpus is far shorter than the 8k stage's sessions, "
                           "so the tiny model trains on whole conversations ([bold]--stage none[/bold]); real corpora "
                           "go through the stages (see the README's walkthrough).")
        return {"stages": {plan.stage.name: len(plan.items) for plan in plans}}

    def train(self) -> dict[str, Any]:
        from dataclasses import asdict

        from omnittt.cli.train import run_prepared
        from omnittt.train.quickstart import train_command, train_settings
        from omnittt.train.setup import start_run

        settings = train_settings(self.paths, self.profile)
        self.console.print(f"[dim]the same as: {train_command(self.paths, self.profile)}[/dim]", soft_wrap=True)

        def prepare(console: Any) -> Any:
            prepared = start_run(settings, console=console)
            self.trainer = prepared.trainer
            self.held_out.measure_before(prepared.trainer)  # the same model before its first step
            return prepared

        run_prepared(prepare)
        with self.console.status("held-out loss after training, own and swapped speech ..."):
            self.held_out.measure_after(self.trainer)
        self.render_held_out()
        self.record.held_out = asdict(self.held_out)
        return {"steps": self.trainer.step, "positions": self.trainer.state.tokens,
                "skipped_windows": self.trainer.state.skipped, "checkpoint": str(self.trainer.last_checkpoint)}

    def monitor(self) -> dict[str, Any]:
        from omnittt.cli.monitor import render_summary
        from omnittt.inspect.run_state import MonitorSettings, RunState

        state = RunState(self.paths.run, MonitorSettings())
        state.poll()
        summary = state.summary()
        self.console.print(render_summary(summary))
        return {"fp32_ok": summary["fp32"]["ok"], "alerts": len(summary["alerts"])}

    def eval(self) -> dict[str, Any]:
        ready = self.available("eval")
        if ready is not None:
            return ready
        from omnittt.atomic import atomic_write_json
        from omnittt.cli.evaluate import render_report
        from omnittt.console import make_progress
        from omnittt.train.evaluate import evaluate
        from omnittt.train.quickstart import eval_options

        self.console.print(f"[dim]all {self.record.steps['preprocess']['conversations']} conversations: the "
                           f"{self.profile.val_conversations} held-out ones and those trained on[/dim]")
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # as chat does: no warning about the `omnittt` model type while loading
        try:
            with make_progress(transient=True) as progress:
                report = evaluate(eval_options(self.paths, self.profile), progress=progress)
        finally:
            hf_logging.set_verbosity(verbosity)
        render_report(self.console, report)
        atomic_write_json(self.paths.eval_report, report)
        return {"loss": report["runs"][0]["overall"].get("loss"), "uniform_loss": report["uniform_loss"]}

    def chat(self) -> dict[str, Any]:
        ready = self.available("chat")
        if ready is not None:
            return ready
        from omnittt.cli.chat import Chat
        from omnittt.train.chat_session import open_chat
        from omnittt.train.quickstart import held_out_turn, write_chat_script

        turn = held_out_turn(self.paths, self.held_out.conversation_ids[0])
        script = write_chat_script(self.paths, turn)
        self.console.print(f"[dim]{script}: the first turn of held-out {turn.conversation_id}, which says "
                           f"\"{turn.said}\"; greedy decoding[/dim]", highlight=False)
        with self.console.status("loading the model ..."):
            session, source = open_chat(self.paths.run, generation={
                "temperature": 0.0, "max_new_tokens": self.profile.chat_max_new_tokens})
        chat = Chat(session, self.console, transcript=self.paths.chat_transcript)
        chat.banner(source)
        try:
            chat.run_script(script)
        finally:
            chat.write_transcript()
        reply = next((e["reply"] for e in chat.events if e["event"] == "turn"), "")
        self.console.print(f"[bold]the corpus' reply:[/bold] {turn.expected}", highlight=False)
        if reply.strip() == turn.expected.strip():
            self.console.print("[green]the model's reply is the corpus' reply[/green]")
        else:
            self.console.print(f"[dim]the reply differs: a tiny model after {self.profile.max_steps} steps on "
                               f"{self.record.steps['preprocess']['conversations']} conversations is not expected to "
                               f"answer yet; train longer (omnittt resume {self.paths.run} --max-steps N) and ask "
                               "again[/dim]", highlight=False)
        return {"conversation_id": turn.conversation_id, "reply": reply, "expected": turn.expected}

    def available(self, step: str) -> dict[str, Any] | None:
        """None when the step can run; else what to record after saying so."""
        from omnittt.train.quickstart import available

        ok, why = available(step)
        if ok:
            return None
        self.console.print(f"[bold yellow]not available yet:[/bold yellow] this omnittt has no `omnittt {step}` "
                           f"({why}); the quickstart skips it", highlight=False)
        return {"status": "not available", "reason": why}

    # -- rendering -----------------------------------------------------------------------------------------------
    def render_held_out(self) -> None:
        from rich.table import Table

        h = self.held_out
        table = Table(title=f"held-out loss (nats per assistant token) on {len(h.conversation_ids)} conversations "
                            "never trained on", title_justify="left")
        for column in ("speech", "before training", "after training", "change"):
            table.add_column(column, justify="left" if column == "speech" else "right")
        for label, before, after in (("each conversation's own", h.before, h.after),
                                     ("swapped between conversations", h.before_swapped, h.after_swapped)):
            table.add_row(label, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}")
        self.console.print(table)
        for line in h.verdicts():
            self.console.print(f"• {line}", highlight=False)
        self.console.print(f"[dim]held out: {', '.join(c.rsplit('/', 1)[-1] for c in h.conversation_ids)}[/dim]",
                           highlight=False)

    def finish(self) -> None:
        from rich.panel import Panel
        from rich.table import Table

        p = self.paths
        artefacts = {
            "synthetic corpus": (p.corpus, "24 kHz wavs + JSON, DeepDialogue-xtts layout"),
            "processed dataset": (p.processed, "exchange samples, index, manifest, errors.jsonl"),
            "validation report": (p.validate_report, "omnittt validate --output"),
            "run directory": (p.run, "config.yaml, metrics.jsonl, ttt_state.jsonl, checkpoints/"),
            "eval report": (p.eval_report, "omnittt eval --output"),
            "chat script": (p.chat_script, "a held-out turn + /state"),
            "chat transcript": (p.chat_transcript, "JSON lines"),
            "summary": (p.summary, "step times, held-out figures, these paths"),
        }
        table = Table(title="where everything went", title_justify="left")
        table.add_column("artefact", style="bold")
        table.add_column("path", overflow="fold")
        table.add_column("holds", style="dim")
        for name, (path, what) in artefacts.items():
            if path.exists():
                table.add_row(name, str(path), what)
                self.record.artefacts[name] = str(path)
        self.console.print(table)

        times = Table(title="steps", title_justify="left")
        for column in ("step", "status", "seconds"):
            times.add_column(column, justify="right" if column == "seconds" else "left")
        for name, step in self.record.steps.items():
            colour = "green" if step["status"] == "done" else "yellow"
            times.add_row(name, f"[{colour}]{step['status']}[/]", f"{step['seconds']:.1f}")
        times.add_row("[bold]total[/bold]", "", f"[bold]{self.record.total_seconds:.1f}[/bold]")
        self.console.print(times)
        self.record.write(p)

        next_commands = "\n".join([
            f"omnittt monitor {p.run}                 live TTT-state norms and health (--once: a summary)",
            f"omnittt chat --run {p.run}              talk to it: an audio file path or text per turn",
            f"omnittt eval --run {p.run} --data {p.processed} --stage none --output eval.json",
            f"omnittt resume {p.run} --max-steps {self.profile.max_steps * 4}   train longer, exactly resumed",
            f"omnittt export {p.run} --to exported/tiny   a Hugging Face folder",
            "omnittt download deepdialogue --subset dialogues_phi4-mini   then the README's walkthrough",
        ])
        self.console.print(Panel(next_commands, title="next", expand=False), soft_wrap=True, highlight=False)
