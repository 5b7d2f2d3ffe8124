"""`omnittt chat` (issue #14 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Talk to a trained model with persistent TTT state across turns.

Example: [bold]omnittt chat --run runs/tiny[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "chat", help=HELP, short_help="Talk to a trained model with persistent TTT state across turns.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("chat", 14)
