"""`omnittt eval`: bucket counts against an independent count from the stored samples, the same loss as the
trainer's validation loop, ln(vocab) for random weights, the guards (too few tokens, NaN), the reset ablation
on the same tokens, the recall probe, and (slow) a trained model vs an attention-only baseline from the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from train_fixtures import MINI_BATCH, tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.speech import segment_positions
from omnittt.data.curriculum import Stage
from omnittt.errors import UserError
from omnittt.evaluation.report import bucket_edges, bucket_label, bucket_table, build_report, check_report_finite
from omnittt.evaluation.scoring import NonFiniteEvalError, runs_for, score_runs
from omnittt.evaluation.statistics import StatOptions, TokenScores, summarize

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def _default_vocab() -> int:
    from omnittt.core.tokenizer import build_default_tokenizer

    return len(build_default_tokenizer())


VOCAB = _default_vocab()  # the default tokenizer's vocabulary: the tiny preset's and the test data's
# sessions of 512-1024 positions: each group of the 9-dialogue fixture (3 dialogues) packs into one
SESSION_STAGE = Stage("test", 512, 1024, 1e-4)


def _loader(data, stage=None, batch_size=2):
    from omnittt.core.features import build_feature_extractor
    from omnittt.data.dataset import ConversationDataset, ConversationLoader

    dataset = ConversationDataset(data, stage=stage)
    return ConversationLoader(dataset, batch_size=batch_size, shuffle=False,
                              feature_extractor=build_feature_extractor(80))


def _tiny(seed=0):
    from omnittt.core.presets import build_model

    torch.manual_seed(seed)
    return build_model("tiny", ttt_mini_batch_size=MINI_BATCH)


def _independent_positions(dataset):
    """Positions of every assistant target, counted from the stored samples (not through the model's splice):
    per conversation, real tokens before the target since the conversation start, a speech placeholder counting
    its segment's positions."""
    mode = dataset.speech_positions
    found = []
    for conv in dataset.conversations:
        position = 0
        for ref in conv.exchanges:
            sample = dataset.exchange(ref)
            segments = iter(sample["speech_lengths"].tolist())
            for i, (token, label, real) in enumerate(zip(sample["input_ids"].tolist(), sample["labels"].tolist(),
                                                         sample["attention_mask"].tolist(), strict=True)):
                if not real:
                    continue
                if i > 0 and label != IGNORE_INDEX:
                    found.append(position)
                position += segment_positions(next(segments), mode) if token == SPEECH_TOKEN_INDEX else 1
    return np.array(sorted(found))


@pytest.fixture(scope="module")
def session_scores(synthetic_data):
    """A random-weights tiny model scored carried and reset on sessions of the fixture."""
    loader = _loader(synthetic_data, SESSION_STAGE)
    model = _tiny()
    runs = runs_for(model, "random", ("never", "every-turn"), None)
    return loader, model, runs, score_runs(runs, loader)


def test_positions_and_bucket_counts_match_an_independent_count(session_scores):
    loader, _, runs, scores = session_scores
    assert all(conv.is_session for conv in loader.dataset.conversations)
    expected = _independent_positions(loader.dataset)
    assert np.array_equal(np.sort(scores[0].position), expected)
    report = build_report(runs, scores, VOCAB, StatOptions(min_tokens=1, bootstrap=50))
    assert report["buckets"] == ["0-1k"] and bucket_edges(int(expected.max())) == [(0, 1024)]
    assert [run["overall"]["tokens"] for run in report["runs"]] == [len(expected)] * 2
    # finer edges than the report's, so that every bucket boundary is crossed by real positions
    spans = [(0, 128), (128, 256), (256, 512), (512, None)]
    for start, end in spans:
        assert ((expected >= start) & (expected < (end or 1 << 62))).any()
    rows = bucket_table(scores[0], StatOptions(min_tokens=1, bootstrap=0), spans)
    assert [row["tokens"] for row in rows] == [int(((expected >= a) & (expected < (b or 1 << 62))).sum())
                                               for a, b in spans]
    check_report_finite(report)


def test_bucket_labels_and_edges():
    assert [bucket_label(a, b) for a, b in bucket_edges(70_000)] == [
        "0-1k", "1k-2k", "2k-4k", "4k-8k", "8k-16k", "16k-32k", "32k-64k", "64k+"]
    assert bucket_edges(1023) == [(0, 1024)] and bucket_edges(1024) == [(0, 1024), (1024, 2048)]


def test_reset_ablation_is_finite_on_the_same_tokens_and_differs(session_scores):
    _, _, runs, (carried, reset) = session_scores
    assert [run.ttt_reset for run in runs] == ["never", "every-turn"]
    assert carried.same_tokens(reset) and carried.tokens > 0
    assert np.isfinite(carried.loss).all() and np.isfinite(reset.loss).all()
    # exchange 0 of each conversation is fed from the learned init in both: identical losses there
    first = carried.exchange == 0
    np.testing.assert_allclose(carried.loss[first], reset.loss[first], rtol=1e-5, atol=1e-5)
    assert not np.allclose(carried.loss[~first], reset.loss[~first])  # later exchanges see the carried state


def test_loss_equals_the_trainers_validation_loss(session_scores):
    from omnittt.train.loop import evaluate_loss

    loader, model, _, scores = session_scores
    loader.next_batch = 0
    expected = evaluate_loss(model, list(loader))
    assert scores[0].loss.mean() == pytest.approx(expected, rel=1e-5)


def test_random_weights_report_the_uniform_guess_level(synthetic_data, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--preset", "tiny", "--data", str(synthetic_data), "--stage", "none",
                                 "--ttt-reset", "never", "--output", str(out), "--bootstrap", "100"], env=ENV)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["uniform_loss"] == pytest.approx(math.log(VOCAB)) and report["vocab_size"] == VOCAB
    run = report["runs"][0]
    assert abs(run["overall"]["loss"] - math.log(VOCAB)) < 0.05 * math.log(VOCAB)
    assert run["verdict"].startswith("at the uniform-guess level")
    assert "uniform-guess level" in result.output and f"ln {VOCAB} = {math.log(VOCAB):.3f}" in result.output


NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
                "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"}


def test_recall_probe_finds_the_codes(session_scores, synthetic_data):
    from omnittt.core.tokenizer import load_tokenizer
    from omnittt.evaluation.recall import find_recall_items, recall_probe

    loader, _, runs, scores = session_scores
    found = find_recall_items(loader.dataset, load_tokenizer(loader.dataset.store.tokenizer_dir))
    items = [item for item in found if item.task == "recall"]
    recall = {m["conversation_id"] for m in loader.dataset.store.manifest if m["domain"] == "recall"}
    packed = [cid for conv in loader.dataset.conversations for cid in conv.source_conversation_ids if cid in recall]
    assert sorted(item.dialogue_id for item in items) == sorted(packed) and len(items) >= 2
    digits = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    for item in items:
        words = item.answer_text.split()
        assert len(words) == 3 and set(words) <= digits
        assert item.answer_exchange - item.fact_exchange == 4  # recall_exchanges=5 in the fixture
    # the numbers dialogues: one item per exchange, answered from that exchange's own speech
    numbers = [item for item in found if item.task == "numbers"]
    assert numbers and all(item.answer_exchange == item.fact_exchange for item in numbers)
    assert all(item.answer_text and item.answer_text.split()[0] in NUMBER_WORDS for item in numbers)
    options = StatOptions(bootstrap=50, min_dialogues=len(items))
    probe = recall_probe(items, [r.name for r in runs], scores, options, [(0, 1)])
    assert probe["dialogues"] == len(items) and probe["turn_distance"] == {"min": 4, "max": 4}
    row = probe["runs"][0]["all"][0]
    assert row["dialogues"] == len(items) and row["tokens"] == probe["answer_tokens"] >= 3 * len(items)
    assert math.isfinite(row["loss"]) and 0.0 <= row["exact_match"] <= 1.0
    fewer = recall_probe(items, [r.name for r in runs], scores, StatOptions(min_dialogues=len(items) + 1))
    assert fewer["runs"][0]["all"][0]["loss"] is None and "too few dialogues" in fewer["runs"][0]["all"][0]["note"]
    gap = probe["gaps"][0]["all"][0]
    reset_loss, carried_loss = probe["runs"][1]["all"][0]["loss"], row["loss"]
    assert gap["loss"] == pytest.approx(reset_loss - carried_loss)


def test_too_few_tokens_get_no_figure_and_one_conversation_no_interval():
    scores = TokenScores(["a", "b"], conv=np.array([0, 0, 0, 1]), exchange=np.zeros(4, np.int32),
                         ordinal=np.arange(4), position=np.array([0, 1, 2, 3]), loss=np.array([1.0, 2.0, 3.0, 4.0]),
                         correct=np.array([True, False, False, True]))
    few = summarize(np.ones(4, bool), scores, StatOptions(min_tokens=5))
    assert few["loss"] is None and few["ci"] is None and "too few tokens (4 < 5)" in few["note"]
    one = summarize(scores.conv == 0, scores, StatOptions(min_tokens=1))
    assert one["loss"] == pytest.approx(2.0) and one["ci"] is None and "no interval" in one["note"]
    both = summarize(np.ones(4, bool), scores, StatOptions(min_tokens=1, bootstrap=200))
    assert both["loss"] == pytest.approx(2.5) and both["accuracy"] == pytest.approx(0.5)
    low, high = both["ci"]
    assert 2.0 <= low <= 2.5 <= high <= 4.0  # resampling the two conversations: means between 2 and 4


def test_nonfinite_figures_are_errors(synthetic_data):
    with pytest.raises(NonFiniteEvalError, match="report.runs"):
        check_report_finite({"runs": [{"loss": float("nan")}]})
    model = _tiny()
    with torch.no_grad():
        model.language_model.lm_head.weight[0, 0] = float("nan")
    loader = _loader(synthetic_data, None)
    loader.dataset.conversations = loader.dataset.conversations[:1]
    with pytest.raises(NonFiniteEvalError, match="non-finite loss on conversation"):
        score_runs(runs_for(model, "nan", ("never",), None), loader)


def test_cli_refusals_are_one_line(tmp_path):
    result = runner.invoke(app, ["eval"], env=ENV)
    assert result.exit_code == 2 and "--run" in result.output and "--model" in result.output
    result = runner.invoke(app, ["eval", "--preset", "tiny", "--ttt-reset", "sometimes"], env=ENV)
    assert result.exit_code == 2 and "never, every-turn or both" in result.output
    result = runner.invoke(app, ["eval", "--run", str(tmp_path / "nope")], env=ENV)
    assert result.exit_code == 2 and "no such run" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1


# -- slow: trained models ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_runs(synthetic_data, tmp_path_factory):
    """The tiny model and its attention-only baseline, trained by the same settings for the same steps."""
    from omnittt.train.setup import start_run

    root = tmp_path_factory.mktemp("eval_runs")
    runs = {}
    for name, layers in (("ttt", None), ("attn", [])):
        settings = tiny_settings(synthetic_data, root / name, max_steps=30, train="all", ttt_layers=layers)
        start_run(settings).trainer.fit()
        runs[name] = root / name
    return runs


@pytest.mark.slow
def test_trained_model_vs_baseline_report(trained_runs, synthetic_data, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--run", str(trained_runs["ttt"]), "--data", str(synthetic_data),
                                 "--stage", "none", "--baseline", str(trained_runs["attn"]), "--output", str(out),
                                 "--bootstrap", "200", "--min-tokens", "20"], env=ENV)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    check_report_finite(report)
    assert [r["name"] for r in report["runs"]] == ["model", "model, TTT reset every turn", "model, speech swapped",
                                                   "baseline"]
    assert report["runs"][3]["ttt_layers"] == [] and report["runs"][0]["ttt_layers"] == [2, 3]
    assert report["step"] == report["baseline_step"] == 30
    tokens = {r["overall"]["tokens"] for r in report["runs"]}
    assert len(tokens) == 1 and tokens.pop() == len(_independent_positions(_loader(synthetic_data).dataset))
    for run in report["runs"]:
        assert run["overall"]["loss"] < math.log(VOCAB) * 0.9 and run["verdict"].startswith("below")
        assert len(run["buckets"]) == len(report["buckets"])
    controls = ["model, TTT reset every turn", "model, speech swapped", "baseline"]
    assert [c["b"] for c in report["comparisons"]] == controls
    recall = report["recall"]
    by_task = {row["distance"]: row["dialogues"] for row in recall["runs"][0]["by_task"]}
    assert by_task["recall"] == 3 and [g["b"] for g in recall["gaps"]] == controls
    assert "recall probe" in result.output and "loss vs position" in result.output


@pytest.mark.slow
def test_dataset_for_another_mini_batch_is_refused(trained_runs, tmp_path):
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.synthetic import make_synthetic_corpus
    from omnittt.evaluation.evaluate import EvalOptions, evaluate

    make_synthetic_corpus(tmp_path / "corpus", dialogues=1, seed=5)
    preprocess(PreprocessOptions(source="synthetic", input_dir=str(tmp_path / "corpus"),
                                 output=str(tmp_path / "processed"), mini_batch_size=2 * MINI_BATCH, workers=1))
    with pytest.raises(UserError, match="mini-batch size"):
        evaluate(EvalOptions(run=str(trained_runs["ttt"]), data=str(tmp_path / "processed"), stage="none"))


def _small_report():
    return {"buckets": ["0-1k", "1k-2k"], "uniform_loss": math.log(VOCAB), "vocab_size": VOCAB,
            "runs": [{"name": "model", "buckets": [{"loss": 2.0, "ci": [1.9, 2.1]}, {"loss": None, "ci": None}]}]}


def test_plot_needs_matplotlib_and_says_so(monkeypatch, tmp_path):
    import sys

    from omnittt.evaluation.plot import plot_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UserError, match="needs matplotlib"):
        plot_report(_small_report(), tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from omnittt.evaluation.plot import plot_report

    plot_report(_small_report(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speech_swap_gives_every_segment_another_conversations_speech():
    from omnittt.evaluation.scoring import _SpeechDonors

    donors = _SpeechDonors()
    ids = torch.tensor([[1, SPEECH_TOKEN_INDEX, 2, SPEECH_TOKEN_INDEX], [1, SPEECH_TOKEN_INDEX, 2, 3], [1, 2, 3, 4]])
    features = torch.arange(3.0)[:, None, None].expand(3, 2, 5).clone()  # segment i holds the value i
    swapped = donors.swap({"input_ids": ids, "input_features": features}, ["a", "b", "c"])["input_features"]
    owner_of = {0.0: "a", 1.0: "a", 2.0: "b"}
    assert [owner_of[float(row[0, 0])] for row in swapped] == ["b", "b", "a"]
    # a later step of one conversation alone takes the last speech seen of another
    alone = donors.swap({"input_ids": ids[1:2], "input_features": torch.full((1, 2, 5), 7.0)}, ["b"])
    assert float(alone["input_features"][0, 0, 0]) in (0.0, 1.0)  # a's speech, never b's own
    with pytest.raises(UserError, match="two conversations"):
        _SpeechDonors().swap({"input_ids": ids[1:2], "input_features": features[:1]}, ["b"])


def test_eval_scores_the_speech_swap_control_on_the_same_tokens(synthetic_data, tmp_path):
    from omnittt.evaluation.evaluate import EvalOptions, evaluate

    options = dict(preset="tiny", data=str(synthetic_data), stage="none", ttt_reset=("never",),
                   stats=StatOptions(bootstrap=20))
    report = evaluate(EvalOptions(**options))
    assert [run["speech"] for run in report["runs"]] == ["own", "swapped"]
    swap = report["comparisons"][0]
    assert swap["b"] == "model, speech swapped" and swap["overall"]["tokens"] == report["runs"][0]["tokens"]
    assert swap["overall"]["loss"] != 0.0  # another conversation's speech changes the predictions
    assert [g["b"] for g in report["recall"]["gaps"]] == ["model, speech swapped"]
    assert [run["speech"] for run in evaluate(EvalOptions(**options, speech_swap=False))["runs"]] == ["own"]
