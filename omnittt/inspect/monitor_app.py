"""The Textual TUI behind `omnittt monitor`: follows a run directory's `metrics.jsonl` and `ttt_state.jsonl` as
they grow and shows the run header, the FP32 badge, loss and tokens/s sparklines, one row per TTT layer and the
alerts. Everything it shows comes from a `RunState`; this module only draws it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Sparkline, Static

from omnittt.inspect.run_state import LayerHistory, MonitorSettings, RunState, format_duration
from omnittt.inspect.schemas import FULL_PRECISION_DTYPES

BLOCKS = "▁▂▃▄▅▆▇█"
READ_SLICE = 4 << 20  # bytes read per file per tick: a long run's files load in slices, the UI stays responsive


def spark_text(values: Sequence[float], width: int = 16) -> Text:
    """A one-line sparkline of the last `width` values (non-finite points drawn as a red `!`)."""
    points = list(values)[-width:]
    finite = [v for v in points if math.isfinite(v)]
    text = Text()
    if not finite:
        return Text("!" * len(points), style="bold red") if points else text
    low, high = min(finite), max(finite)
    span = high - low
    for value in points:
        if not math.isfinite(value):
            text.append("!", style="bold red")
        else:
            level = 0 if span <= 1e-12 * max(abs(high), 1.0) else round((value - low) / span * (len(BLOCKS) - 1))
            text.append(BLOCKS[level], style="cyan")
    return text


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec) if math.isfinite(value) else "nan"
    return str(value)


def finite_series(values: Sequence[float]) -> list[float]:
    """Sparkline widgets need finite numbers: drop the non-finite points (the table marks them)."""
    return [v for v in values if math.isfinite(v)]


def dtype_text(dtypes: dict[str, str]) -> Text:
    if not dtypes:
        return Text("-")
    bad = {name: dtype for name, dtype in dtypes.items() if dtype not in FULL_PRECISION_DTYPES}
    if not bad:
        return Text("/".join(sorted(set(dtypes.values()))), style="green")
    return Text(", ".join(f"{name} {dtype}" for name, dtype in bad.items()), style="bold red")


def inner_loss_text(latest: dict[str, Any]) -> Text:
    before, after = latest.get("inner_loss_before"), latest.get("inner_loss_after")
    text = Text(f"{fmt(before)} → {fmt(after)}")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and after > before:
        text.stylize("yellow")  # the inner update made the reconstruction worse
    return text


LAYER_COLUMNS = (
    ("layer", "layer"), ("W1", "|W1|"), ("W1_trend", "W1 trend"), ("b1", "|b1|"), ("W2", "|W2|"),
    ("W2_trend", "W2 trend"), ("b2", "|b2|"), ("delta", "ΔW1"), ("inner", "inner loss before → after"),
    ("lr", "inner lr"), ("dtype", "dtype"),
)


def layer_cells(layer: LayerHistory) -> dict[str, Any]:
    latest = layer.latest
    norm, delta = latest.get("norm") or {}, latest.get("delta") or {}
    nonfinite = set(latest.get("nonfinite") or [])

    def norm_cell(name: str) -> Text:
        if name not in norm:
            return Text("-", style="dim")
        return Text(fmt(norm[name]), style="bold red" if name in nonfinite or norm[name] is None else "")

    return {
        "layer": Text(str(layer.layer), style="bold"),
        "W1": norm_cell("W1"),
        "W1_trend": spark_text(layer.norms["W1"]),
        "b1": norm_cell("b1"),
        "W2": norm_cell("W2"),
        "W2_trend": spark_text(layer.norms["W2"]),
        "b2": norm_cell("b2"),
        "delta": Text(fmt(delta.get("W1"), ".3g")),
        "inner": inner_loss_text(latest),
        "lr": Text(fmt(latest.get("mean_lr"), ".3g")),
        "dtype": dtype_text(layer.dtypes),
    }


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 64; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """

    def compose(self) -> ComposeResult:
        yield Static(
            "[b]omnittt monitor[/b]\n\n"
            "q        quit\n"
            "p        pause / resume following the files\n"
            "↑ ↓      select a TTT layer\n"
            "enter    history of the selected layer\n"
            "?        this help (escape closes)\n\n"
            "Norms are Frobenius norms of the runtime fast weights (the state after the\n"
            "last mini-batch of the logged step), averaged over batch rows. The FP32 badge\n"
            "is red when any TTT state is not float32."
        )


class LayerScreen(ModalScreen[None]):
    """The logged history of one TTT layer (follows the files like the main screen)."""

    BINDINGS = [Binding("escape,enter,q", "app.pop_screen", "back")]
    DEFAULT_CSS = """
    LayerScreen { align: center middle; }
    LayerScreen > VerticalScroll { width: 96%; height: 94%; border: round $accent; background: $panel; }
    LayerScreen Sparkline { height: 2; margin-bottom: 1; }
    LayerScreen DataTable { height: auto; max-height: 16; }
    """
    ROWS = 30  # latest entries listed in the table

    def __init__(self, layer: LayerHistory) -> None:
        super().__init__()
        self.history = layer
        self.names = layer.state_names

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Label(id="title")
            for name in self.names:
                yield Label(id=f"label_{name}")
                yield Sparkline([], id=f"spark_{name}")
            for key in ("before", "after"):
                yield Label(id=f"label_{key}")
                yield Sparkline([], id=f"spark_{key}")
            table: DataTable = DataTable(id="entries", cursor_type="row", zebra_stripes=True)
            table.add_columns("step", *[f"|{n}|" for n in self.names], "inner before", "inner after", "dtype")
            yield table

    def on_mount(self) -> None:
        self.update_history()

    def update_history(self, layer: LayerHistory | None = None) -> None:
        layer = self.history = layer or self.history
        steps = list(layer.steps)
        span = f"steps {steps[0]}-{steps[-1]}, {len(steps)} entries" if steps else "no entries"
        self.query_one("#title", Label).update(
            f"[b]TTT layer {layer.layer}[/b] ({layer.latest.get('kind', '?')}, {span})")
        init = layer.latest.get("init_norm") or {}
        for name in self.names:
            values = finite_series(layer.norms[name])
            learned = f"  (learned init {fmt(init[name])})" if name in init else ""
            self.query_one(f"#label_{name}", Label).update(
                f"|{name}|  last {fmt(_last(layer.norms[name]))}  min {fmt(min(values, default=None))}  "
                f"max {fmt(max(values, default=None))}{learned}")
            self.query_one(f"#spark_{name}", Sparkline).data = values
        for key, series in (("before", layer.inner_before), ("after", layer.inner_after)):
            self.query_one(f"#label_{key}", Label).update(f"inner loss {key} (last {fmt(_last(series))})")
            self.query_one(f"#spark_{key}", Sparkline).data = finite_series(series)
        table = self.query_one("#entries", DataTable)
        table.clear()
        columns = [list(layer.norms[n])[-self.ROWS:] for n in self.names]
        rows = zip(steps[-self.ROWS:], *columns, list(layer.inner_before)[-self.ROWS:],
                   list(layer.inner_after)[-self.ROWS:], list(layer.dtype_history)[-self.ROWS:], strict=True)
        for step, *values, dtypes in reversed(list(rows)):
            table.add_row(str(step), *[fmt(v) for v in values], dtype_text(dtypes))


def _last(values: Sequence[float]) -> float | None:
    return values[-1] if values else None


class MonitorApp(App[None]):
    """Live view of a run directory."""

    TITLE = "omnittt monitor"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #top { height: 3; }
    #header { width: 1fr; height: 3; padding: 0 1; }
    #badge { width: auto; min-width: 14; height: 3; content-align: center middle; padding: 0 1;
             text-style: bold; }
    #badge.ok { background: $success; color: $text; }
    #badge.bad { background: $error; color: $text; }
    #badge.unknown { background: $surface; color: $text-muted; }
    #charts { height: 4; }
    #charts > Vertical { width: 1fr; padding: 0 1; }
    #charts Sparkline { height: 2; }
    #layers { height: 1fr; min-height: 5; }
    #alerts { height: auto; max-height: 10; border-top: solid $accent; padding: 0 1; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("p", "toggle_pause", "pause"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    def __init__(self, run_dir: str | os.PathLike, settings: MonitorSettings | None = None,
                 interval: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.run_state = RunState(run_dir, settings, clock=clock)
        self.interval = interval
        self.paused = False
        self._ticks = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield Static(id="header")
            yield Static("FP32 ?", id="badge", classes="unknown")
        with Horizontal(id="charts"):
            with Vertical():
                yield Label("loss", id="loss_label")
                yield Sparkline([], id="loss")
            with Vertical():
                yield Label("tokens/s", id="tps_label")
                yield Sparkline([], id="tps")
        table: DataTable = DataTable(id="layers", cursor_type="row", zebra_stripes=True)
        for key, label in LAYER_COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static(id="alerts")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_data(force=True)
        self.set_interval(self.interval, self.refresh_data)
        self.query_one("#layers", DataTable).focus()

    # data -------------------------------------------------------------------------------------------------

    def refresh_data(self, force: bool = False) -> None:
        """Read what the files gained; redraw on change (and every few ticks for the clock-based stall alert)."""
        self._ticks += 1
        if self.paused and not force:
            return
        changed = self.run_state.poll(max_bytes=READ_SLICE)
        if changed or force or self._ticks % 8 == 0:
            self.update_view()

    def update_view(self) -> None:
        state = self.run_state
        self.query_one("#header", Static).update(self.header_text())
        self.update_badge()
        loss = finite_series(state.loss)
        self.query_one("#loss", Sparkline).data = loss
        self.query_one("#loss_label", Label).update(f"loss  last {fmt(loss[-1] if loss else None)}  "
                                                    f"min {fmt(min(loss, default=None))}")
        tps = list(state.tokens_per_s)
        self.query_one("#tps", Sparkline).data = tps
        self.query_one("#tps_label", Label).update(f"tokens/s  last {fmt(tps[-1] if tps else None, ',.0f')}")
        self.update_layers()
        self.query_one("#alerts", Static).update(self.alerts_text())
        screen = self.screen
        if isinstance(screen, LayerScreen) and screen.history.layer in state.layers:
            screen.update_history(state.layers[screen.history.layer])

    def header_text(self) -> Text:
        state, metrics = self.run_state, self.run_state.metrics
        total = metrics.get("total_steps")
        step = f"{fmt(state.step)}/{total}" if total else fmt(state.step)
        if self.paused:
            status = Text("PAUSED", style="bold yellow")
        elif state.finished:
            status = Text("finished", style="bold green")
        elif state.waiting_for():
            status = Text("waiting for " + ", ".join(state.waiting_for()), style="yellow")
        elif state.stalled_for() is not None:
            status = Text("stalled", style="bold red")
        else:
            status = Text("running", style="green")
        line1 = Text.assemble(("run ", "dim"), (state.name, "bold"), "  ", status)
        pairs = [
            ("step", step), ("stage", fmt(metrics.get("stage"))), ("loss", fmt(metrics.get("loss"))),
            ("lr", fmt(metrics.get("lr"), ".2e")), ("grad", fmt(metrics.get("grad_norm"), ".3g")),
            ("tok/s", fmt(metrics.get("tokens_per_s"), ",.0f")),
            ("ETA", format_duration(state.eta_seconds())), ("ckpt", state.last_checkpoint or "-"),
        ]
        line2 = Text()
        for label, value in pairs:
            line2.append(f"{label} ", style="dim")
            line2.append(f"{value}   ", style="bold")
        return Text("\n").join([line1, line2])

    def update_badge(self) -> None:
        badge = self.query_one("#badge", Static)
        ok = self.run_state.fp32_ok
        badge.set_classes("unknown" if ok is None else "ok" if ok else "bad")
        if ok is None:
            badge.update("FP32 ?")
        elif ok:
            badge.update("FP32 ✓")
        else:
            layers = sorted({item["layer"] for item in self.run_state.fp32_bad})
            badge.update("FP32 ✗ layer " + ",".join(str(i) for i in layers))

    def update_layers(self) -> None:
        table = self.query_one("#layers", DataTable)
        for layer in self.run_state.sorted_layers():
            cells = layer_cells(layer)
            key = str(layer.layer)
            if key in table.rows:
                for column, value in cells.items():
                    table.update_cell(key, column, value)
            else:
                table.add_row(*[cells[column] for column, _ in LAYER_COLUMNS], key=key)
        stale = [key for key in table.rows if int(key.value) not in self.run_state.layers]
        for key in stale:  # the file was truncated or replaced
            table.remove_row(key)

    def alerts_text(self) -> Text:
        alerts = self.run_state.alerts()
        if not alerts:
            return Text("no alerts", style="green")
        text = Text()
        for alert in sorted(alerts, key=lambda a: (a.severity != "error", a.layer if a.layer is not None else -1)):
            style = "bold red" if alert.severity == "error" else "yellow"
            where = ""
            if alert.first_step is not None:
                where = f" (step {alert.first_step}" + (f"-{alert.last_step}, {alert.count}x)"
                                                       if alert.count > 1 else ")")
            if text:
                text.append("\n")
            text.append("● ", style=style)
            text.append(alert.message + where)
        return text

    # actions ----------------------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.query_one("#header", Static).update(self.header_text())
        if not self.paused:
            self.refresh_data(force=True)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_show_layer(self) -> None:
        table = self.query_one("#layers", DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        layer = self.run_state.layers.get(int(key.value))
        if layer is not None:
            self.push_screen(LayerScreen(layer))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "layers":
            self.action_show_layer()
