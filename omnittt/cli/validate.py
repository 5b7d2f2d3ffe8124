"""`omnittt validate`: check a processed dataset and show a table of checks with their first offenders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import data_argument, data_option, dataset_dir, handle_errors

HELP = (
    "Check a processed dataset: structure, audio, alignment, labels, tokens.\n\n"
    "Structural checks (index, conversations, settings) always cover every sample; per-sample checks (format, "
    "audio, alignment, labels, tokens) cover all samples or a seeded --sample-size. Exit code 0: clean "
    "(warnings allowed), 1: errors found, 2: could not run.\n\n"
    "Example: [bold]omnittt validate --data processed_data --sample-size 1000 --output report.json[/bold]"
)

SHOWN_OFFENDERS = 3


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        data: Path = data_option(),
        data_arg: Path = data_argument(),
        sample_size: int = typer.Option(None, "--sample-size", "-n", help="Check this many samples (seeded); "
                                        "default: all. Structural checks always cover everything."),
        seed: int = typer.Option(0, "--seed", help="Seed for choosing --sample-size samples."),
        output: Path = typer.Option(None, "--output", "-o", help="Write the full report as JSON here."),
        workers: int = typer.Option(None, "--workers", "-j", help="Parallel workers (default: one per core)."),
        strict: bool = typer.Option(False, "--strict", help="Warnings count as errors (exit 1), e.g. in CI."),
    ) -> Any:
        from omnittt.atomic import atomic_write_json
        from omnittt.console import console, make_progress
        from omnittt.data.validate import validate_dataset

        with make_progress(transient=True) as progress:
            task = progress.add_task("checking samples", total=None)
            report = validate_dataset(
                dataset_dir(data, data_arg), sample_size=sample_size, seed=seed, workers=workers,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        render(report, console)
        if output is not None:
            atomic_write_json(output, report.to_dict())
            console.print(f"report written to [bold]{output}[/bold]")
        raise typer.Exit(0 if report.ok and not (strict and report.warnings) else 1)


def render(report: Any, console: Any) -> None:
    from rich.table import Table

    colours = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    table = Table(title=f"validate {report.data_dir} ({report.format})", title_justify="left")
    for column, justify in (("check", "left"), ("status", "left"), ("pass", "right"), ("warn", "right"),
                            ("fail", "right"), ("skip", "right"), ("first offenders", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for name, check in report.checks.items():
        colour = colours[check.status]
        shown = [f"[{colours[o['level']]}]{o['item']}[/]: {o['message']}" for o in check.offenders[:SHOWN_OFFENDERS]]
        more = check.failed + check.warned - len(shown)
        if more > 0:
            shown.append(f"[dim]... {more} more[/dim]")
        table.add_row(name, f"[{colour}]{check.status}[/]", str(check.passed), str(check.warned),
                      str(check.failed), str(check.skipped) if check.skipped else "",
                      "\n".join(shown) or (f"[yellow]{check.note}[/yellow]" if check.note
                                            else f"[dim]{check.description}[/dim]"))
    console.print(table)
    stats = report.token_stats
    if stats:
        pos = stats["positions"]
        console.print(
            f"positions per exchange: median {pos['median']:.0f}, p95 {pos['p95']:.0f}, max {pos['max']:.0f}; "
            f"total {stats['total_positions']:,} positions, {stats['total_trained_tokens']:,} trained tokens, "
            f"{stats['total_speech_hours']:.3f} h speech; {stats['outliers']} length outliers"
        )
    if report.skipped_inputs:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped_inputs.items()))
        console.print(f"preprocessing left out: {reasons} (see errors.jsonl)")
    sampled = "" if report.checked_samples == report.total_samples else f" (seed {report.seed})"
    verdict = ("[bold green]clean[/bold green]" if report.ok and not report.warnings
               else "[bold yellow]clean, with warnings[/bold yellow]" if report.ok
               else f"[bold red]{report.errors} error(s)[/bold red]")
    console.print(
        f"{verdict}: {report.checked_samples:,} of {report.total_samples:,} samples checked{sampled} in "
        f"{report.elapsed_sec:.1f} s ({report.samples_per_sec:,.0f} samples/s, {report.workers} worker(s))"
    )
