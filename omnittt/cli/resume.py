"""`omnittt resume`: continue a run exactly from its latest checkpoint. Parses, checks the run and its checkpoint
(`omnittt.runs.open_run`) before anything starts, relaunches itself for --num-processes N, then trains through
`omnittt.train.setup.resume_run`."""

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
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        run: Path = typer.Argument(..., help="Run directory (or a checkpoint inside it)."),
        max_steps: int = typer.Option(None, "--max-steps", help="Train until this optimizer step."),
        save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N optimizer steps."),
        overrides: list[str] = typer.Option([], "--set", help="Change a setting as key=value (repeatable; "
                                            "anything but the model and data keeps the run exact)."),
        num_processes: int = typer.Option(1, "--num-processes", help="Data-parallel processes (a run trained "
                                          "with several can continue in one, or in another count)."),
    ) -> Any:
        from omnittt.cli.train import exit_with, run_prepared
        from omnittt.config import parse_dotted_overrides
        from omnittt.runs import open_run
        from omnittt.train.checkpoint import RESUME_STATES
        from omnittt.train.distributed import launch, launched
        from omnittt.train.setup import resume_run

        # before anything is started or written (resume_run checks again in every process): the run, its
        # `latest`, and the checkpoint it names (trainer state, weights complete and of the model its config.json
        # describes, optimizer / schedule / RNG states of tensors only), each a one-line error naming the file
        open_run(run, accept="run", states=RESUME_STATES, load=False)
        if num_processes != 1 and not launched():
            argv = ["resume", str(run), "--num-processes", str(num_processes)]
            argv += [arg for key, value in (("--max-steps", max_steps), ("--save-every", save_every))
                     if value is not None for arg in (key, str(value))]
            argv += [arg for item in overrides for arg in ("--set", item)]
            exit_with(launch(argv, num_processes))
            return
        changes = {"max_steps": max_steps, "save_every": save_every, **parse_dotted_overrides(overrides)}
        run_prepared(lambda console: resume_run(str(run), changes, console=console))
