"""`omnittt validate` (issue #9 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Check a processed dataset: structure, audio, alignment, labels, tokens.

Example: [bold]omnittt validate processed_data --sample-size 1000[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "validate", help=HELP, short_help="Check a processed dataset: structure, audio, alignment, labels, tokens.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("validate", 9)
