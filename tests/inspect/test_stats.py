"""The inspect library's files: JSONL writer/reader (round trip, torn and half-written lines, missing and truncated
files), the run-state aggregation the monitor shows, and (on a tiny converted model) the TTT-state logger."""

from __future__ import annotations

import math
import os

import pytest

from omnittt.inspect.jsonl import JsonlTail, JsonlWriter, dumps_line, read_jsonl
from omnittt.inspect.run_state import MonitorSettings, RunState, latest_run
from omnittt.inspect.schemas import METRICS_FILE, TTT_STATE_FILE
from omnittt.inspect.stats import MetricsLogger


def test_writer_and_reader_round_trip_the_same_fixture(tmp_path, lines):
    records = [lines.metrics(s) for s in range(1, 6)] + [lines.ttt(5, layer) for layer in (1, 3)]
    writer = JsonlWriter(tmp_path / "a.jsonl")
    writer.write_many(records[:3])
    for record in records[3:]:
        writer.write(record)
    assert read_jsonl(tmp_path / "a.jsonl") == records
    # the same fixture through the tailing reader, fed in two polls
    tail = JsonlTail(tmp_path / "b.jsonl")
    other = JsonlWriter(tmp_path / "b.jsonl")
    other.write_many(records[:4])
    first = tail.poll().records
    other.write_many(records[4:])
    assert first + tail.poll().records == records


def test_non_finite_values_are_written_as_null_strict_json(tmp_path, lines):
    record = lines.ttt(1, 0, w1=float("nan"), inner_loss_before=float("inf"))
    line = dumps_line(record)
    assert "NaN" not in line and "Infinity" not in line
    JsonlWriter(tmp_path / "x.jsonl").write(record)
    (back,) = read_jsonl(tmp_path / "x.jsonl")
    assert back["norm"]["W1"] is None and back["inner_loss_before"] is None
    assert back["norm"]["W2"] == record["norm"]["W2"]


def test_truncated_last_line_is_not_parsed_early(tmp_path, lines):
    path = tmp_path / TTT_STATE_FILE
    tail = JsonlTail(path)
    whole = lines.ttt(1, 2)
    text = dumps_line(whole)
    path.write_text(dumps_line(lines.ttt(0, 2)) + text[:25])
    assert [r["step"] for r in tail.poll()] == [0]
    assert read_jsonl(path) == [lines.ttt(0, 2)]  # one-shot reader leaves the half line out too
    with path.open("a") as handle:
        handle.write(text[25:-1])  # everything but the newline: still not complete
    assert tail.poll().records == []
    with path.open("a") as handle:
        handle.write("\n")
    assert tail.poll().records == [whole]
    assert tail.poll().records == []


def test_tail_reading_in_small_slices_yields_the_same_records(tmp_path, lines):
    path = tmp_path / TTT_STATE_FILE
    records = [lines.ttt(step, layer) for step in range(1, 30) for layer in (0, 5)]
    JsonlWriter(path).write_many(records)
    tail, got, polls = JsonlTail(path), [], 0
    while len(got) < len(records) and polls < 10_000:
        got += tail.poll(max_bytes=97).records
        polls += 1
    assert got == records and polls > len(records)  # each line took several slices


def test_tail_waits_for_a_missing_file_then_follows_it(tmp_path, lines):
    path = tmp_path / "later" / METRICS_FILE
    tail = JsonlTail(path)
    assert not tail.exists and tail.poll().records == []
    writer = JsonlWriter(path)  # creates the folder, like a trainer starting up
    writer.write(lines.metrics(1))
    assert [r["step"] for r in tail.poll()] == [1]
    writer.write(lines.metrics(2))
    assert [r["step"] for r in tail.poll()] == [2]


def test_tail_starts_over_when_the_file_is_truncated_or_replaced(tmp_path, lines):
    path = tmp_path / METRICS_FILE
    writer = JsonlWriter(path)
    writer.write_many([lines.metrics(s) for s in range(1, 4)])
    tail = JsonlTail(path)
    assert len(tail.poll().records) == 3
    path.write_text(dumps_line(lines.metrics(7)))  # truncated in place and rewritten shorter
    batch = tail.poll()
    assert batch.reset and [r["step"] for r in batch] == [7]
    # replaced by a new file of the same size (rotation): the inode changes
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(dumps_line(lines.metrics(8)))
    os.replace(replacement, path)
    batch = tail.poll()
    assert batch.reset and [r["step"] for r in batch] == [8]


def test_malformed_lines_are_skipped_and_counted(tmp_path, lines):
    path = tmp_path / METRICS_FILE
    path.write_text(dumps_line(lines.metrics(1)) + "{not json\n" + "[1, 2]\n\n" + dumps_line(lines.metrics(2)))
    tail = JsonlTail(path)
    assert [r["step"] for r in tail.poll()] == [1, 2]
    assert tail.bad_lines == 2


def test_writer_cuts_a_torn_last_line_before_appending(tmp_path, lines):
    path = tmp_path / METRICS_FILE
    path.write_text(dumps_line(lines.metrics(1)) + dumps_line(lines.metrics(2))[:17])  # killed mid-line
    JsonlWriter(path).write(lines.metrics(3))
    assert [r["step"] for r in read_jsonl(path)] == [1, 3]
    assert path.read_text().count("\n") == 2


def test_metrics_logger_drop_after_forgets_repeated_steps_and_the_finish_mark(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 6):
        logger.log(step, loss=1.0 / step, lr=1e-3, tokens_per_s=10.0, stage="8k")
    logger.finish(5)
    records = read_jsonl(tmp_path / METRICS_FILE)
    assert [r.get("event") for r in records][-1] == "finished"
    assert records[0]["schema"] == 1 and records[0]["stage"] == "8k" and math.isclose(records[1]["loss"], 0.5)
    assert logger.drop_after(3) == 3
    assert [r["step"] for r in read_jsonl(tmp_path / METRICS_FILE)] == [1, 2, 3]


def test_run_state_eta_stall_and_finish(run_writer, lines):
    clock = [0.0]
    state = RunState(run_writer.run_dir, MonitorSettings(stall_after=30), clock=lambda: clock[0])
    assert state.waiting_for() == [METRICS_FILE, TTT_STATE_FILE]
    for step in range(1, 11):
        run_writer.metrics.write(lines.metrics(step, time=2.0 * step))  # 2 s per step, 100 steps planned
    state.poll()
    assert state.step == 10
    assert math.isclose(state.eta_seconds(), 90 * 2.0)
    clock[0] = 25.0
    assert not [a for a in state.alerts() if a.kind == "stalled"]
    clock[0] = 60.0
    (stalled,) = [a for a in state.alerts() if a.kind == "stalled"]
    assert "40s" in stalled.message
    MetricsLogger(run_writer.run_dir).finish(10)
    state.poll()
    assert state.finished and state.eta_seconds() == 0.0
    assert not [a for a in state.alerts() if a.kind == "stalled"]


def test_run_state_alerts_for_nan_dtype_and_norm_growth(run_writer, lines):
    state = RunState(run_writer.run_dir, MonitorSettings(norm_growth=3.0, growth_window=5))
    for step in range(1, 6):
        run_writer.ttt.write(lines.ttt(step, 4, w2=2.0))
    state.poll()
    assert state.alerts() == [] and state.fp32_ok is True
    run_writer.ttt.write(lines.ttt(6, 4, w2=5.0))  # 2.5x the median: under the threshold
    state.poll()
    assert state.alerts() == []
    for step in (7, 8, 9):  # a reset state logged in between: neither part of a baseline nor checked itself
        run_writer.ttt.write(lines.ttt(step, 4, w2=0.01, source="init"))
    run_writer.ttt.write(lines.ttt(10, 4, w2=2.0))  # back to normal: 200x the init entries, but no alert
    state.poll()
    assert state.alerts() == []
    run_writer.ttt.write(lines.ttt(10, 4, w2=9.0))
    state.poll()
    (growth,) = state.alerts()
    assert growth.kind == "growth" and growth.layer == 4 and "W2" in growth.message
    run_writer.ttt.write(lines.ttt(11, 6, dtype="float64"))  # a precision run: full precision, no drift
    state.poll()
    assert [a.kind for a in state.alerts()] == ["growth"] and state.fp32_ok is True
    run_writer.ttt.write(lines.ttt(11, 4, dtype="bfloat16"))
    run_writer.ttt.write(lines.ttt(11, 5, nan=3, nonfinite=["b1"], norm={"W1": 1.0, "b1": None}))
    state.poll()
    kinds = {(a.kind, a.layer) for a in state.alerts()}
    assert {("dtype", 4), ("nonfinite", 5)} <= kinds
    assert state.fp32_ok is False and state.fp32_bad == [{"layer": 4, "state": "W1", "dtype": "bfloat16"}]
    nonfinite = next(a for a in state.alerts() if a.kind == "nonfinite")
    assert "b1" in nonfinite.message and "3 NaN" in nonfinite.message


def test_run_state_skips_lines_of_another_schema(run_writer, lines):
    run_writer.ttt.write(lines.ttt(1, 0, schema=2))
    state = RunState(run_writer.run_dir)
    state.poll()
    assert state.layers == {} and [a.kind for a in state.alerts()] == ["skipped_lines"]


def test_latest_run_is_the_most_recently_written(tmp_path, lines):
    for index, name in enumerate(["old", "new", "middle"]):
        writer = JsonlWriter(tmp_path / "runs" / name / METRICS_FILE)
        writer.write(lines.metrics(1))
        stamp = 1_000_000 + {"old": 0, "middle": 50, "new": 100}[name]
        os.utime(writer.path, (stamp, stamp))
        os.utime(writer.path.parent, (stamp - 10 + index, stamp - 10 + index))
    assert latest_run(tmp_path / "runs").name == "new"
    assert latest_run(tmp_path / "nowhere") is None


# --- the TTT-state logger on a tiny converted model (H2's TTT layers and TTTCache) --------------------------------


def init_norms(model, layer_idx):
    module = model.model.layers[layer_idx].self_attn
    return {name: float(getattr(module, name).detach().norm()) for name in ("W1", "b1", "W2", "b2")}


def state_norms(cache, layer_idx):
    """Mean over rows of the per-row Frobenius norm of the cache's runtime state."""
    return {name: float(t.detach().flatten(1).norm(dim=1).mean()) for name, t in cache.layers[layer_idx].state.items()}


def test_logged_runtime_norms_leave_the_learned_init_after_turn0_and_return_after_reset(
        tmp_path, tiny_ttt_model, ttt_turn):
    from omnittt.inspect.stats import TTTStateLogger

    model = tiny_ttt_model
    logger = TTTStateLogger(tmp_path, interval=1, model=model)
    cache = model.new_cache()
    before = logger.log(0, cache)  # fresh cache: the state is the learned init
    ttt_turn(model, cache, tokens=32)  # turn 0: two whole mini-batches of 16
    after_turn0 = logger.log(1, cache)
    runtime = {layer: state_norms(cache, layer) for layer in model.config.ttt_layers}
    cache.reset()
    after_reset = logger.log(2, cache)

    records = read_jsonl(tmp_path / TTT_STATE_FILE)
    assert records == before + after_turn0 + after_reset  # what log() returns is what the file holds
    assert [r["layer"] for r in records] == list(model.config.ttt_layers) * 3
    for layer in model.config.ttt_layers:
        init = init_norms(model, layer)
        fresh, turn0, reset = [r for r in records if r["layer"] == layer]
        assert fresh["source"] == reset["source"] == "init"
        assert turn0["source"] == "stats"
        # the runtime state, not `init`: it has moved away from it
        for name in ("W1", "W2", "b2"):
            assert abs(turn0["norm"][name] - init[name]) > 1e-4 * max(init[name], 1.0), name
        for name in ("W1", "b1", "W2", "b2"):
            # ... to the cache's runtime state (whole mini-batches: nothing pending) ...
            assert turn0["norm"][name] == pytest.approx(runtime[layer][name], rel=1e-5)
            # ... and a reset brings back the learned init
            assert fresh["norm"][name] == pytest.approx(init[name], rel=1e-6, abs=1e-7)
            assert reset["norm"][name] == pytest.approx(init[name], rel=1e-6, abs=1e-7)
        assert turn0["inner_loss_after"] < turn0["inner_loss_before"]  # the inner step reduced its own loss
        assert turn0["stream_position"] == 32 and turn0["rows"] == 2
        assert turn0["dtype"] == {name: "float32" for name in ("W1", "b1", "W2", "b2")}
        assert turn0["nan"] == turn0["inf"] == 0 and turn0["nonfinite"] == []


def test_a_row_reset_reports_the_learned_init_for_that_row_only(tiny_ttt_model, ttt_turn):
    from omnittt.inspect.stats import collect_ttt_records

    model = tiny_ttt_model
    cache = ttt_turn(model, tokens=32)
    layer = model.config.ttt_layers[0]
    row_norms = {name: t.detach().flatten(1).norm(dim=1) for name, t in cache.layers[layer].state.items()}
    cache.reset(0)  # row 0 starts a new conversation; row 1 carries on
    (record,) = [r for r in collect_ttt_records(cache, 5, model) if r["layer"] == layer]
    init = init_norms(model, layer)
    assert record["source"] == "state"  # the stats of the last call no longer describe row 0
    for name in ("W1", "W2"):
        assert record["norm"][name] == pytest.approx((init[name] + float(row_norms[name][1])) / 2, rel=1e-5)
    assert "delta" in record and record["delta"] == {}


def test_logging_without_collected_stats_still_reports_the_runtime_norms(tiny_ttt_model, ttt_turn):
    from omnittt.inspect.stats import collect_ttt_records

    cache = ttt_turn(tiny_ttt_model, tokens=48, collect=False)
    assert all(layer.stats is None for _, layer in cache.ttt_layers())
    for record in collect_ttt_records(cache, 3):  # no model given: no init norms
        assert record["source"] == "state" and "init_norm" not in record and "inner_loss_before" not in record
        assert record["norm"] == pytest.approx(state_norms(cache, record["layer"]), rel=1e-5)


def test_logger_interval_and_extra_fields(tmp_path, tiny_ttt_model, ttt_turn):
    from omnittt.inspect.stats import DEFAULT_STATS_INTERVAL, TTTStateLogger

    logger = TTTStateLogger(tmp_path)
    assert logger.interval == DEFAULT_STATS_INTERVAL
    assert [s for s in range(1, 31) if logger.wants(s)] == [s for s in range(1, 31) if s % DEFAULT_STATS_INTERVAL == 0]
    cache = ttt_turn(tiny_ttt_model)
    assert logger.log(DEFAULT_STATS_INTERVAL + 1, cache) == []
    written = logger.log(2 * DEFAULT_STATS_INTERVAL, cache, extra={"stage": "8k", "turn": 0})
    assert {(r["step"], r["stage"], r["turn"]) for r in written} == {(2 * DEFAULT_STATS_INTERVAL, "8k", 0)}
    with pytest.raises(ValueError, match="norm"):
        logger.log(3 * DEFAULT_STATS_INTERVAL, cache, extra={"norm": 1})
    assert read_jsonl(tmp_path / TTT_STATE_FILE) == written


def test_nan_state_reaches_the_file_and_the_monitor_names_its_layer(tmp_path, tiny_ttt_model, ttt_turn):
    from omnittt.inspect.stats import TTTStateLogger

    model = tiny_ttt_model
    cache = ttt_turn(model)
    first, second = model.config.ttt_layers
    poisoned = cache.layers[second].state["b2"].clone()
    poisoned[0, 1, 0, 2] = float("nan")
    cache.layers[second].state["b2"] = poisoned
    ttt_turn(model, cache, seed=3)  # the next exchange carries the poisoned state (row 0 only)
    TTTStateLogger(tmp_path, interval=1, model=model).log(7, cache)

    by_layer = {r["layer"]: r for r in read_jsonl(tmp_path / TTT_STATE_FILE)}
    assert by_layer[second]["nan"] > 0 and "b2" in by_layer[second]["nonfinite"]
    assert by_layer[second]["norm"]["b2"] is None  # the mean over rows is NaN: strict JSON null
    assert by_layer[second]["norm_max"]["b2"] is None
    assert by_layer[first]["nan"] == 0 and by_layer[first]["nonfinite"] == []
    state = RunState(tmp_path)
    state.poll()
    (alert,) = state.alerts()
    assert alert.kind == "nonfinite" and alert.layer == second and alert.first_step == 7
    assert alert.message.startswith(f"layer {second}: non-finite ") and "b2" in alert.message
