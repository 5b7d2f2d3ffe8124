"""A fair attention-only baseline: with the default `--train` it trains the attention of the layers where the TTT
model has its TTT layers (and nothing else of the LLM); a selection that trains nothing, or nothing the loss
depends on, is a one-line error before the first step."""

from __future__ import annotations

import re

import pytest
import torch
from train_fixtures import MINI_BATCH
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.core.presets import build_model, parameter_group
from omnittt.data.preprocess import PreprocessOptions, preprocess
from omnittt.data.recall_corpus import RecallCorpusSpec, make_recall_corpus
from omnittt.train.trainable import set_trainable


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    make_recall_corpus(root / "corpus", RecallCorpusSpec(dialogues=4, filler=1))
    preprocess(PreprocessOptions(source="conversations", input_dir=str(root / "corpus"), output=str(root / "data"),
                                 mini_batch_size=MINI_BATCH, workers=1))
    return root / "data"


def test_the_baseline_trains_the_attention_where_the_ttt_model_has_ttt_layers():
    ttt_model, baseline = build_model("tiny"), build_model("tiny", ttt_layers=[])
    set_trainable(ttt_model, "ttt,projector")
    set_trainable(baseline, "ttt,projector")
    ttt_layers = set(ttt_model.config.text_config.ttt_layers)
    trained = {name for name, p in baseline.named_parameters() if p.requires_grad}
    layer_of = {name: int(m.group(1)) for name in trained if (m := re.search(r"layers\.(\d+)\.", name))}
    assert set(layer_of.values()) == ttt_layers and all(".self_attn." in name for name in layer_of)
    attention = {n for n, _ in baseline.named_parameters()
                 if re.search(r"layers\.(\d+)\.self_attn\.", n) and int(re.search(r"layers\.(\d+)", n).group(1))
                 in ttt_layers}
    assert attention <= trained
    assert not any(parameter_group(baseline, n) == "llm" for n in trained)


def _train(args, data, run):
    return CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(data), "--stage", "none", "--run",
                                    str(run), "--max-steps", "1", "--batch-size", "2", "--ttt-mini-batch-size",
                                    str(MINI_BATCH), *args], env={"COLUMNS": "200"})


def test_nothing_to_train_is_one_line_before_the_first_step(text_data, tmp_path):
    result = _train(["--ttt-layers", "", "--train", "ttt_init"], text_data, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "nothing to train" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_group_the_loss_does_not_reach_is_one_line(text_data, tmp_path):
    result = _train(["--train", "projector"], text_data, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "get no gradient from this data" in result.output and "Traceback" not in result.output


def test_the_baseline_trains_on_text_turns(text_data, tmp_path):
    torch.manual_seed(0)
    result = _train(["--ttt-layers", ""], text_data, tmp_path / "run")
    assert result.exit_code == 0, result.output
