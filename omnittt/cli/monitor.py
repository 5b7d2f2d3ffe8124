"""`omnittt monitor`: the live Textual view of a run directory, or (`--once`) its summary printed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from omnittt.cli._common import handle_errors

HELP = """Live TUI of TTT-state norms, FP32 status and training health.

Follows RUN_DIR/metrics.jsonl and RUN_DIR/ttt_state.jsonl as training writes them (and waits for them if
training has not started yet). Keys: q quit, p pause, arrows + enter layer history, ? help.

Examples:

  [bold]omnittt monitor runs/tiny[/bold]

  [bold]omnittt monitor[/bold]                      (the most recent run under runs/)

  [bold]omnittt monitor runs/tiny --once --json[/bold]   (one summary for scripts and CI)"""


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        run_dir: Optional[Path] = typer.Argument(
            None, help="Run directory (default: the most recently written run under runs/)."),
        once: bool = typer.Option(False, "--once", help="Print the summary once and exit (no TUI)."),
        as_json: bool = typer.Option(False, "--json", help="With --once: print the summary as JSON."),
        interval: float = typer.Option(0.25, "--interval", min=0.05, help="Seconds between file polls."),
        stall_after: Optional[float] = typer.Option(
            None, "--stall-after", help="Seconds without a new step before the run counts as stalled "
            "(default: 10x the recent step time, at least 120)."),
        norm_growth: float = typer.Option(
            3.0, "--norm-growth", help="Alert when a state norm exceeds this multiple of its recent median."),
    ) -> Any:
        from omnittt.errors import UserError
        from omnittt.inspect.run_state import MonitorSettings, RunState, latest_run

        if as_json and not once:
            raise UserError("--json needs --once", fix="run `omnittt monitor RUN_DIR --once --json`")
        if run_dir is None:
            run_dir = latest_run(Path("runs"))
            if run_dir is None:
                raise UserError("no RUN_DIR given and no run under ./runs",
                                fix="pass the run directory, e.g. `omnittt monitor runs/tiny`")
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a directory", fix="pass the run directory, not a file in it")
        settings = MonitorSettings(stall_after=stall_after, norm_growth=norm_growth)

        if once:
            if not run_dir.is_dir():
                raise UserError(f"{run_dir}: no such run directory", fix="check the path (see `ls runs`)")
            state = RunState(run_dir, settings)
            state.poll()
            summary = state.summary()
            if as_json:
                typer.echo(json.dumps(summary, indent=2))
            else:
                from omnittt.console import console

                console.print(render_summary(summary))
            return

        import sys

        if not sys.stdout.isatty():
            raise UserError("the live monitor needs a terminal (stdout is not a TTY)",
                            fix=f"print a summary instead: `omnittt monitor {run_dir} --once` (or --once --json)")
        from omnittt.inspect.monitor_app import MonitorApp

        MonitorApp(run_dir, settings, interval=interval).run()


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_summary(summary: dict[str, Any]) -> Any:
    """The --once view: a panel with the run header, the FP32 status, a table of TTT layers and the alerts."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from omnittt.inspect.run_state import format_duration
    from omnittt.inspect.schemas import FULL_PRECISION_DTYPES

    total = summary["total_steps"]
    status = "finished" if summary["finished"] else (
        "waiting for " + ", ".join(summary["waiting_for"]) if summary["waiting_for"] else "running")
    header = Text.assemble(
        ("step ", "dim"), (f"{_fmt(summary['step'])}{f'/{total}' if total else ''}", "bold"),
        ("  stage ", "dim"), _fmt(summary["stage"]), ("  loss ", "dim"), _fmt(summary["loss"]),
        ("  lr ", "dim"), _fmt(summary["lr"], ".2e"), ("  grad ", "dim"), _fmt(summary["grad_norm"], ".3g"),
        ("  tok/s ", "dim"), _fmt(summary["tokens_per_s"], ",.0f"),
        ("  ETA ", "dim"), format_duration(summary["eta_s"]), ("  ckpt ", "dim"), _fmt(summary["last_checkpoint"]),
        ("  ", ""), (status, "green" if status != "running" or not summary["alerts"] else "yellow"),
    )
    fp32 = summary["fp32"]
    if fp32["ok"] is None:
        badge = Text("FP32: no TTT state logged yet", style="dim")
    elif fp32["ok"]:
        badge = Text("FP32 ✓ every TTT state is float32", style="bold green")
    else:
        badge = Text("FP32 ✗ " + "; ".join(f"layer {b['layer']} {b['state']} {b['dtype']}" for b in fp32["bad"]),
                     style="bold red")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("layer", "step", "|W1|", "|b1|", "|W2|", "|b2|", "ΔW1", "inner loss before → after", "dtype"):
        table.add_column(column, justify="left" if column.startswith(("inner", "dtype")) else "right")
    for layer in summary["layers"]:
        norm, delta = layer["norm"] or {}, layer["delta"] or {}
        dtypes = layer["dtype"] or {}
        bad = {k: v for k, v in dtypes.items() if v not in FULL_PRECISION_DTYPES}
        table.add_row(
            str(layer["layer"]), _fmt(layer["step"]), *[_fmt(norm.get(k)) for k in ("W1", "b1", "W2", "b2")],
            _fmt(delta.get("W1"), ".3g"),
            f"{_fmt(layer['inner_loss_before'])} → {_fmt(layer['inner_loss_after'])}",
            Text(", ".join(f"{k} {v}" for k, v in bad.items()), style="bold red") if bad
            else Text("/".join(sorted(set(dtypes.values()))) or "-", style="green"),
        )
    alerts = Text()
    for alert in summary["alerts"]:
        if alerts:
            alerts.append("\n")
        alerts.append("● ", style="bold red" if alert["severity"] == "error" else "yellow")
        alerts.append(alert["message"])
    parts = [header, badge, table if summary["layers"] else Text("no TTT layers logged yet", style="dim"),
             alerts or Text("no alerts", style="green")]
    return Panel(Group(*parts), title=f"[bold]{summary['run']}[/bold]", title_align="left")
