"""`omnittt eval --held-out`: a run records what each stage trains on and holds out; eval then scores only the
conversations the run never trained on (on its own dataset: the held-out ones; on another dataset: all), and the
recall probe never counts a dialogue seen in training. Distance bins of the probe follow the bin edges."""

from __future__ import annotations

import json
import shutil

import pytest
from train_fixtures import MINI_BATCH, tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.data.preprocess import PreprocessOptions, preprocess
from omnittt.data.recall_corpus import RecallCorpusSpec, make_recall_corpus
from omnittt.errors import UserError
from omnittt.evaluation.evaluate import EvalOptions, evaluate
from omnittt.evaluation.recall import DISTANCE_EDGES, _distance_label
from omnittt.evaluation.statistics import StatOptions
from omnittt.train.setup import start_run


def _recall_data(root, seed):
    make_recall_corpus(root / "corpus", RecallCorpusSpec(dialogues=8, filler=1, seed=seed))
    preprocess(PreprocessOptions(source="conversations", input_dir=str(root / "corpus"), output=str(root / "data"),
                                 mini_batch_size=MINI_BATCH, workers=1))
    return root / "data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    data, other = _recall_data(root / "a", seed=0), _recall_data(root / "b", seed=1)
    settings = tiny_settings(data, root / "run", max_steps=1, val_conversations=3, train="ttt,projector,llm")
    start_run(settings).trainer.fit()
    return root / "run", data, other


def _eval(run, data, **changes):
    settings = {"held_out": True, **changes}
    options = EvalOptions(run=str(run), data=str(data), stage="none",
                          stats=StatOptions(bootstrap=10, min_tokens=1, min_dialogues=1), **settings)
    return evaluate(options)


def test_the_run_records_its_split(trained):
    run, data, _ = trained
    (split,) = json.loads((run / "splits.json").read_text())
    ids = sorted(json.loads(line)["conversation_id"] for line in (data / "manifest.jsonl").read_text().splitlines())
    assert split["stage"] == "none" and len(split["validation"]) == 3
    assert sorted(split["train"] + split["validation"]) == ids and not set(split["train"]) & set(split["validation"])


def test_held_out_scores_only_what_the_run_never_trained_on(trained):
    run, data, other = trained
    (split,) = json.loads((run / "splits.json").read_text())
    report = _eval(run, data)
    assert report["held_out"] and report["conversations"] == 3
    assert report["recall"]["dialogues"] == 3  # one question per held-out dialogue, none of the trained ones
    everything = _eval(run, data, held_out=False)
    assert everything["conversations"] == 8 and everything["recall"]["dialogues"] == 8
    # another dataset with the same conversation ids: nothing of it was trained on
    assert _eval(run, other)["conversations"] == 8
    assert set(split["train"]) <= {json.loads(line)["conversation_id"]
                                   for line in (other / "manifest.jsonl").read_text().splitlines()}


def test_held_out_refusals(trained, tmp_path):
    run, data, _ = trained
    with pytest.raises(UserError, match="needs a run directory"):
        evaluate(EvalOptions(preset="tiny", data=str(data), stage="none", held_out=True))
    (split,) = json.loads((run / "splits.json").read_text())
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "splits.json").write_text(json.dumps([{**split, "train": split["train"] + split["validation"]}]))
    with pytest.raises(UserError, match="every conversation here was trained on"):
        _eval(copy, data)
    (copy / "splits.json").unlink()
    result = CliRunner().invoke(app, ["eval", "--run", str(copy), "--data", str(data), "--stage", "none",
                                      "--held-out"])
    assert result.exit_code == 2 and "does not record what it trained on" in result.output


@pytest.mark.parametrize("distance", [0, 1, 255, 256, 1023, 1024, 16383, 16384, 70000])
def test_distance_bins_follow_the_edges(distance):
    label = _distance_label(distance)
    if distance >= DISTANCE_EDGES[-1]:
        assert label == f"{DISTANCE_EDGES[-1]}+"
    else:
        low, high = (int(x) for x in label.split("-"))
        assert low <= distance < high and low in DISTANCE_EDGES and high in DISTANCE_EDGES
        assert DISTANCE_EDGES.index(high) == DISTANCE_EDGES.index(low) + 1
