"""The `omnittt` typer app, registered from the command table (`omnittt.cli.commands.COMMANDS`). Each command
lives in its own module under omnittt/cli; none of them imports torch or transformers at module level, so
`omnittt --help` stays fast."""

from __future__ import annotations

from importlib import import_module

import typer

from omnittt import __version__
from omnittt.cli._common import state
from omnittt.cli.commands import COMMANDS

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


def register_commands(app: typer.Typer) -> None:
    """Add every command of `COMMANDS`, in its order, under its name and with its line of help."""
    for command in COMMANDS:
        before = len(app.registered_commands)
        import_module(f"omnittt.cli.{command.module}").register(app)
        if len(app.registered_commands) != before + 1:
            raise RuntimeError(f"omnittt.cli.{command.module}.register must add exactly one command")
        info = app.registered_commands[-1]
        info.name = command.name
        info.short_help = command.short_help


register_commands(app)


def main() -> None:
    app()
