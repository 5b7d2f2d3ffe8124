"""Every file in configs/ resolves to TrainSettings, and the tiny one trains a step on the tiny preset with its own
non-model settings (data and run directory pointed at test folders, mini-batch matched to the test data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import MINI_BATCH

from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.settings import TrainSettings
from omnittt.train.setup import start_run

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    settings = TrainSettings.load_yaml(path)
    settings.require_model()


def test_tiny_config_trains_a_step(synthetic_data, tmp_path):
    settings = TrainSettings.load_yaml(CONFIGS[[p.name for p in CONFIGS].index("tiny.yaml")])
    assert settings.ttt_mini_batch_size == MINI_BATCH
    settings = settings.with_overrides({"data": str(synthetic_data), "run": str(tmp_path / "run"), "stage": "none",
                                        "max_steps": 1, "progress": False})
    start_run(settings).trainer.fit()
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") is None]
    assert steps == [1]
