"""The recall probe on the recall corpus' query table: one item per question with the exchange of its own fact, the
code as the answer tokens, distances counted independently, facts held, and a needle grid that covers every item."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import MINI_BATCH

from omnittt.core.features import build_feature_extractor
from omnittt.core.presets import build_model
from omnittt.core.tokenizer import load_tokenizer
from omnittt.data.dataset import ConversationDataset, ConversationLoader
from omnittt.data.preprocess import PreprocessOptions, preprocess
from omnittt.data.recall_corpus import RecallCorpusSpec, make_recall_corpus
from omnittt.evaluation.recall import find_recall_items, recall_probe
from omnittt.evaluation.scoring import runs_for, score_runs
from omnittt.evaluation.statistics import StatOptions


def _dataset(root, spec):
    make_recall_corpus(root / "corpus", spec)
    preprocess(PreprocessOptions(source="conversations", input_dir=str(root / "corpus"), output=str(root / "data"),
                                 mini_batch_size=MINI_BATCH, workers=1))
    return ConversationDataset(root / "data")


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall")
    one = _dataset(root / "one", RecallCorpusSpec(dialogues=4, facts=1, filler=2, seed=1))
    many = _dataset(root / "many", RecallCorpusSpec(dialogues=4, facts=3, queries=2, filler=1, seed=2))
    torch.manual_seed(0)
    model = build_model("tiny", ttt_mini_batch_size=MINI_BATCH)
    results = {}
    for name, dataset in (("one", one), ("many", many)):
        loader = ConversationLoader(dataset, batch_size=2, shuffle=False, feature_extractor=build_feature_extractor(80))
        items = find_recall_items(dataset, load_tokenizer(dataset.store.tokenizer_dir))
        runs = runs_for(model, "random", ("never", "every-turn"), None)
        results[name] = (dataset, items, runs, score_runs(runs, loader))
    return results


def test_one_item_per_question_with_its_own_fact(probed):
    for dataset, items, _, _ in probed.values():
        manifest = {m["conversation_id"]: m for m in dataset.store.manifest}
        expected = sorted((cid, q["fact_exchange"], q["exchange"], q["answer"], m["recall"]["facts"])
                          for cid, m in manifest.items() for q in m["recall"]["queries"])
        found = sorted((i.dialogue_id, i.fact_exchange, i.answer_exchange, i.answer_text, i.facts) for i in items)
        assert found == expected  # conversations are not packed into sessions here: exchange k of the dialogue is k
        tokenizer = load_tokenizer(dataset.store.tokenizer_dir)
        for item in items:  # the code's tokens in the reply, without the <eot>
            assert len(item.answer_ordinals) == len(tokenizer.encode(item.answer_text, add_special_tokens=False))


def test_distances_facts_and_the_needle_grid(probed):
    dataset, items, runs, scores = probed["many"]
    probe = recall_probe(items, [r.name for r in runs], scores, StatOptions(bootstrap=20, min_dialogues=1), [(0, 1)])
    assert probe["dialogues"] == len(items) == 8
    assert probe["answer_tokens"] == sum(len(item.answer_ordinals) for item in items)
    # position distance counted independently: real positions of the exchanges from the fact up to the question,
    # plus the question's own prompt before the first answer token
    lengths = {}
    for conv in dataset.conversations:
        for k, ref in enumerate(conv.exchanges):
            sample = dataset.exchange(ref)
            lengths[(conv.conversation_id, k)] = (int(torch.as_tensor(sample["attention_mask"]).sum()), sample)
    distances = []
    for item in items:
        before = sum(lengths[(item.dialogue_id, k)][0] for k in range(item.fact_exchange, item.answer_exchange))
        labels = torch.as_tensor(lengths[(item.dialogue_id, item.answer_exchange)][1]["labels"]).tolist()
        prompt = next(i for i, label in enumerate(labels) if label != -100)
        distances.append(before + prompt)
    assert probe["position_distance"] == {"min": min(distances), "max": max(distances)}
    run = probe["runs"][0]
    assert [row["distance"] for row in run["by_facts"]] == ["3"]
    assert sum(cell["items"] for cell in run["needle"]) == len(items)
    assert all(cell["facts"] == 3 and 0.0 <= cell["exact_match"] <= 1.0 for cell in run["needle"])
    json.dumps(probe)  # the report is JSON as it stands
