"""`omnittt train` (issue #11 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Train a TTT speech model conversation by conversation.

Example: [bold]omnittt train --preset tiny --data processed_data --stage 8k[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "train", help=HELP, short_help="Train a TTT speech model conversation by conversation.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("train", 11)
