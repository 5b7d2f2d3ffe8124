"""`omnittt download`: fetch a corpus, or make the synthetic one (the corpus downloads are issue #8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """Fetch a corpus (deepdialogue, librispeech) or make the synthetic one.

The synthetic corpus is spoken offline with espeak-ng in the DeepDialogue-xtts layout: number, name and
recall dialogues with two voices. The corpus goes to --to (default: where `omnittt preprocess SOURCE`
looks), so `omnittt download synthetic` then `omnittt preprocess synthetic` needs no paths.

Example: [bold]omnittt download synthetic --dialogues 20 --to synthetic[/bold]"""

SOURCES = ("synthetic", "deepdialogue", "librispeech")


def register(app: typer.Typer) -> None:
    @app.command("download", help=HELP,
                 short_help="Fetch a corpus (deepdialogue, librispeech) or make the synthetic one.")
    @handle_errors
    def command(
        source: str = typer.Argument(..., help="synthetic, deepdialogue or librispeech."),
        to: Path = typer.Option(None, "--to", help="Target folder (default: ./<source default>).",
                                show_default=False),
        dialogues: int = typer.Option(20, "--dialogues", help="synthetic: number of dialogues."),
        seed: int = typer.Option(0, "--seed", help="synthetic: the seed (same seed, same files)."),
        recall_exchanges: int = typer.Option(8, "--recall-exchanges",
                                             help="synthetic: exchanges of a recall dialogue."),
    ) -> Any:
        from omnittt.data.sources import DEFAULT_INPUT
        from omnittt.errors import NotLandedError, UserError

        if source not in SOURCES:
            raise UserError(f"unknown source {source!r}", fix=f"use one of: {', '.join(SOURCES)}")
        if source != "synthetic":
            raise NotLandedError(f"`omnittt download {source}` is not available yet (issue #8)",
                                 fix="download the corpus yourself and pass its folder to `omnittt preprocess`")
        _synthetic(to or Path(DEFAULT_INPUT["synthetic"]), dialogues, seed, recall_exchanges)


def _synthetic(target: Path, dialogues: int, seed: int, recall_exchanges: int) -> None:
    import os

    from rich.table import Table

    from omnittt.console import console, make_progress
    from omnittt.data.synthetic import make_synthetic_corpus

    with make_progress(transient=True) as progress:
        summary = make_synthetic_corpus(target, dialogues=dialogues, seed=seed, recall_exchanges=recall_exchanges,
                                        workers=os.cpu_count() or 1, progress=progress)
    table = Table(title="synthetic corpus" + ("" if summary.created else " (already there)"),
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("folder", str(summary.path))
    table.add_row("dialogues", str(summary.dialogues))
    table.add_row("turns", str(summary.turns))
    table.add_row("audio", f"{summary.audio_sec / 60:.1f} min (24 kHz PCM16, DeepDialogue-xtts layout)")
    table.add_row("next", f"omnittt preprocess synthetic {summary.path}")
    console.print(table)
