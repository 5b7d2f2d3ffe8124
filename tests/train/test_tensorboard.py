"""`--log-with tensorboard`: the step scalars beside metrics.jsonl, and a one-line error without the package."""

from __future__ import annotations

import sys

import pytest
from train_fixtures import tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.errors import UserError
from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.scalars import TENSORBOARD_DIR, TensorBoardScalars


def test_tensorboard_scalars_match_the_metrics_file(synthetic_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from omnittt.train.setup import start_run

    run = tmp_path / "run"
    start_run(tiny_settings(synthetic_data, run, max_steps=3, save_every=3, log_with="tensorboard")).trainer.fit()
    events = EventAccumulator(str(run / TENSORBOARD_DIR))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    metrics = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert [step for step, _ in logged] == [step for step, _ in metrics] == [1, 2, 3]
    assert all(abs(a - b) <= 1e-6 * abs(b) for (_, a), (_, b) in zip(logged, metrics, strict=True))


def test_missing_tensorboard_is_a_one_line_error_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it raises
    with pytest.raises(UserError, match="needs the tensorboard package") as info:
        TensorBoardScalars(tmp_path / TENSORBOARD_DIR)
    assert "pip install" in info.value.fix


def test_unknown_tracker_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--log-with", "wandb", "--print-config"])
    assert result.exit_code == 2 and "--log-with tensorboard" in result.output
