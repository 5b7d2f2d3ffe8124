"""`omnittt download`: fetch a corpus (omnittt/data/download.py), or make the synthetic one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """Fetch a corpus (deepdialogue, librispeech, librilight) or make the synthetic one; --list shows what can be
fetched.

[bold]deepdialogue[/bold]: SALT-Research/DeepDialogue-xtts through huggingface_hub (~173 GB in all; --subset
GLOB picks model folders, --dry-run shows the exact size first). Resumable: rerun the same command.
[bold]librispeech[/bold]: one split from openslr.org over HTTP (--split dev-clean), resumed after an
interruption, md5-checked, extracted into --to. [bold]librilight[/bold]: --subset small (~35 GB; medium, large,
duplicate) from dl.fbaipublicfiles.com over HTTP, resumed after an interruption, checked against the server's
size (no checksums are published; --dry-run shows it), extracted into --to. [bold]synthetic[/bold]: spoken
offline with espeak-ng in the DeepDialogue-xtts layout (--kinds of repeat, number, name and recall dialogues; the
answer is always in the user's speech; --voices limits the user's voices, e.g. to hold some out for eval).
[bold]recall[/bold]: the memory task at scale in the conversations layout (facts, filler, questions; text user
turns, or --spoken): thousands of dialogues in seconds, --facts/--queries/--filler/--min-filler/--filler-words
set how many facts are held and how far apart they are asked.
[bold]longform[/bold]: long recordings for audio pre-training (`omnittt train --objective audio`), espeak-ng
reading generated text (a voice per speaker, a vocabulary per book) in both LibriLight layouts: raw
(<subset>/<speaker>/<book>/<file>.flac + .json voice activity) and VAD-cut (<subset>_cut/...); --speakers, --books,
--recordings, --seconds, --layout.
The corpus goes to --to (default: where `omnittt preprocess SOURCE` looks), so `omnittt download SOURCE`
then `omnittt preprocess SOURCE` needs no paths.

Example: [bold]omnittt download deepdialogue --subset dialogues_phi4-mini[/bold]
Example: [bold]omnittt download librispeech --split dev-clean[/bold]
Example: [bold]omnittt download librilight --subset small --dry-run[/bold]
Example: [bold]omnittt download longform --speakers 4 --books 2 --recordings 2 --seconds 240[/bold]
Example: [bold]omnittt download synthetic --kinds repeat --voices en-us+m7,en-gb+f5 --to heldout_voices[/bold]
Example: [bold]omnittt download recall --dialogues 4000 --filler 4 --min-filler 0 --to recall_train[/bold]"""

SOURCES = ("synthetic", "recall", "deepdialogue", "librispeech", "librilight", "longform")


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        source: str = typer.Argument(None, help="synthetic, recall, deepdialogue, librispeech, librilight or longform.",
                                     show_default=False),
        to: Path = typer.Option(None, "--to", help="Target folder (default: ./<source default>).",
                                show_default=False),
        list_: bool = typer.Option(False, "--list", help="Show what can be fetched and its size."),
        subset: str = typer.Option(None, "--subset", help="deepdialogue: model folder(s), a glob "
                                   "(dialogues_phi4-mini, 'dialogues_llama3-*', 'phi4-mini/cars_*'; default: all). "
                                   "librilight: small, medium, large, duplicate, comma-separated (default: small).",
                                   show_default=False),
        dry_run: bool = typer.Option(False, "--dry-run", help="deepdialogue, librilight: list the files and sizes, "
                                     "fetch nothing."),
        workers: int = typer.Option(8, "--workers", "-j", help="deepdialogue: parallel downloads."),
        split: str = typer.Option("dev-clean", "--split", help="librispeech: the split (see --list)."),
        mirror: str = typer.Option(None, "--mirror", help="librispeech: base URL of an openslr mirror "
                                   "(default https://www.openslr.org/resources/12); librilight: of the tars "
                                   "(default https://dl.fbaipublicfiles.com/librilight/data).", show_default=False),
        keep_archive: bool = typer.Option(False, "--keep-archive", help="librispeech, librilight: keep the "
                                          "archive."),
        dialogues: int = typer.Option(20, "--dialogues", help="synthetic, recall: number of dialogues."),
        seed: int = typer.Option(0, "--seed", help="synthetic, recall, longform: the seed (same seed, same "
                                 "files)."),
        speakers: int = typer.Option(3, "--speakers", help="longform: speakers (one espeak-ng voice each)."),
        books: int = typer.Option(2, "--books", help="longform: books per speaker (a vocabulary each)."),
        recordings: int = typer.Option(1, "--recordings", help="longform: recordings per book."),
        seconds: float = typer.Option(180.0, "--seconds", help="longform: seconds per recording."),
        layout: str = typer.Option("both", "--layout", help="longform: raw, cut (VAD-cut pieces) or both."),
        facts: int = typer.Option(1, "--facts", help="recall: facts stated per dialogue (held at once)."),
        queries: int = typer.Option(None, "--queries", help="recall: facts asked (default all; the rest are "
                                    "distractors).", show_default=False),
        filler: int = typer.Option(4, "--filler", help="recall: filler exchanges between the facts and the "
                                   "questions (the distance)."),
        min_filler: int = typer.Option(None, "--min-filler", help="recall: draw the filler count from "
                                       "MIN..--filler per dialogue (a mix of distances).", show_default=False),
        filler_words: int = typer.Option(8, "--filler-words", help="recall: words per filler user turn."),
        spoken: bool = typer.Option(False, "--spoken", help="recall: speak the user turns with espeak-ng."),
        style: str = typer.Option("facts", "--style", help="recall: facts (keyed facts and questions) or code "
                                  "(one code in number words, asked at the end)."),
        recall_exchanges: int = typer.Option(8, "--recall-exchanges",
                                             help="synthetic: exchanges of a recall dialogue."),
        min_recall_exchanges: int = typer.Option(None, "--min-recall-exchanges", help="synthetic: draw a recall "
                                                 "dialogue's exchanges from MIN..--recall-exchanges (a mix of "
                                                 "distances, as training needs).", show_default=False),
        kinds: str = typer.Option("numbers,names,recall", "--kinds", help="synthetic: dialogue kinds in turn, a "
                                  "comma list of repeat, numbers, names, recall."),
        voices: str = typer.Option(None, "--voices", help="synthetic: the user's voices, a comma list of "
                                   "espeak-ng voices (default all ten; e.g. hold two out for an eval corpus).",
                                   show_default=False),
    ) -> Any:
        from omnittt.data.sources import DEFAULT_INPUT
        from omnittt.errors import UserError

        if list_:
            _list()
            return
        if source not in SOURCES:
            raise UserError(f"unknown source {source!r}" if source else "which corpus? (SOURCE is missing)",
                            fix=f"use one of: {', '.join(SOURCES)} (omnittt download --list shows sizes)")
        target = to or Path(DEFAULT_INPUT[source])
        if source == "synthetic":
            synthetic(target, dialogues, seed, recall_exchanges, _words(kinds), _words(voices), min_recall_exchanges)
        elif source == "recall":
            from omnittt.data.recall_corpus import RecallCorpusSpec

            recall(target, RecallCorpusSpec(dialogues=dialogues, seed=seed, facts=facts, queries=queries,
                                            filler=filler, min_filler=min_filler, filler_words=filler_words,
                                            spoken=spoken, style=style))
        elif source == "librispeech":
            _librispeech(target, split, mirror, keep_archive)
        elif source == "librilight":
            _librilight(target, subset, mirror, keep_archive, dry_run)
        elif source == "longform":
            longform(target, dict(speakers=speakers, books_per_speaker=books, recordings_per_book=recordings,
                                  seconds=seconds, seed=seed, layout=layout))
        else:
            _deepdialogue(target, subset, workers, dry_run)


def _list() -> None:
    from rich.table import Table

    from omnittt.console import console
    from omnittt.data.download import catalog

    table = Table(title="omnittt download --list", title_justify="left")
    for column in ("source", "what", "size", "command"):
        table.add_column(column, overflow="fold")
    for row in catalog():
        table.add_row(row["source"], row["what"], row["size"], row["command"])
    console.print(table)


def _bytes_progress() -> Any:
    from rich.progress import DownloadColumn, TransferSpeedColumn

    from omnittt.console import make_progress

    return make_progress(DownloadColumn(), TransferSpeedColumn(), transient=True)


def _librispeech(target: Path, split: str, mirror: str | None, keep_archive: bool) -> None:
    from rich.table import Table

    from omnittt.console import console
    from omnittt.data.download import LIBRISPEECH_URL, download_librispeech

    with _bytes_progress() as progress:
        summary = download_librispeech(split, target, mirror=mirror or LIBRISPEECH_URL, keep_archive=keep_archive,
                                       progress=progress)
    table = Table(title=f"LibriSpeech {split}" + ("" if summary.downloaded else " (already there)"),
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("folder", str(summary.path))
    table.add_row("utterances", f"{summary.files} flac files" + (" (md5 checked)" if summary.downloaded else ""))
    table.add_row("next", f"omnittt preprocess librispeech {summary.path.parent} --split {split}")
    console.print(table)


def _librilight(target: Path, subset: str | None, mirror: str | None, keep_archive: bool, dry_run: bool) -> None:
    from rich.table import Table

    from omnittt.console import console
    from omnittt.data.download import LIBRILIGHT_URL, download_librilight, human, librilight_subsets

    summaries = []
    with _bytes_progress() as progress:
        for name in librilight_subsets(subset):  # all names checked before anything is fetched
            summaries.append(download_librilight(name, target, mirror=mirror or LIBRILIGHT_URL,
                                                 keep_archive=keep_archive, dry_run=dry_run, progress=progress))
    table = Table(title="LibriLight" + (" (dry run: nothing fetched)" if dry_run else ""), title_justify="left")
    for column in ("subset", "size", "state"):
        table.add_column(column, overflow="fold")
    for s in summaries:
        size = f"{human(s.bytes)} ({s.bytes:,} bytes)" if s.bytes is not None else "-"
        if s.downloaded:
            state = f"fetched: {s.files} flac files (size checked)"
        elif not s.dry_run or s.path.is_dir():
            state = f"already there: {s.files} flac files"
        else:
            state = "would fetch" + (f" (resumes after {human(s.partial)})" if s.partial else "")
        table.add_row(s.subset, size, state)
    console.print(table)
    console.print(f"from {summaries[0].url.rsplit('/', 1)[0]}/ into {summaries[0].path.parent}")
    if not dry_run:
        console.print(f"next: omnittt preprocess librilight {summaries[0].path.parent} --output DIR (an audio index)")


def _deepdialogue(target: Path, subset: str | None, workers: int, dry_run: bool) -> None:
    from rich.table import Table

    from omnittt.console import console
    from omnittt.data.download import DEEPDIALOGUE_REPO, download_deepdialogue, human

    with _bytes_progress() as progress:
        summary = download_deepdialogue(target, subset=subset, workers=workers, dry_run=dry_run, progress=progress)
    title = f"{DEEPDIALOGUE_REPO}" + (" (dry run: nothing fetched)" if dry_run else "")
    table = Table(title=title, title_justify="left")
    table.add_column("folder")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for name, (files, size) in summary.per_folder.items():
        table.add_row(name, str(files), human(size))
    table.add_row("[bold]total[/bold]", str(summary.files), human(summary.bytes))
    console.print(table)
    if dry_run:
        console.print(f"would fetch {summary.files - summary.skipped_files} files ({human(summary.downloaded_bytes)}) "
                      f"into {summary.path}; {summary.skipped_files} already there")
    else:
        console.print(f"{summary.path}: fetched {summary.files - summary.skipped_files} files "
                      f"({human(summary.downloaded_bytes)}), {summary.skipped_files} already complete\n"
                      f"next: omnittt preprocess deepdialogue {summary.path}")


def _words(spec: str | None) -> list[str] | None:
    return [w.strip() for w in spec.split(",") if w.strip()] if spec is not None else None


def synthetic(target: Path, dialogues: int, seed: int, recall_exchanges: int, kinds: list[str] | None = None,
              voices: list[str] | None = None, min_recall_exchanges: int | None = None) -> Any:
    import os

    from rich.table import Table

    from omnittt.console import console, make_progress
    from omnittt.data.synthetic import KINDS, VOICES, make_synthetic_corpus

    with make_progress(transient=True) as progress:
        summary = make_synthetic_corpus(target, dialogues=dialogues, seed=seed, recall_exchanges=recall_exchanges,
                                        workers=os.cpu_count() or 1, progress=progress, kinds=kinds or KINDS,
                                        voices=voices or VOICES, min_recall_exchanges=min_recall_exchanges)
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
    return summary


def longform(target: Path, options: dict[str, Any]) -> None:
    from rich.table import Table

    from omnittt.console import console, make_progress
    from omnittt.data.longform import make_longform_corpus

    with make_progress(transient=True) as progress:
        record = make_longform_corpus(target, progress=progress, **options)
    table = Table(title="long-form corpus", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("folder", str(target))
    table.add_row("recordings", f"{len(record['recordings'])} ({record['hours'] * 60:.1f} min, 16 kHz FLAC)")
    table.add_row("layouts", {"both": "raw and VAD-cut", "raw": "raw", "cut": "VAD-cut"}[record["layout"]])
    folder = target / (record["subset"] + ("_cut" if record["layout"] == "cut" else ""))
    table.add_row("next", f"omnittt preprocess librilight {folder} --output DIR --mini-batch-size 16")
    console.print(table)


def recall(target: Path, spec: Any) -> None:
    from rich.table import Table

    from omnittt.console import console, make_progress
    from omnittt.data.recall_corpus import make_recall_corpus

    with make_progress(transient=True) as progress:
        make_recall_corpus(target, spec, progress=progress)
    table = Table(title="recall corpus", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("folder", str(target))
    table.add_row("dialogues", f"{spec.dialogues} ({'spoken' if spec.spoken else 'text'} user turns)")
    filler = spec.filler if spec.min_filler is None else f"{spec.min_filler}-{spec.filler}"
    table.add_row("each", f"{spec.facts} fact(s), {filler} filler exchange(s) of {spec.filler_words} words, "
                          f"{spec.queries or spec.facts} question(s)")
    table.add_row("next", f"omnittt preprocess conversations {target} --output {target}_processed")
    console.print(table)
