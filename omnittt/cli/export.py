"""`omnittt export` (issue #12 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Export a run's checkpoint as a Hugging Face directory.

Example: [bold]omnittt export runs/tiny --to exported[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "export", help=HELP, short_help="Export a run's checkpoint as a Hugging Face directory.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("export", 12)
