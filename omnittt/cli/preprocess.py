"""`omnittt preprocess` (issue #7 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Turn a raw corpus into a processed dataset of exchange samples.

Example: [bold]omnittt preprocess deepdialogue ./deepdialogue-xtts --output processed_data[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "preprocess", help=HELP, short_help="Turn a raw corpus into a processed dataset of exchange samples.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("preprocess", 7)
