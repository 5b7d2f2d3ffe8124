"""Curriculum stages end to end (slow tier): `--stage 16k` in the same run directory continues from the finished 8k
stage's final checkpoint with the 16k sessions and learning rate; a later stage with no previous checkpoint, and an
empty stage, exit 2 with the fix."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_fixtures import MINI_BATCH, make_dataset, tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.data.curriculum import get_stage
from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.checkpoint import load_weights, read_trainer_state
from omnittt.train.setup import resume_run, start_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("stage_data"), dialogues=100)  # one group of > 16,384 positions


def test_16k_continues_from_the_8k_final_checkpoint(long_data, tmp_path):
    run = tmp_path / "run"
    common = dict(stage="8k", max_steps=2, save_every=100, tbptt_turns=8, batch_size=1, lr=None)
    first = start_run(tiny_settings(long_data, run, **common)).trainer
    first.fit()
    final_8k = first.last_checkpoint
    assert read_trainer_state(final_8k)["finished"] and read_trainer_state(final_8k)["stage"] == "8k"

    second = start_run(tiny_settings(long_data, run, **{**common, "stage": "16k"}))
    trainer = second.trainer
    model = trainer.accelerator.unwrap_model(trainer.model)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in load_weights(final_8k).items())  # the 8k stage's weights
    assert trainer.state.step == 2 and second.config["stage"]["name"] == "16k"
    assert second.config["continued_from"] == str(final_8k)
    assert (run / "config.8k.yaml").is_file() and yaml.safe_load((run / "config.yaml").read_text())["stage"][
        "name"] == "16k"
    assert all(conv.num_positions > get_stage("16k").min_positions for conv in trainer.loader.dataset.conversations)
    trainer.fit()
    lines = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert [(r["step"], r["stage"]) for r in lines] == [(1, "8k"), (2, "8k"), (3, "16k"), (4, "16k")]
    peak_16k = get_stage("16k").learning_rate
    assert all(r["lr"] <= peak_16k * (1 + 1e-9) for r in lines[2:])
    assert lines[0]["lr"] > peak_16k  # the 8k stage ran with its own (larger) rate
    assert read_trainer_state(trainer.last_checkpoint)["stage"] == "16k"
    # resuming the 16k stage counts its steps from where the stage began (--max-steps 3 = one more step)
    resume_run(str(run), {"max_steps": 3}).trainer.fit()
    lines = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert [(r["step"], r["stage"]) for r in lines][-2:] == [(4, "16k"), (5, "16k")]


def test_later_stage_without_the_previous_one_and_empty_stage_exit_2(long_data, tmp_path):
    runner = CliRunner()
    base = ["train", "--preset", "tiny", "--data", str(long_data), "--ttt-mini-batch-size", str(MINI_BATCH),
            "--max-steps", "1"]
    skipped = runner.invoke(app, [*base, "--run", str(tmp_path / "a"), "--stage", "16k"], env={"COLUMNS": "300"})
    assert skipped.exit_code == 2 and "--stage 8k" in skipped.output and "--allow-skip" in skipped.output
    empty = runner.invoke(app, [*base, "--run", str(tmp_path / "b"), "--stage", "64k", "--allow-skip"],
                          env={"COLUMNS": "300"})
    assert empty.exit_code == 2 and "64k is empty" in empty.output
