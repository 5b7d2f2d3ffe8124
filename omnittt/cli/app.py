"""The `omnittt` typer app. Each command lives in its own module under omnittt/cli; none of them imports
torch or transformers at module level, so `omnittt --help` stays fast."""

from __future__ import annotations

import typer

from omnittt import __version__
from omnittt.cli import (
    chat,
    curriculum,
    download,
    evaluate,
    export,
    monitor,
    preprocess,
    quickstart,
    resume,
    train,
    validate,
)
from omnittt.cli._common import state

app = typer.Typer(
    name="omnittt",
    help="Long-context speech LLMs with Test-Time-Training layers: from raw corpora to a trained model and a "
    "live demo.\n\nStart with: omnittt quickstart",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omnittt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks for errors."),
) -> None:
    state["verbose"] = verbose


for module in (download, preprocess, validate, curriculum, train, resume, monitor, chat, evaluate, export,
               quickstart):
    module.register(app)


def main() -> None:
    app()
