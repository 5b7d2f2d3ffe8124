"""`omnittt export`: parses, writes a run's checkpoint as a Hugging Face directory
(`omnittt.train.export.export_checkpoint`) and prints where it went and how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """Export a run's checkpoint as a Hugging Face directory (safetensors, config, tokenizer, feature extractor,
and a model card README.md: how to load it, base model, data and curriculum stages, TTT settings, eval figures).

The result loads like any model once omnittt is imported (it registers the omnittt model type with transformers):
import omnittt; AutoModelForCausalLM.from_pretrained(DIR); and with omnittt chat / eval --model DIR.
The model card shows the figures of RUN/eval.json if there is one, or of --eval FILE.

Example: [bold]omnittt export runs/tiny --to exported/tiny --eval eval.json[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        run: Path = typer.Argument(..., help="Run directory (or a checkpoint folder inside it)."),
        to: Path = typer.Option(..., "--to", help="Directory to write (must not exist unless --overwrite)."),
        checkpoint: str = typer.Option("latest", "--checkpoint", help="latest, a step number, or step_N."),
        max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --to directory."),
        eval_report: Path = typer.Option(None, "--eval", help="An `omnittt eval --output` report for the model "
                                         "card (default: eval.json in the run directory, if any)."),
    ) -> Any:
        from rich.table import Table

        from omnittt.console import console
        from omnittt.train.export import export_checkpoint

        with console.status("exporting ..."):
            result = export_checkpoint(run, to, checkpoint, max_shard_size=max_shard_size, overwrite=overwrite,
                                       eval_report=eval_report)
        table = Table(title="exported", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("from", f"{result['checkpoint']} (step {result['step']})")
        table.add_row("to", result["to"])
        table.add_row("files", ", ".join(result["files"]))
        table.add_row("eval figures", result["eval"] or "none (pass --eval FILE)")
        table.add_row("load", f"import omnittt; AutoModelForCausalLM.from_pretrained({result['to']!r})")
        console.print(table)
