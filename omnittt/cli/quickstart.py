"""`omnittt quickstart` (issue #15 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """The whole pipeline offline on a tiny model, in minutes.

Example: [bold]omnittt quickstart --fast[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "quickstart", help=HELP, short_help="The whole pipeline offline on a tiny model, in minutes.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("quickstart", 15)
