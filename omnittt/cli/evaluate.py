"""`omnittt eval`: loss vs position, TTT vs attention, carried vs reset state, recall across turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors

HELP = """Loss vs position, TTT vs attention, carried vs reset state, recall across turns.

Teacher-forced loss on the assistant tokens, bucketed by position (real tokens since the conversation or
session start: 0-1k, 1k-2k, 2k-4k, ... 32k-64k), with tokens per bucket and a 95% interval (percentile
bootstrap over conversations). Conversations are fed exactly as in training, exchange by exchange, state
carried. By default the model is also scored with its TTT state reset to the learned init before every turn
(attention keeps its context): the difference is what the carried state contributes. --baseline adds another
run or model (e.g. the attention-only model trained with --ttt-layers '') on the same tokens. The recall probe
scores the code in the synthetic recall dialogues vs its distance to the turn that stated it. The uniform-guess
loss ln(vocab) is printed beside every figure.

Long-form audio: with --data an audio index (`omnittt preprocess librilight`) and a run pre-trained with
--objective audio, the audio objective is scored on every speech position of every recording, with the TTT state
carried through the recording and reset before every segment, and the gap reset - carried (with its interval) is
reported by --position-bins bins of position into the recording.

Example: [bold]omnittt eval --run runs/tiny --data processed_data --stage 8k --baseline runs/tiny-attn
--output eval.json[/bold]"""


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        run: Path = typer.Option(None, "--run", help="Run directory (its latest checkpoint) or a checkpoint."),
        model: Path = typer.Option(None, "--model", help="Model directory (an export or a checkpoint)."),
        preset: str = typer.Option(None, "--preset", help="Random weights of a preset (the ln(vocab) check)."),
        data: Path = typer.Option(None, "--data", help="Processed dataset (default: the run's, else "
                                  "processed_data)."),
        stage: str = typer.Option(None, "--stage", help="Curriculum stage 8k/16k/32k/64k (sessions) or none "
                                  "(whole conversations). Default: the run's, else 8k."),
        baseline: Path = typer.Option(None, "--baseline", help="Run, checkpoint or model directory to "
                                      "compare with on the same tokens."),
        ttt_reset: str = typer.Option("both", "--ttt-reset", help="never (state carried, as trained), "
                                      "every-turn (the ablation), or both."),
        output: Path = typer.Option(None, "--output", help="Write the report as JSON here."),
        plot: Path = typer.Option(None, "--plot", help="Write a loss-vs-position PNG (needs matplotlib)."),
        max_conversations: int = typer.Option(None, "--max-conversations", help="Evaluate only the first N "
                                              "conversations / sessions."),
        held_out: bool = typer.Option(False, "--held-out", help="Score only conversations the run never trained "
                                      "on (every stage's split is recorded in RUN/splits.json)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Conversations evaluated together."),
        min_tokens: int = typer.Option(100, "--min-tokens", help="Buckets with fewer tokens get no figure."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals."),
        recall: bool = typer.Option(True, "--recall/--no-recall", help="Run the recall probe."),
        speech_swap: bool = typer.Option(True, "--speech-swap/--no-speech-swap", help="Also score the model with "
                                         "another conversation's speech in every turn (the control: what it takes "
                                         "from what was said); only when the data has speech."),
        position_bins: int = typer.Option(4, "--position-bins", help="Long-form audio (--data an audio index): "
                                          "equal bins of positions into the recording for the carried-vs-reset "
                                          "gap."),
        num_threads: int = typer.Option(None, "--num-threads", help="torch CPU threads."),
        device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    ) -> Any:
        from omnittt.errors import UserError

        modes = {"both": ("never", "every-turn"), "never": ("never",), "every-turn": ("every-turn",)}
        if ttt_reset not in modes:
            raise UserError(f"unknown --ttt-reset {ttt_reset!r}", fix="use never, every-turn or both")
        import torch

        from omnittt.atomic import atomic_write_json
        from omnittt.console import console, make_progress
        from omnittt.evaluation.evaluate import EvalOptions, evaluate
        from omnittt.evaluation.plot import plot_report, require_matplotlib
        from omnittt.evaluation.statistics import StatOptions

        if plot is not None:
            require_matplotlib()
        if num_threads:
            torch.set_num_threads(num_threads)
        options = EvalOptions(
            run=str(run) if run else None, model=str(model) if model else None, preset=preset,
            data=str(data) if data else None, stage=stage, baseline=str(baseline) if baseline else None,
            ttt_reset=modes[ttt_reset], batch_size=batch_size, max_conversations=max_conversations, held_out=held_out,
            recall=recall, speech_swap=speech_swap, stats=StatOptions(min_tokens=min_tokens, bootstrap=bootstrap),
            position_bins=position_bins,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        )
        with make_progress() as progress:
            report = evaluate(options, progress=progress)
        if report.get("objective") == "audio":
            render_audio_report(console, report)
        else:
            render_report(console, report)
        if output is not None:
            atomic_write_json(output, report)
            console.print(f"report written to [bold]{output}[/bold]")
        if plot is not None and report.get("objective") == "audio":
            console.print("[yellow]--plot draws the text report; the audio report is the table above and the "
                          "JSON (--output)[/yellow]")
        elif plot is not None:
            plot_report(report, plot)
            console.print(f"plot written to [bold]{plot}[/bold]")


def _figure(row: dict[str, Any], signed: bool = False) -> str:
    if row.get("loss") is None:
        return f"[dim]— ({row.get('note', 'no figure')})[/dim]"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(row["loss"])
    if row.get("ci"):
        low, high = row["ci"]
        text += f" [dim][{fmt.format(low)}, {fmt.format(high)}][/dim]"
    return text


def render_report(console: Any, report: dict[str, Any]) -> None:
    """Header, the loss-vs-position table (runs and paired differences), verdicts, the recall probe and a
    terminal chart."""
    from rich.panel import Panel
    from rich.table import Table

    uniform = f"ln {report['vocab_size']} = {report['uniform_loss']:.3f}"
    head = (f"model   {report['model']}" + (f" (step {report['step']})" if report.get("step") is not None else "")
            + (f"\nbaseline {report['baseline']}" if report.get("baseline") else "")
            + f"\ndata    {report['data']} · stage {report['stage']} · {report['conversations']:,} "
              + ("held-out " if report.get("held_out") else "") + "conversations · "
              f"{report['exchanges']:,} exchanges · {report['positions']:,} positions"
            + f"\nuniform-guess loss {uniform} · {report['elapsed_sec']:.1f} s "
              f"({report['positions_per_sec']:,.0f} positions/s over all runs)")
    console.print(Panel(head, title="omnittt eval", expand=False))

    stats = report["statistics"]
    table = Table(title=f"loss vs position (nats per assistant token; {stats['confidence']:.0%} interval: "
                        f"{stats['interval']}; uniform guess {uniform})")
    table.add_column("position", style="bold")
    table.add_column("tokens", justify="right")
    for run in report["runs"]:
        table.add_column(run["name"], justify="right")
    for comp in report["comparisons"]:
        table.add_column(f"Δ {comp['name']}", justify="right")
    for i, label in enumerate(report["buckets"]):
        first = report["runs"][0]["buckets"][i]
        table.add_row(label, f"{first['tokens']:,}", *[_figure(run["buckets"][i]) for run in report["runs"]],
                      *[_figure(comp["buckets"][i], signed=True) for comp in report["comparisons"]])
    table.add_row("all", f"{report['runs'][0]['overall']['tokens']:,}",
                  *[_figure(run["overall"]) for run in report["runs"]],
                  *[_figure(comp["overall"], signed=True) for comp in report["comparisons"]], style="bold")
    console.print(table)
    for run in report["runs"]:
        colour = "green" if run["verdict"].startswith("below") else "bold red"
        console.print(f"[bold]{run['name']}[/bold]: [{colour}]{run['verdict']}[/{colour}]")
    for comp in report["comparisons"]:
        console.print(f"[dim]Δ {comp['name']}: {comp['meaning']}[/dim]")
    if "recall" in report:
        render_recall(console, report["recall"])
    render_chart(console, report)


def render_audio_report(console: Any, report: dict[str, Any]) -> None:
    """Long-form audio: the audio objective by position into the recording, carried vs reset, and the gap."""
    from rich.panel import Panel
    from rich.table import Table

    head = (f"model   {report['model']}" + (f" (step {report['step']})" if report.get("step") is not None else "")
            + f"\ndata    {report['data']} · {report['recordings']:,} " + ("held-out " if report["held_out"] else "")
            + f"recordings · {report['exchanges']:,} segments · {report['positions']:,} positions"
            + f"\nobjective: {report['loss']}, {report['apc_shift']} positions ahead · {report['elapsed_sec']:.1f} s")
    console.print(Panel(head, title="omnittt eval (long-form audio)", expand=False))
    stats = report["statistics"]
    table = Table(title=f"audio objective vs position into the recording ({stats['confidence']:.0%} interval: "
                        f"{stats['interval']})")
    table.add_column("positions", style="bold")
    table.add_column("scored", justify="right")
    for run in report["runs"]:
        table.add_column(run["name"], justify="right")
    gap = report.get("gap")
    if gap:
        table.add_column(f"Δ {gap['name']}", justify="right")
    for i, label in enumerate(report["bins"]):
        cells = [_figure(run["bins"][i]) for run in report["runs"]] + ([_figure(gap["bins"][i], True)] if gap else [])
        table.add_row(label, f"{report['runs'][0]['bins'][i]['tokens']:,}", *cells)
    table.add_row("all", f"{report['runs'][0]['overall']['tokens']:,}",
                  *[_figure(run["overall"]) for run in report["runs"]],
                  *([_figure(gap["overall"], True)] if gap else []), style="bold")
    console.print(table)
    if gap:
        console.print(f"[dim]Δ {gap['name']}: {gap['meaning']}[/dim]")


def render_recall(console: Any, recall: dict[str, Any]) -> None:
    from rich.table import Table

    if not recall.get("dialogues"):
        console.print(f"[yellow]recall probe: {recall.get('note', 'no dialogues')}[/yellow]")
        return
    table = Table(title=f"recall probe: {recall['dialogues']} dialogues, {recall['answer_tokens']} answer tokens "
                        f"(e.g. {', '.join(repr(x) for x in recall['examples'])}); fact "
                        f"{recall['turn_distance']['min']}-{recall['turn_distance']['max']} turns and "
                        f"{recall['position_distance']['min']:,}-{recall['position_distance']['max']:,} positions "
                        "before the answer")
    for name in ("run", "distance", "dialogues", "answer loss [interval]", "token acc.", "exact match"):
        table.add_column(name, justify="left" if name in ("run", "distance") else "right")
    for run in recall["runs"]:
        for key, prefix in (("all", ""), ("by_turns", "turns "), ("by_positions", "positions "),
                            ("by_facts", "facts held "), ("by_task", "task ")):
            for row in run.get(key, []):
                acc = f"{row['token_accuracy']:.1%}" if "token_accuracy" in row else "—"
                em = f"{row['exact_match']:.1%}" if "exact_match" in row else "—"
                table.add_row(run["name"] if key == "all" else "", f"{prefix}{row['distance']}",
                              str(row["dialogues"]), _figure(row), acc, em)
    for gap in recall["gaps"]:
        row = gap["all"][0]
        table.add_row(f"Δ {gap['name']}", "all", str(row["dialogues"]), _figure(row, signed=True), "",
                      f"{gap['exact_match_gain']:+.1%}", style="bold")
        for row in gap.get("by_task", []) if len(gap.get("by_task", [])) > 1 else []:
            table.add_row("", f"task {row['distance']}", str(row["dialogues"]), _figure(row, signed=True), "", "")
    console.print(table)
    for gap in recall["gaps"]:
        console.print(f"[dim]Δ {gap['name']}: {gap['meaning']}[/dim]")
    for run in recall["runs"]:
        render_needle(console, run)


def render_needle(console: Any, run: dict[str, Any]) -> None:
    """Exact match by position distance (rows) and facts held at once (columns), for one run."""
    from rich.table import Table

    cells = run.get("needle") or []
    facts = sorted({cell["facts"] for cell in cells})
    if len(cells) < 2:
        return
    table = Table(title=f"needle grid, {run['name']}: exact match by distance and facts held", title_justify="left")
    table.add_column("positions")
    for f in facts:
        table.add_column(f"{f} fact{'s' if f > 1 else ''}", justify="right")
    for label in dict.fromkeys(cell["distance"] for cell in cells):
        row = {cell["facts"]: cell for cell in cells if cell["distance"] == label}
        table.add_row(label, *(f"{row[f]['exact_match']:.0%} ({row[f]['items']})" if f in row else "—"
                               for f in facts))
    console.print(table)


def render_chart(console: Any, report: dict[str, Any], width: int = 40) -> None:
    """Loss per bucket as bars, one per run, on a scale that ends at max(ln vocab, largest loss)."""
    values = [row["loss"] for run in report["runs"] for row in run["buckets"] if row["loss"] is not None]
    if not values:
        return
    top = max(report["uniform_loss"], *values)
    mark = int(round(report["uniform_loss"] / top * width))
    colours = ["cyan", "magenta", "yellow", "green"]
    console.print(f"[bold]loss vs position[/bold] [dim](bar = loss, | = uniform guess {report['uniform_loss']:.2f})"
                  "[/dim]")
    for i, label in enumerate(report["buckets"]):
        for r, run in enumerate(report["runs"]):
            row = run["buckets"][i]
            name = f"{label:>7} {run['name'][:28]:<28}" if r == 0 else f"{'':>7} {run['name'][:28]:<28}"
            if row["loss"] is None:
                console.print(f"{name} [dim]no figure[/dim]")
                continue
            n = int(round(row["loss"] / top * width))
            bar = "".join("|" if j == mark and j >= n else ("█" if j < n else " ") for j in range(width + 1))
            console.print(f"{name} [{colours[r % len(colours)]}]{bar}[/] {row['loss']:.3f}", highlight=False)
