"""The chain the earlier Moshi-based TTT system ran, on the tiny preset: audio pre-training (the audio objective on a
generated long-form corpus in the LibriLight layout) -> fine-tune on conversations from that checkpoint with its
weights only (fresh optimizer and step) -> chat; `omnittt resume` continues each phase. And what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import tiny_settings
from typer.testing import CliRunner

from omnittt.errors import UserError


@pytest.fixture(scope="module")
def audio_index(tmp_path_factory) -> Path:
    from omnittt.data.longform import make_longform_corpus
    from omnittt.data.sources.librilight import build_index

    root = tmp_path_factory.mktemp("longform_chain")
    make_longform_corpus(root / "corpus", speakers=2, books_per_speaker=1, recordings_per_book=2, seconds=8,
                         layout="cut", cut_sec=3.0)  # the VAD-cut layout (the slow learning test trains on raw)
    build_index(root / "corpus" / "small_cut", root / "index",
                settings={"mini_batch_size": 16, "speech_positions": "trim", "segment_sec": 3.0})
    return root / "index"


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


def _pretrain(audio_index: Path, run: Path, **changes):
    from omnittt.train.setup import start_run

    settings = tiny_settings(audio_index, run, **{"objective": "audio", "train": "ttt,audio_head", "batch_size": 1,
                                                  "tbptt_turns": 2, "max_steps": 3, "save_every": 2, **changes})
    return start_run(settings).trainer


def test_pretrain_finetune_chat_with_resume_in_both_phases(audio_index, synthetic_data, tmp_path):
    from omnittt.chat import open_chat
    from omnittt.runs import open_run
    from omnittt.train.setup import resume_run, start_run

    pretrain = tmp_path / "pretrain"
    trainer = _pretrain(audio_index, pretrain)
    trainer.fit()
    resumed = resume_run(str(pretrain), overrides={"max_steps": 5}).trainer
    assert resumed.step == 3 and len(resumed.optimizer.state) > 0  # continue: weights, optimizer and step
    resumed.fit()
    losses = _losses(pretrain)
    assert resumed.step == 5 and len(losses) == 5 and all(0 < loss < 10 for loss in losses)
    pretrained = open_run(str(pretrain), accept="any").model
    assert pretrained.audio_head is not None

    finetune = tmp_path / "finetune"
    settings = tiny_settings(synthetic_data, finetune, resume_from=str(pretrain), reset_optimizer=True,
                             reset_step=True, max_steps=2, save_every=1)
    tuned = start_run(settings).trainer
    assert tuned.step == 0 and len(tuned.optimizer.state) == 0  # fine-tune: the weights only
    start = dict(tuned.model.named_parameters())
    for name, param in pretrained.named_parameters():
        assert torch.equal(param, start[name]), name
    tuned.fit()
    again = resume_run(str(finetune), overrides={"max_steps": 3}).trainer
    assert again.step == 2 and len(again.optimizer.state) > 0
    again.fit()
    assert again.step == 3 and all(loss > 0 for loss in _losses(finetune))

    session, _ = open_chat(run=str(finetune), device="cpu", generation={"temperature": 0.0, "max_new_tokens": 3})
    reply = session.user_turn(text="hello there")
    assert session.turns == 1 and reply is not None


def test_the_audio_objective_refuses_dialogues_and_a_changed_shift(audio_index, synthetic_data, tmp_path):
    from omnittt.train.setup import start_run

    with pytest.raises(UserError, match="long recordings"):
        start_run(tiny_settings(synthetic_data, tmp_path / "a", objective="audio", train="ttt,audio_head"))
    _pretrain(audio_index, tmp_path / "p", max_steps=1).fit()
    with pytest.raises(UserError, match="positions ahead"):
        start_run(tiny_settings(audio_index, tmp_path / "q", objective="audio", train="ttt,audio_head",
                                resume_from=str(tmp_path / "p"), reset_optimizer=True, reset_step=True, apc_shift=5))
    with pytest.raises(UserError, match="already holds a run"):  # chaining into the pre-training run is refused
        start_run(tiny_settings(synthetic_data, tmp_path / "p", stage="16k"))


def test_init_from_is_the_weights_only_fine_tune(audio_index, tmp_path):
    from omnittt.cli.app import app

    _pretrain(audio_index, tmp_path / "p", max_steps=1).fit()
    runner = CliRunner()
    both = runner.invoke(app, ["train", "--preset", "tiny", "--init-from", str(tmp_path / "p"), "--resume-from",
                               str(tmp_path / "p"), "--print-config"])
    assert both.exit_code == 2 and "--init-from" in both.output
    shown = runner.invoke(app, ["train", "--preset", "tiny", "--init-from", str(tmp_path / "p"), "--print-config"])
    assert shown.exit_code == 0, shown.output
    assert "reset_optimizer: true" in shown.output and "reset_step: true" in shown.output
    assert f"resume_from: {tmp_path / 'p'}" in shown.output
