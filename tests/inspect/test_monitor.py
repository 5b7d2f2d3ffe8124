"""`omnittt monitor`: the Textual app fed a growing run directory (pilot tests), a snapshot of its main screen,
and `--once [--json]` through the CLI."""

from __future__ import annotations

import json
import os
import time

import pytest
from textual.widgets import DataTable, Sparkline, Static
from typer.testing import CliRunner

from omnittt.cli import app as cli_app
from omnittt.inspect.jsonl import JsonlWriter
from omnittt.inspect.monitor_app import HelpScreen, LayerScreen, MonitorApp
from omnittt.inspect.run_state import MonitorSettings
from omnittt.inspect.schemas import METRICS_FILE, TTT_STATE_FILE
from omnittt.inspect.stats import MetricsLogger

FIXED_CLOCK = 1000.0  # keeps the stall alert (wall clock) out of the tests


def make_app(run_dir, **settings):
    # a long poll interval: the tests poll by hand unless they test live following
    return MonitorApp(run_dir, MonitorSettings(**settings), interval=30.0, clock=lambda: FIXED_CLOCK)


def layer_rows(app) -> dict[str, list[str]]:
    table = app.query_one("#layers", DataTable)
    return {key.value: [str(cell) for cell in table.get_row(key)] for key in table.rows}


def alerts_text(app) -> str:
    return str(app.query_one("#alerts", Static).render())


async def poll(app, pilot):
    app.refresh_data(force=True)
    await pilot.pause()


async def test_rows_and_sparklines_follow_a_growing_file(run_writer):
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        assert "waiting for metrics.jsonl, ttt_state.jsonl" in str(app.query_one("#header", Static).render())
        assert layer_rows(app) == {}
        run_writer.step(1)
        await poll(app, pilot)
        rows = layer_rows(app)
        assert set(rows) == {"2", "3"} and rows["2"][1] == "1.01"
        assert app.query_one("#loss", Sparkline).data == [3.0]
        for step in range(2, 6):
            run_writer.step(step)
        await poll(app, pilot)
        rows = layer_rows(app)
        assert rows["3"][1] == "1.05"
        assert len(rows["3"][2]) == 5  # W1 trend: one block per logged entry
        assert app.query_one("#loss", Sparkline).data == [3.0 / s for s in range(1, 6)]
        assert app.query_one("#tps", Sparkline).data == [800.0 + s for s in range(1, 6)]
        header = str(app.query_one("#header", Static).render())
        assert "step 5/100" in header and "stage 8k" in header
        assert "no alerts" in alerts_text(app)


async def test_new_lines_show_within_a_second_without_polling_by_hand(run_writer):
    run_writer.step(1)
    app = MonitorApp(run_writer.run_dir, interval=0.25, clock=lambda: FIXED_CLOCK)
    async with app.run_test(size=(140, 40)) as pilot:
        run_writer.step(2, layers=(2, 3, 7))
        await pilot.pause(1.0)
        assert set(layer_rows(app)) == {"2", "3", "7"}
        assert "step 2/100" in str(app.query_one("#header", Static).render())


async def test_bfloat16_state_turns_the_badge_red_and_raises_an_alert(run_writer, lines):
    run_writer.step(1)
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        badge = app.query_one("#badge", Static)
        assert badge.has_class("ok") and "✓" in str(badge.render())
        run_writer.ttt.write(lines.ttt(2, 3, dtype="bfloat16"))
        await poll(app, pilot)
        assert badge.has_class("bad") and not badge.has_class("ok")
        assert "layer 3" in str(badge.render())
        assert "layer 3: TTT state not float32 (W1 bfloat16)" in alerts_text(app)
        assert "bfloat16" in layer_rows(app)["3"][-1]


async def test_nan_line_raises_an_alert_naming_the_layer(run_writer, lines):
    run_writer.step(1)
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        nan = float("nan")
        run_writer.ttt.write(lines.ttt(2, 2, w2=nan, nan=12, nonfinite=["W2"]))
        await poll(app, pilot)
        text = alerts_text(app)
        assert "layer 2: non-finite W2 (12 NaN)" in text
        assert layer_rows(app)["2"][4] == "-"  # the W2 norm cell: written as null, shown as missing
        assert app.query_one("#badge", Static).has_class("ok")  # dtype is still float32


async def test_half_written_last_line_is_not_parsed_early(run_writer, lines):
    run_writer.step(1)
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        rest = run_writer.partial_ttt(lines.ttt(2, 9, w1=4.5), cut=40)
        await poll(app, pilot)
        assert set(layer_rows(app)) == {"2", "3"}
        assert app.run_state.ttt_tail.bad_lines == 0
        run_writer.append_raw_ttt(rest)
        await poll(app, pilot)
        assert layer_rows(app)["9"][1] == "4.5"
        assert "malformed" not in alerts_text(app)


async def test_a_finished_run_opened_later_shows_finished_without_a_stall_alert(run_writer):
    for step in range(1, 4):
        run_writer.step(step)  # written "long ago" by the fixed fixture clock
    app = MonitorApp(run_writer.run_dir, interval=30.0, clock=lambda: 1e6)
    async with app.run_test(size=(140, 40)) as pilot:
        assert "stalled" in str(app.query_one("#header", Static).render())
        assert "no new step for" in alerts_text(app)
        MetricsLogger(run_writer.run_dir).finish(3)
        await poll(app, pilot)
        header = str(app.query_one("#header", Static).render())
        assert "finished" in header and "stalled" not in header
        assert "no alerts" in alerts_text(app)


async def test_pause_stops_following_until_resumed(run_writer):
    run_writer.step(1)
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("p")
        assert "PAUSED" in str(app.query_one("#header", Static).render())
        run_writer.step(2)
        app.refresh_data()
        await pilot.pause()
        assert app.run_state.step == 1
        await pilot.press("p")
        assert app.run_state.step == 2
        assert "PAUSED" not in str(app.query_one("#header", Static).render())


async def test_enter_opens_the_selected_layers_history_and_help_opens(run_writer):
    for step in range(1, 4):
        run_writer.step(step)
    app = make_app(run_writer.run_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("down", "enter")
        assert isinstance(app.screen, LayerScreen) and app.screen.history.layer == 3
        history = app.screen.query_one(DataTable)
        assert history.row_count == 3
        assert [str(history.get_row_at(0)[0]), str(history.get_row_at(0)[1])] == ["3", "1.03"]  # newest first
        run_writer.step(4, layers=(3,), dtype="bfloat16")  # the open history follows the files too
        await poll(app, pilot)
        assert history.row_count == 4
        assert [str(cell) for cell in history.get_row_at(0)][:2] == ["4", "1.04"]
        assert "bfloat16" in str(history.get_row_at(0)[-1]) and "bfloat16" not in str(history.get_row_at(1)[-1])
        await pilot.press("escape")
        assert not isinstance(app.screen, LayerScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("q")
    assert app.return_code == 0


def test_main_screen_snapshot(run_writer, lines, snap_compare):
    for step in range(1, 21):
        run_writer.metrics.write(lines.metrics(step, loss=4.0 / step ** 0.5, time=float(step)))
        run_writer.ttt.write_many([lines.ttt(step, layer, w1=1.0 + 0.02 * step * (layer - 1), w2=2.0 + 0.01 * step)
                                   for layer in (2, 3)])
    run_writer.ttt.write(lines.ttt(21, 3, dtype="bfloat16"))
    (run_writer.run_dir / "checkpoints").mkdir()
    (run_writer.run_dir / "checkpoints" / "latest").write_text("step_20\n")
    app = MonitorApp(run_writer.run_dir, MonitorSettings(stall_after=1e9), interval=30.0, clock=lambda: 30.0)
    assert snap_compare(app, terminal_size=(130, 24))


runner = CliRunner()


def test_once_json_summary(run_writer, lines):
    for step in range(1, 4):
        run_writer.step(step, time=time.time())  # a live run: no stall alert
    run_writer.ttt.write(lines.ttt(3, 5, dtype="bfloat16"))
    result = runner.invoke(cli_app, ["monitor", str(run_writer.run_dir), "--once", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["run"] == "tiny-run" and summary["step"] == 3 and summary["stage"] == "8k"
    assert [layer["layer"] for layer in summary["layers"]] == [2, 3, 5]
    assert summary["layers"][0]["norm"]["W1"] == pytest.approx(1.03)
    assert summary["fp32"] == {"ok": False, "bad": [{"layer": 5, "state": "W1", "dtype": "bfloat16"}]}
    assert [alert["kind"] for alert in summary["alerts"]] == ["dtype"]
    # the step advances when the file grows
    run_writer.step(4, time=time.time())
    again = json.loads(runner.invoke(cli_app, ["monitor", str(run_writer.run_dir), "--once", "--json"]).output)
    assert again["step"] == 4


def test_once_rich_panel_and_latest_run_default(tmp_path, lines, monkeypatch):
    for name, w1 in (("older-run", 7.0), ("tiny-run", 1.25)):
        run_dir = tmp_path / "runs" / name
        JsonlWriter(run_dir / METRICS_FILE).write(lines.metrics(1))
        JsonlWriter(run_dir / TTT_STATE_FILE).write(lines.ttt(1, 2, w1=w1))
    os.utime(tmp_path / "runs" / "older-run" / METRICS_FILE, (1_000_000, 1_000_000))
    os.utime(tmp_path / "runs" / "older-run" / TTT_STATE_FILE, (1_000_000, 1_000_000))
    os.utime(tmp_path / "runs" / "older-run", (1_000_000, 1_000_000))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli_app, ["monitor", "--once"])
    assert result.exit_code == 0, result.output
    assert "tiny-run" in result.output and "FP32 ✓" in result.output and "1.25" in result.output
    assert "older-run" not in result.output


def test_once_errors_are_one_line_with_a_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli_app, ["monitor", "--once"])
    assert result.exit_code == 2 and "no RUN_DIR given" in result.output
    result = runner.invoke(cli_app, ["monitor", str(tmp_path / "missing"), "--once", "--json"])
    assert result.exit_code == 2 and "no such run directory" in result.output
    result = runner.invoke(cli_app, ["monitor", str(tmp_path), "--json"])
    assert result.exit_code == 2 and "--json needs --once" in result.output
    result = runner.invoke(cli_app, ["monitor", str(tmp_path)])  # CliRunner's stdout is no terminal
    assert result.exit_code == 2 and "needs a terminal" in result.output and "--once" in result.output


# --- slow tier: a real `omnittt train` writes the run directory while the monitor reads it -----------------------


@pytest.fixture(scope="module")
def spoken_dialogues(tmp_path_factory):
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("monitor_live")
    make_synthetic_corpus(root / "corpus", dialogues=4, seed=0, recall_exchanges=5, workers=2)
    preprocess(PreprocessOptions(source="synthetic", input_dir=str(root / "corpus"), output=str(root / "processed"),
                                 mini_batch_size=16, workers=2))
    return root / "processed"


def _summary(run_dir) -> dict:
    result = runner.invoke(cli_app, ["monitor", str(run_dir), "--once", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_once_json_follows_a_live_training_run(spoken_dialogues, tmp_path):
    import subprocess
    import sys

    run_dir, max_steps = tmp_path / "live", 24
    command = [sys.executable, "-m", "omnittt", "train", "--preset", "tiny", "--data", str(spoken_dialogues),
               "--stage", "none", "--run", str(run_dir), "--ttt-mini-batch-size", "16", "--batch-size", "2",
               "--tbptt-turns", "2", "--num-threads", "1", "--max-steps", str(max_steps), "--save-every", "8",
               "--set", "log_ttt_every=2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[int] = []
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None and len(set(seen)) < 2:
            if run_dir.is_dir():
                summary = _summary(run_dir)
                if summary["step"] is not None and not summary["finished"]:
                    seen.append(summary["step"])
            time.sleep(0.1)
        assert len(set(seen)) >= 2, f"saw steps {seen} before the run ended"
        assert seen == sorted(seen)  # the step only advances
        stderr = process.communicate(timeout=600)[1]
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
    final = _summary(run_dir)
    assert final["finished"] and final["step"] == max_steps and final["last_checkpoint"] == f"step_{max_steps}"
    assert [layer["layer"] for layer in final["layers"]] == [2, 3]  # the tiny preset's TTT layers
    assert final["fp32"]["ok"] is True and final["alerts"] == []
    assert all(layer["step"] == max_steps for layer in final["layers"])
