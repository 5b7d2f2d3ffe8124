"""`omnittt curriculum` (issue #9 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Show the 8k/16k/32k/64k stage table of a processed dataset.

Example: [bold]omnittt curriculum processed_data[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "curriculum", help=HELP, short_help="Show the 8k/16k/32k/64k stage table of a processed dataset.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("curriculum", 9)
