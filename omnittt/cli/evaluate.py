"""`omnittt eval` (issue #16 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Loss vs position, TTT vs attention, carried vs reset state, recall.

Example: [bold]omnittt eval --run runs/tiny --data processed_data[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "eval", help=HELP, short_help="Loss vs position, TTT vs attention, carried vs reset state, recall.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("eval", 16)
