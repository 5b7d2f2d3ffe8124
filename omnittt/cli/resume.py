"""`omnittt resume`: continue a run exactly from its latest checkpoint (issue #11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = (
    "Continue a run exactly from its latest checkpoint.\n\n"
    "The run's own config.yaml is used, with the optimizer, learning-rate schedule, RNG, thread count and data "
    "position of the checkpoint, so the loss sequence continues as if the run had never stopped. --max-steps "
    "extends a finished run (the learning rate stays at the end of its schedule).\n\n"
    "Example: [bold]omnittt resume runs/tiny[/bold]"
)


def register(app: typer.Typer) -> None:
    @app.command("resume", help=HELP, short_help="Continue a run exactly from its latest checkpoint.")
    @handle_errors
    def command(
        run: Path = typer.Argument(..., help="Run directory (or a checkpoint inside it)."),
        max_steps: int = typer.Option(None, "--max-steps", help="Train until this optimizer step."),
        save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N optimizer steps."),
        overrides: list[str] = typer.Option([], "--set", help="Change a setting as key=value (repeatable; "
                                            "anything but the model and data keeps the run exact)."),
    ) -> Any:
        from omnittt.cli.train import run_prepared
        from omnittt.config import parse_dotted_overrides
        from omnittt.train.setup import resume_run

        changes = {"max_steps": max_steps, "save_every": save_every, **parse_dotted_overrides(overrides)}
        run_prepared(lambda console: resume_run(str(run), changes, console=console))
