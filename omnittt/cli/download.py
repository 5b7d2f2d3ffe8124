"""`omnittt download` (issue #7 has not landed yet)."""

from __future__ import annotations

from typing import Any

import typer

from omnittt.cli._common import handle_errors, not_landed

HELP = """Fetch a corpus (deepdialogue, librispeech) or make the synthetic one.

Example: [bold]omnittt download synthetic --dialogues 20 --to synthetic[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(
        "download", help=HELP, short_help="Fetch a corpus (deepdialogue, librispeech) or make the synthetic one.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    @handle_errors
    def command(ctx: typer.Context) -> Any:
        not_landed("download", 7)
