"""`omnittt quickstart`: the CI check of the whole pipeline (slow tier: a real `--fast` run in a fresh process), and
the cheap guarantees around it (default tier): an existing --dir is refused with the fix, a folder the quickstart
did not make is never removed."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnittt import quickstart
from omnittt.cli import app

ENV = {"COLUMNS": "200"}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def test_an_earlier_quickstart_is_refused_with_the_fix_then_replaced_with_overwrite(tmp_path):
    root = tmp_path / "qs"
    quickstart.prepare_directory(root, quickstart.PROFILES["fast"])
    (root / "corpus").mkdir()
    result = _invoke("quickstart", "--fast", "--dir", str(root))
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "earlier quickstart" in lines[0] and "--overwrite" in lines[0]
    assert (root / "corpus").is_dir()

    paths = quickstart.prepare_directory(root, quickstart.PROFILES["fast"], overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == [quickstart.MARKER]
    assert paths.run == root / "runs" / "tiny"


def test_a_folder_the_quickstart_did_not_make_is_never_removed(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = _invoke("quickstart", "--fast", "--dir", str(tmp_path), "--overwrite")
    assert result.exit_code == 2 and "not made by omnittt quickstart" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / quickstart.MARKER).exists()


def _figures(output: str, label: str) -> tuple[float, float]:
    """The before/after pair printed in the held-out table's row `label`."""
    row = next(ln for ln in output.splitlines() if label in ln)
    numbers = re.findall(r"[-+]?\d+\.\d{4}", row)
    return float(numbers[0]), float(numbers[1])


def _held_out_loss(model, processed: Path, ids: list[str], swap: bool) -> float:
    """The held-out loss recomputed here, outside the quickstart: the same conversations, fed as in training."""
    from omnittt.core.features import build_feature_extractor
    from omnittt.data.dataset import ConversationDataset, ConversationLoader
    from omnittt.train.loop import evaluate_loss

    dataset = ConversationDataset(processed)
    dataset.conversations = [c for c in dataset.conversations if c.conversation_id in ids]
    assert [c.conversation_id for c in dataset.conversations] == ids
    loader = ConversationLoader(dataset, batch_size=1, shuffle=False,
                                feature_extractor=build_feature_extractor(model.config.speech_config.num_mel_bins))
    return evaluate_loss(model, list(loader), swap_speech=swap)


@pytest.mark.slow
def test_fast_quickstart_runs_the_whole_pipeline_and_prints_the_runs_own_figures(tmp_path):
    root = tmp_path / "qs"
    env = {**os.environ, **ENV, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "omnittt", "quickstart", "--fast", "--dir", str(root)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout

    summary = json.loads((root / quickstart.SUMMARY).read_text())
    profile = quickstart.PROFILES["fast"]
    assert list(summary["steps"]) == ["corpus", "preprocess", "validate", "curriculum", "train", "monitor", "eval",
                                      "chat"]
    assert all(step["status"] == "done" for step in summary["steps"].values()), summary["steps"]
    assert "not available" not in out

    # every artefact where the quickstart says it went
    paths = quickstart.Paths(root)
    assert (paths.corpus / "synthetic.json").is_file()
    assert (paths.processed / "index.json").is_file()
    assert json.loads(paths.validate_report.read_text())["ok"] is True
    latest = (paths.run / "checkpoints" / "latest").read_text().strip()
    checkpoint = paths.run / "checkpoints" / latest
    assert (checkpoint / "model.safetensors").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == profile.max_steps
    report = json.loads(paths.eval_report.read_text())
    assert all(math.isfinite(run["overall"]["loss"]) for run in report["runs"])
    turns = [json.loads(line) for line in paths.chat_transcript.read_text().splitlines()]
    assert [t["event"] for t in turns] == ["turn", "state"] and turns[0]["positions"] > 0
    for name, path in summary["artefacts"].items():
        assert Path(path).exists() and str(path) in out.replace("\n", ""), name

    # the printed held-out figures are the run's: summary.json, metrics.jsonl, and a recomputation here
    held = summary["held_out"]
    ids = held["conversation_ids"]
    assert len(ids) == profile.val_conversations
    for key in ("before", "before_swapped", "after", "after_swapped"):
        assert math.isfinite(held[key]), key
    assert _figures(out, "each conversation's own") == (round(held["before"], 4), round(held["after"], 4))
    assert _figures(out, "swapped between conversations") == (round(held["before_swapped"], 4),
                                                              round(held["after_swapped"], 4))
    metrics = [json.loads(line) for line in (paths.run / "metrics.jsonl").read_text().splitlines()]
    logged = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
    assert logged and logged[-1] == pytest.approx(held["after"], abs=1e-9)
    trained_on = {cid for m in metrics for cid in m.get("conversation_ids") or []}
    assert trained_on and not trained_on & set(ids)  # held out means never trained on

    from omnittt.core.loading import load_model
    from omnittt.core.presets import build_model
    from omnittt.train.rng import seed_everything

    trained = load_model(checkpoint).model
    assert _held_out_loss(trained, paths.processed, ids, swap=False) == pytest.approx(held["after"], abs=1e-4)
    assert _held_out_loss(trained, paths.processed, ids, swap=True) == pytest.approx(held["after_swapped"], abs=1e-4)
    seed_everything(quickstart.SEED)  # the trainer's init: the same seed, the same preset and mini-batch
    initial = build_model("tiny", ttt_mini_batch_size=quickstart.MINI_BATCH)
    assert _held_out_loss(initial, paths.processed, ids, swap=False) == pytest.approx(held["before"], abs=1e-4)
    assert held["after"] < held["before"]  # it learned something it can use on conversations it never saw

    # the next commands it prints work on what it made
    monitor = _invoke("monitor", str(paths.run), "--once", "--json")
    assert monitor.exit_code == 0 and json.loads(monitor.output)["step"] == profile.max_steps
    resumed = _invoke("resume", str(paths.run), "--max-steps", str(profile.max_steps + 2))
    assert resumed.exit_code == 0, resumed.output
    step = profile.max_steps + 2
    assert json.loads((paths.run / "checkpoints" / f"step_{step}" / "trainer_state.json").read_text())["step"] == step

    again = subprocess.run([sys.executable, "-m", "omnittt", "quickstart", "--fast", "--dir", str(root)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr + again.stdout
