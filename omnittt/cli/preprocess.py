"""`omnittt preprocess`: a raw corpus -> a processed dataset of exchange samples (omnittt/data/preprocess.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """Turn a raw corpus into a processed dataset of exchange samples (one sample per user turn + reply).

SOURCE is [bold]deepdialogue[/bold] (DeepDialogue-xtts: repo root, data/ or one dialogues_* folder),
[bold]synthetic[/bold] (made by `omnittt download synthetic`), [bold]conversations[/bold]
(conversations/<id>/turn_N.wav + turn_N.txt + metadata.json), [bold]dailytalk[/bold] (data/<d>/<u>_<spk>_d<d>.wav
+ .txt), [bold]librispeech[/bold] (a chapter = one pseudo-conversation; ASR), [bold]commonvoice[/bold] (clips/ +
a TSV; a speaker's clips grouped --group-size at a time; ASR), [bold]librilight[/bold] (audio only: writes an
audio index for pre-training, no samples) or [bold]auto[/bold] (recognise the layout of INPUT). See
docs/data_format.md. INPUT defaults to where `omnittt download SOURCE` puts the corpus. Broken files are reported
in errors.jsonl and skipped; a killed run resumes when rerun with the same flags.

Across machines: run each with [bold]--num-shards N --shard-index I[/bold], then
[bold]omnittt preprocess merge DIR... --output OUT[/bold] (ids renumbered as one unsharded run would number them).

Example: [bold]omnittt preprocess deepdialogue ./deepdialogue-xtts --output processed_data --workers 8[/bold]"""

SHOWN_ERRORS = 5


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        source: str = typer.Argument(..., help="deepdialogue, synthetic, conversations, dailytalk, librispeech, "
                                     "commonvoice, librilight, auto; or merge (then INPUT is the datasets)."),
        inputs: list[Path] = typer.Argument(None, help="The corpus folder (default: where `download` puts it); "
                                            "for merge, the dataset folders.", show_default=False,
                                            metavar="INPUT"),
        output: Path = typer.Option(Path("processed_data"), "--output", "-o", help="Dataset folder to write."),
        tokenizer: Path = typer.Option(None, "--tokenizer", help="Local Hugging Face tokenizer folder "
                                       "(default: the built-in offline tokenizer).", show_default=False),
        fmt: str = typer.Option("pt", "--format", help="pt (one .pt per sample) or arrow."),
        task: str = typer.Option(None, "--task", help="dialogue (user speech -> assistant text) or "
                                 "asr (every turn is speech, its transcript the target). Default: asr for "
                                 "librispeech and commonvoice, else dialogue.", show_default=False),
        user_speaker: str = typer.Option(None, "--user-speaker", help="Speaker that is the user in the "
                                         "dialogue task (deepdialogue: LLM1; conversations: the first "
                                         "speaker).", show_default=False),
        max_dialogues: int = typer.Option(None, "--max-dialogues", help="Process at most N dialogues.",
                                          show_default=False),
        skip: int = typer.Option(0, "--skip", help="Skip the first N dialogues (in sorted id order)."),
        workers: int = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores).",
                                    show_default=False),
        mini_batch_size: int = typer.Option(64, "--mini-batch-size", help="TTT mini-batch size b: every "
                                            "sample is padded to a multiple of it."),
        speech_positions: str = typer.Option("trim", "--speech-positions", help="trim (10 positions/s) or "
                                             "full (300 per segment, as the released LLaMA-Omni)."),
        split_at_holes: bool = typer.Option(False, "--split-at-holes", help="Keep the exchanges after a "
                                            "bad one as a separate conversation instead of dropping them."),
        strict: bool = typer.Option(False, "--strict", help="Stop with exit 2 at the first skipped input."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in --output."),
        split: str = typer.Option(None, "--split", help="librispeech: subset folder(s), comma-separated (default: "
                                  "all found); commonvoice: the TSV (default: train).", show_default=False),
        group_size: int = typer.Option(16, "--group-size", help="commonvoice: clips per pseudo-conversation."),
        segment_sec: float = typer.Option(30.0, "--segment-sec", help="librilight: the longest segment (one "
                                          "exchange of the audio objective), at most 30 s; VAD spans are merged "
                                          "up to it."),
        num_shards: int = typer.Option(1, "--num-shards", help="Split the dialogues into N equal blocks (one "
                                       "per machine) ..."),
        shard_index: int = typer.Option(0, "--shard-index", help="... and process block I (0..N-1)."),
    ) -> Any:
        from omnittt.data.preprocess import PreprocessOptions, plan, resolve_source, run
        from omnittt.errors import UserError

        if source == "merge":
            _merge(inputs or [], output, overwrite)
            return
        if inputs and len(inputs) > 1:
            raise UserError(f"one INPUT folder expected, got {len(inputs)}",
                            fix="give one corpus folder (several datasets are combined with `preprocess merge`)")
        input_dir = inputs[0] if inputs else None
        options = PreprocessOptions(
            source=source, input_dir=None if input_dir is None else str(input_dir), output=str(output),
            tokenizer=None if tokenizer is None else str(tokenizer), format=fmt, task=task,
            user_speaker=user_speaker, max_dialogues=max_dialogues, skip=skip,
            workers=workers if workers is not None else (os.cpu_count() or 1),
            mini_batch_size=mini_batch_size, speech_positions=speech_positions,
            split_at_holes=split_at_holes, strict=strict, overwrite=overwrite, split=split,
            group_size=group_size, num_shards=num_shards, shard_index=shard_index,
        )
        options, detected = resolve_source(options)
        if detected:
            from omnittt.console import console

            console.print(f"[bold]auto:[/bold] {options.input_dir} holds [bold]{options.source}[/bold] ({detected})")
        if options.source == "librilight":
            _audio_index(options, segment_sec)
            return
        the_plan = plan(options)
        print_plan(the_plan)
        summary = run_with_progress(the_plan, run)
        print_summary(summary)
        if summary.stats.get("samples", 0) == 0:
            raise typer.Exit(1)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def print_plan(plan: Any) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from omnittt.console import console

    s, o = plan.settings, plan.options
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("input", f"{plan.root} ({o.source}: {plan.found} dialogues, {len(plan.refs)} selected)")
    if o.num_shards > 1:
        grid.add_row("shard", f"{o.shard_index} of {o.num_shards}: {len(plan.refs)} of {plan.selected} dialogues "
                     "(combine the shards with `omnittt preprocess merge`)")
    grid.add_row("output", f"{plan.output} (--format {o.format})")
    grid.add_row("tokenizer", f"{s['tokenizer_name']}  vocab {s['vocab_size']}  fingerprint "
                 f"{s['tokenizer_fingerprint'][:12]}  pad id {s['pad_token_id']}")
    who = "every turn is speech" if s["task"] == "asr" else f"user speaker {s['user_speaker'] or '(first speaker)'}"
    grid.add_row("settings", f"task {s['task']}  {who}  "
                 f"mini-batch {s['mini_batch_size']}  speech positions {s['speech_positions']}  "
                 f"{'split at holes' if s['split_at_holes'] else 'truncate at holes'}  workers {o.workers}")
    if plan.estimate_bytes is not None:
        grid.add_row("estimate", f"~{_size(plan.estimate_bytes)} on disk, ~{_duration(plan.estimate_speech_sec)} "
                     "of user speech (from the headers of a few dialogues)")
    if plan.done:
        grid.add_row("resume", f"{plan.done} of {len(plan.refs)} dialogues already done: continuing")
    console.print(Panel(grid, title="omnittt preprocess", expand=False))


def run_with_progress(plan: Any, run: Any) -> Any:
    from rich.progress import TextColumn

    from omnittt.console import make_progress

    shown = [0]
    with make_progress(TextColumn("{task.fields[hours]:.2f} h speech"),
                       TextColumn("{task.fields[xrt]:.0f}x real time")) as progress:
        def on_error(err: dict[str, Any]) -> None:
            shown[0] += 1
            if shown[0] <= SHOWN_ERRORS:
                progress.console.print(f"[yellow]skip[/yellow] {err['path']}: {err['reason']}"
                                       f"{' (' + err['detail'] + ')' if err.get('detail') else ''}",
                                       soft_wrap=True, markup=True, highlight=False)
        summary = run(plan, progress, on_error=on_error)
    if shown[0] > SHOWN_ERRORS:
        from omnittt.console import console

        console.print(f"[yellow]... {shown[0] - SHOWN_ERRORS} more skips in errors.jsonl[/yellow]")
    return summary


def print_summary(summary: Any) -> None:
    from rich.table import Table

    from omnittt.console import console

    st = summary.stats
    table = Table(title="preprocess summary" + (" (already complete)" if summary.already_complete else ""),
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("dialogues", f"{st['dialogues']} ({st['dialogues_with_samples']} with samples)")
    table.add_row("conversations", str(st["conversations"]))
    table.add_row("samples (exchanges)", str(st["samples"]))
    table.add_row("user speech", _duration(st["speech_sec"]))
    pad = st["padding_tokens"] / st["total_tokens"] if st["total_tokens"] else 0.0
    table.add_row("positions", f"{st['total_tokens']:,} ({pad:.1%} alignment padding)")
    table.add_row("converted files", f"{st['converted_files']} (resampled / downmixed to 16 kHz mono)")
    table.add_row("clipped samples", str(st["clipped_samples"]))
    for reason, count in st["skipped"].items():
        table.add_row(f"skipped: {reason}", f"[yellow]{count}[/yellow]")
    if st.get("resumed_from_dialogue"):
        table.add_row("resumed from", f"dialogue {st['resumed_from_dialogue']}")
    table.add_row("time", f"{st['elapsed_sec']:.1f} s ({st['x_real_time'] or 0:.0f}x real time)")
    size = sum(p.stat().st_size for p in Path(summary.output).rglob("*") if p.is_file())
    table.add_row("output", f"{summary.output} ({_size(size)})")
    if st["errors"]:
        table.add_row("details", str(Path(summary.output) / "errors.jsonl"))
    console.print(table)


def _audio_index(options: Any, segment_sec: float) -> None:
    """librilight: no samples, an audio index for a later pre-training stage."""
    from rich.panel import Panel

    from omnittt.console import console, make_progress
    from omnittt.data.sources import librilight, resolve_input

    root = resolve_input(options.source, options.input_dir)
    with make_progress(transient=True) as progress:
        summary = librilight.build_index(root, Path(options.output), split=options.split,
                                         overwrite=options.overwrite, progress=progress,
                                         settings={"mini_batch_size": options.mini_batch_size,
                                                   "speech_positions": options.speech_positions,
                                                   "segment_sec": segment_sec})
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary.skipped.items()) or "none"
    console.print(Panel(
        f"librilight is audio-only (no transcripts, no conversations): [bold]no samples[/bold] were made.\n"
        f"Wrote an audio index for a later pre-training stage: {summary.output / librilight.INDEX_FILE}\n"
        f"{summary.files} files, {summary.hours:.2f} h, {summary.stats['speakers']} speakers, "
        f"{summary.stats['books']} books; without .json metadata {summary.without_metadata}; skipped: {skipped}"
        + (f"\ndetails: {summary.output / 'errors.jsonl'}" if summary.skipped else ""),
        title="omnittt preprocess librilight", expand=False))


def _merge(inputs: list[Path], output: Path, overwrite: bool) -> None:
    from rich.table import Table

    from omnittt.console import console, make_progress
    from omnittt.data.merge import merge_datasets

    with make_progress(transient=True) as progress:
        summary = merge_datasets(inputs, output, overwrite=overwrite, progress=progress)
    st = summary.stats
    table = Table(title="preprocess merge", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("inputs", f"{len(summary.inputs)} {'shards (in shard order)' if summary.shards else 'datasets'}")
    table.add_row("dialogues", f"{st['dialogues']} ({st['dialogues_with_samples']} with samples)")
    table.add_row("conversations", str(st["conversations"]))
    table.add_row("samples (exchanges)", str(st["samples"]))
    table.add_row("user speech", _duration(st["speech_sec"]))
    for reason, count in st["skipped"].items():
        table.add_row(f"skipped: {reason}", f"[yellow]{count}[/yellow]")
    table.add_row("output", str(summary.output))
    console.print(table)
