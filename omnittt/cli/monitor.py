"""`omnittt monitor` (issue #13 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Live TUI of TTT-state norms, FP32 status and training health.

Example: [bold]omnittt monitor runs/tiny[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "monitor", help=HELP, short_help="Live TUI of TTT-state norms, FP32 status and training health.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("monitor", 13)
