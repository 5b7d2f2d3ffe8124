"""`omnittt train` / `omnittt resume` from the command line: one-line errors, the dataset/model refusal, what a
run directory holds after a short run, extending a finished run, and transfer with --resume-from."""

from __future__ import annotations

import json

import torch
import yaml
from train_fixtures import MINI_BATCH, tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.checkpoint import OPTIMIZER_FILE, load_torch_state, load_weights
from omnittt.train.setup import start_run

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def _invoke(*args):
    return runner.invoke(app, list(args), env=ENV)


def test_missing_model_is_one_line_naming_both_flags(tmp_path):
    result = _invoke("train", "--data", str(tmp_path))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--preset" in lines[0] and "--model" in lines[0]


def test_reset_flags_need_resume_from(tmp_path):
    result = _invoke("train", "--preset", "tiny", "--reset-optimizer")
    assert result.exit_code == 2 and "--resume-from" in result.output


def test_dataset_made_for_another_mini_batch_size_is_refused(synthetic_data, tmp_path):
    result = _invoke("train", "--preset", "tiny", "--data", str(synthetic_data), "--run", str(tmp_path / "run"),
                     "--stage", "none", "--max-steps", "1")  # the tiny preset's b is 64, the data's 16
    assert result.exit_code == 2
    assert f"mini-batch size {MINI_BATCH}" in result.output and "--ttt-mini-batch-size" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_short_run_writes_a_self_contained_run_directory_and_resume_extends_it(synthetic_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(synthetic_data), "--run", str(run), "--stage", "none",
            "--ttt-mini-batch-size", str(MINI_BATCH), "--max-steps", "2", "--save-every", "1", "--num-threads", "1"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "TTT layers [2, 3]" in result.output and "training finished" in result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["settings"]["ttt_mini_batch_size"] == MINI_BATCH
    assert config["dataset"]["mini_batch_size"] == MINI_BATCH and config["dataset"]["tokenizer_fingerprint"]
    summary = json.loads((run / "model_summary.json").read_text())
    assert summary["num_ttt_layers"] == 2 and summary["ttt_layers"] == [2, 3]
    assert {g["name"] for g in summary["parameter_groups"]} >= {"ttt_init", "ttt", "projector"}
    latest = (run / "checkpoints" / "latest").read_text().strip()
    checkpoint = run / "checkpoints" / latest
    names = {p.name for p in checkpoint.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json",
            "optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json"} <= names
    for pt in checkpoint.glob("*.pt"):
        torch.load(pt, weights_only=True)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2

    again = _invoke(*args)  # the same --run again: refused with the way out
    assert again.exit_code == 2 and "omnittt resume" in again.output

    extended = _invoke("resume", str(run), "--max-steps", "3")
    assert extended.exit_code == 0, extended.output
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert steps == [1, 2, 3]


def test_resume_from_transfers_weights_with_a_fresh_optimizer_and_step(synthetic_data, tmp_path):
    source = start_run(tiny_settings(synthetic_data, tmp_path / "first", max_steps=2, save_every=2)).trainer
    source.fit()
    checkpoint = source.last_checkpoint

    fresh = start_run(tiny_settings(synthetic_data, tmp_path / "second", max_steps=3, seed=5,
                                    resume_from=str(tmp_path / "first"), reset_optimizer=True,
                                    reset_step=True)).trainer
    model = fresh.accelerator.unwrap_model(fresh.model)
    saved = load_weights(checkpoint)
    own = model.state_dict()
    assert all(torch.equal(own[name], tensor) for name, tensor in saved.items())
    assert fresh.state.step == 0 and not fresh.optimizer.state_dict()["state"]

    kept = start_run(tiny_settings(synthetic_data, tmp_path / "third", max_steps=3,
                                   resume_from=str(checkpoint))).trainer
    assert kept.state.step == 2
    assert len(kept.optimizer.state_dict()["state"]) == len(load_torch_state(checkpoint, OPTIMIZER_FILE)["state"])
