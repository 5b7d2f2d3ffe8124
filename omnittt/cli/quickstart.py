"""`omnittt quickstart`: parses, runs the workflow of `omnittt.quickstart` (its steps, settings and held-out
before/after figures) and renders every step with the commands' own views."""

from __future__ import annotations

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
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        directory: Path = typer.Option(Path("quickstart"), "--dir", help="Folder for every artefact."),
        fast: bool = typer.Option(False, "--fast", help="The CI profile: 24 dialogues, 15 training steps."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier quickstart in --dir."),
    ) -> Any:
        from omnittt.quickstart import PROFILES, Quickstart, prepare_directory

        profile = PROFILES["fast" if fast else "full"]
        paths = prepare_directory(directory, profile, overwrite=overwrite)
        Quickstart(paths, profile, RichView()).run()


class RichView:
    """`omnittt.quickstart.View` on the terminal: each step under a rule with its number, through the commands'
    own views."""

    def __init__(self) -> None:
        from omnittt.console import console

        self.console = console
        self.qs: Any = None  # the Quickstart being shown

    def begin(self, quickstart: Any) -> None:
        from rich.panel import Panel

        self.qs = quickstart
        p = quickstart.profile
        self.console.print(Panel(
            f"profile [bold]{p.name}[/bold]: {p.dialogues} synthetic dialogues, the tiny preset for {p.max_steps} "
            f"optimizer steps, {p.val_conversations} conversations held out of training\n"
            f"everything goes under [bold]{quickstart.paths.root}[/bold]; nothing is downloaded",
            title="omnittt quickstart", expand=False))

    def step(self, number: int, name: str, title: str) -> None:
        from omnittt.quickstart import STEPS

        self.console.rule(f"[bold]{number}/{len(STEPS)} {name}[/bold] [dim]{title}[/dim]", align="left")

    def status(self, message: str, work: Callable[[], Any]) -> Any:
        with self.console.status(message):
            return work()

    # -- the steps ---------------------------------------------------------------------------------------------
    def run_corpus(self, target: Path, dialogues: int, seed: int, recall_exchanges: int, kinds: list[str]) -> Any:
        from omnittt.cli.download import synthetic

        return synthetic(target, dialogues, seed, recall_exchanges, kinds)

    def run_preprocess(self, plan: Any, run: Callable[..., Any]) -> Any:
        from omnittt.cli.preprocess import print_plan, print_summary, run_with_progress

        print_plan(plan)
        summary = run_with_progress(plan, run)
        print_summary(summary)
        return summary

    def run_validate(self, work: Callable[[Callable[[int, int], None]], Any]) -> Any:
        from omnittt.cli.validate import render
        from omnittt.console import make_progress

        with make_progress(transient=True) as progress:
            task = progress.add_task("checking samples", total=None)
            report = work(lambda done, total: progress.update(task, completed=done, total=total))
        render(report, self.console)
        return report

    def curriculum(self, store: Any, plans: list[Any]) -> None:
        from omnittt.cli.curriculum import render

        render(store, plans, self.console)
        self.console.print("[bold]quickstart:[/bold] the synthetic corpus is far shorter than the 8k stage's sessions, "
                           "so the tiny model trains on whole conversations ([bold]--stage none[/bold]); real corpora "
                           "go through the stages (see the README's walkthrough).")

    def run_train(self, command: str, prepare: Callable[[Any], Any]) -> None:
        from omnittt.cli.train import run_prepared

        self.console.print(f"[dim]the same as: {command}[/dim]", soft_wrap=True)
        run_prepared(prepare)

    def monitor(self, summary: dict[str, Any]) -> None:
        from omnittt.cli.monitor import render_summary

        self.console.print(render_summary(summary))

    def run_eval(self, work: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        from omnittt.cli.evaluate import render_report
        from omnittt.console import make_progress

        self.console.print(f"[dim]the {self.qs.profile.val_conversations} held-out conversations (--held-out), "
                           "spoken by voices heard in training but never with these words; the model, the same "
                           "with its TTT state reset every turn, and with another conversation's speech[/dim]")
        with make_progress(transient=True) as progress:
            report = work(progress)
        render_report(self.console, report)
        return report

    def run_chat(self, script: Path, turn: Any, load: Callable[[], tuple[Any, Any]]) -> str:
        from omnittt.cli.chat import Chat

        self.console.print(f"[dim]{script}: the first turn of held-out {turn.conversation_id}, which says "
                           f"\"{turn.said}\"; greedy decoding[/dim]", highlight=False)
        session, source = self.status("loading the model ...", load)
        chat = Chat(session, self.console, transcript=self.qs.paths.chat_transcript)
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
            self.console.print(f"[dim]the reply differs: after {self.qs.profile.max_steps} steps the tiny model gets "
                               "part of the held-out answers right (the eval's probe table above); train longer "
                               f"(omnittt resume {self.qs.paths.run} --max-steps N) and ask again[/dim]",
                               highlight=False)
        return reply

    # -- rendering -----------------------------------------------------------------------------------------------
    def held_out(self, held_out: Any) -> None:
        from rich.table import Table

        h = held_out
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

        from omnittt.quickstart import ARTEFACTS

        p, record = self.qs.paths, self.qs.record
        table = Table(title="where everything went", title_justify="left")
        table.add_column("artefact", style="bold")
        table.add_column("path", overflow="fold")
        table.add_column("holds", style="dim")
        for name, (attribute, what) in ARTEFACTS.items():
            if name in record.artefacts:
                table.add_row(name, str(getattr(p, attribute)), what)
        self.console.print(table)

        times = Table(title="steps", title_justify="left")
        for column in ("step", "status", "seconds"):
            times.add_column(column, justify="right" if column == "seconds" else "left")
        for name, step in record.steps.items():
            colour = "green" if step["status"] == "done" else "yellow"
            times.add_row(name, f"[{colour}]{step['status']}[/]", f"{step['seconds']:.1f}")
        times.add_row("[bold]total[/bold]", "", f"[bold]{record.total_seconds:.1f}[/bold]")
        self.console.print(times)

        next_commands = "\n".join([
            f"omnittt monitor {p.run}                 live TTT-state norms and health (--once: a summary)",
            f"omnittt chat --run {p.run}              talk to it: an audio file path or text per turn",
            f"omnittt eval --run {p.run} --data {p.processed} --stage none --output eval.json",
            f"omnittt resume {p.run} --max-steps {self.qs.profile.max_steps * 4}   train longer, exactly resumed",
            f"omnittt export {p.run} --to exported/tiny   a Hugging Face folder",
            "omnittt download deepdialogue --subset dialogues_phi4-mini   then the README's walkthrough",
        ])
        self.console.print(Panel(next_commands, title="next", expand=False), soft_wrap=True, highlight=False)
