"""`omnittt eval` on an audio index: the audio objective with the TTT state carried and reset every segment on the
same positions, the paired gap, bins of position that cover every scored position, --held-out by recording, and
the refusals (a model without an audio head)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_fixtures import tiny_settings
from typer.testing import CliRunner

from omnittt.cli.app import app


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """A run pre-trained a few steps on the audio objective, and its training index."""
    from omnittt.data.longform import make_longform_corpus
    from omnittt.data.sources.librilight import build_index
    from omnittt.train.setup import start_run

    root = tmp_path_factory.mktemp("eval_audio")
    make_longform_corpus(root / "corpus", speakers=2, books_per_speaker=1, recordings_per_book=2, seconds=8,
                         layout="raw")
    build_index(root / "corpus" / "small", root / "index",
                settings={"mini_batch_size": 16, "speech_positions": "trim", "segment_sec": 3.0})
    settings = tiny_settings(root / "index", root / "run", objective="audio", train="ttt,audio_head", batch_size=1,
                             max_steps=4, val_conversations=1)
    start_run(settings).trainer.fit()
    return root / "run", root / "index"


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.output


def test_the_report_pairs_carried_and_reset_on_the_same_positions(pretrained, tmp_path):
    run, index = pretrained
    code, shown = _eval("--run", str(run), "--data", str(index), "--min-tokens", "10", "--position-bins", "3",
                        "--output", str(tmp_path / "eval.json"))
    assert code == 0, shown
    report = json.loads((tmp_path / "eval.json").read_text())
    carried, reset = report["runs"]
    assert (carried["ttt_reset"], reset["ttt_reset"]) == ("never", "every-turn")
    assert carried["positions"] == reset["positions"] == sum(row["tokens"] for row in carried["bins"])
    gap = report["gap"]
    assert gap["overall"]["loss"] == pytest.approx(reset["overall"]["loss"] - carried["overall"]["loss"], abs=1e-9)
    for row, a, b in zip(gap["bins"], carried["bins"], reset["bins"], strict=True):
        assert row["loss"] == pytest.approx(b["loss"] - a["loss"], abs=1e-9)
    assert [row["start"] for row in gap["bins"]] == sorted(row["start"] for row in gap["bins"])
    assert report["recordings"] == 4 and report["apc_shift"] == 3 and "reset - carried" in shown


def test_held_out_scores_only_the_recordings_the_run_never_trained_on(pretrained, tmp_path):
    run, index = pretrained
    code, shown = _eval("--run", str(run), "--data", str(index), "--held-out", "--min-tokens", "10",
                        "--ttt-reset", "never", "--output", str(tmp_path / "eval.json"))
    assert code == 0, shown
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["recordings"] == 1 and report["gap"] is None  # val_conversations=1; no reset run, no gap


def test_a_model_without_an_audio_head_is_refused(pretrained):
    _, index = pretrained
    code, shown = _eval("--preset", "tiny", "--data", str(index), "--stage", "none")
    assert code == 2 and "no audio head" in shown
