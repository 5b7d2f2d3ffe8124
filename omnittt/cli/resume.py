"""`omnittt resume` (issue #11 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Continue a run exactly from its latest checkpoint.

Example: [bold]omnittt resume runs/tiny[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "resume", help=HELP, short_help="Continue a run exactly from its latest checkpoint.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("resume", 11)
