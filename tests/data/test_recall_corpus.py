"""The recall corpus: facts, filler and questions as specified, answers that appear nowhere in between, the query
table in the manifest after preprocessing, same seed same files, bad specs refused in one line."""

from __future__ import annotations

import json
import random

import pytest

from omnittt.data.recall_corpus import RecallCorpusSpec, make_recall_corpus, recall_dialogue
from omnittt.errors import UserError


@pytest.mark.parametrize("facts,queries,filler", [(1, None, 4), (4, 2, 0), (16, None, 3)])
def test_dialogue_layout_and_queries(facts, queries, filler):
    spec = RecallCorpusSpec(facts=facts, queries=queries, filler=filler, filler_words=5, digits=4)
    for seed in range(20):
        dialogue = recall_dialogue(random.Random(seed), spec)
        asked = queries or facts
        assert len(dialogue.exchanges) == facts + filler + asked
        assert len(dialogue.queries) == asked
        assert len({q["fact_exchange"] for q in dialogue.queries}) == asked  # each fact asked at most once
        for query in dialogue.queries:
            user, reply = dialogue.exchanges[query["exchange"]]
            assert reply == query["answer"] and query["key"] in user
            fact_user, _ = dialogue.exchanges[query["fact_exchange"]]
            assert fact_user.endswith(f"{query['key']} code is {query['answer']}.")
            assert len(query["answer"].split()) == 4 and query["exchange"] > query["fact_exchange"]
            # the code appears nowhere between its fact and its question
            for user_text, reply_text in dialogue.exchanges[query["fact_exchange"] + 1:query["exchange"]]:
                assert query["answer"] not in user_text and query["answer"] not in reply_text
        for user_text, _ in dialogue.exchanges[facts:facts + filler]:
            assert not any(ch.isdigit() for ch in user_text)
            assert len(user_text.split()) == 5


def test_corpus_preprocesses_with_the_query_table_and_is_reproducible(tmp_path):
    from omnittt.data.preprocess import PreprocessOptions, preprocess

    spec = RecallCorpusSpec(dialogues=6, facts=2, filler=2, seed=3)
    assert make_recall_corpus(tmp_path / "a", spec) == 6
    make_recall_corpus(tmp_path / "b", spec)
    first = sorted(p.read_text() for p in (tmp_path / "a").rglob("metadata.json"))
    assert first == sorted(p.read_text() for p in (tmp_path / "b").rglob("metadata.json"))
    assert make_recall_corpus(tmp_path / "a", spec) == 6  # the same corpus again: nothing redone
    preprocess(PreprocessOptions(source="conversations", input_dir=str(tmp_path / "a"),
                                 output=str(tmp_path / "out"), mini_batch_size=16, workers=1))
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 6
    for entry in manifest:
        assert entry["domain"] == "recall" and entry["num_turns"] == 2 + 2 + 2
        assert [q["exchange"] for q in entry["recall"]["queries"]] == [4, 5]


def test_bad_specs_and_a_foreign_folder_are_refused(tmp_path):
    with pytest.raises(UserError, match="--queries"):
        make_recall_corpus(tmp_path / "x", RecallCorpusSpec(facts=2, queries=3))
    with pytest.raises(UserError, match="--facts"):
        make_recall_corpus(tmp_path / "x", RecallCorpusSpec(facts=0))
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="not this recall corpus"):
        make_recall_corpus(tmp_path / "other", RecallCorpusSpec(dialogues=2))
    make_recall_corpus(tmp_path / "y", RecallCorpusSpec(dialogues=2))
    with pytest.raises(UserError, match="not this recall corpus"):
        make_recall_corpus(tmp_path / "y", RecallCorpusSpec(dialogues=3))


def test_mixed_distances_cover_the_filler_range():
    spec = RecallCorpusSpec(facts=1, filler=4, min_filler=1)
    counts = {len(recall_dialogue(random.Random(seed), spec).exchanges) - 2 for seed in range(60)}
    assert counts == {1, 2, 3, 4}
    with pytest.raises(UserError, match="--min-filler"):
        RecallCorpusSpec(filler=2, min_filler=3).check()


def test_download_recall_makes_the_corpus_and_refuses_bad_options_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from omnittt.cli import app

    ok = CliRunner().invoke(app, ["download", "recall", "--dialogues", "3", "--facts", "2", "--filler", "2",
                                  "--min-filler", "1", "--to", str(tmp_path / "c")])
    assert ok.exit_code == 0, ok.output
    metas = [json.loads(p.read_text()) for p in (tmp_path / "c").rglob("metadata.json")]
    assert len(metas) == 3 and all(m["recall"]["facts"] == 2 for m in metas)
    bad = CliRunner().invoke(app, ["download", "recall", "--filler", "2", "--min-filler", "3", "--to",
                                   str(tmp_path / "d")])
    assert bad.exit_code == 2 and "--min-filler" in bad.output and not (tmp_path / "d").exists()


def test_code_style_is_the_synthetic_recall_dialogue_and_the_probe_finds_its_code(tmp_path):
    from omnittt.core.tokenizer import load_tokenizer
    from omnittt.data.dataset import ConversationDataset
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.evaluation.recall import find_recall_items

    spec = RecallCorpusSpec(dialogues=5, style="code", filler=3, min_filler=0, filler_words=4, seed=2)
    make_recall_corpus(tmp_path / "c", spec)
    codes = {}
    for path in (tmp_path / "c").rglob("metadata.json"):
        meta = json.loads(path.read_text())
        first, last = meta["turns"][0]["text"], meta["turns"][-1]["text"]
        code = first.removeprefix("Please remember this code: ").rstrip(".")
        assert last == f"The code you gave me was {code}." and len(code.split()) == 4
        assert all(code not in turn["text"] for turn in meta["turns"][2:-2])
        codes[meta["conversation_id"]] = code
    preprocess(PreprocessOptions(source="conversations", input_dir=str(tmp_path / "c"), output=str(tmp_path / "d"),
                                 mini_batch_size=16, workers=1))
    dataset = ConversationDataset(tmp_path / "d")
    items = find_recall_items(dataset, load_tokenizer(dataset.store.tokenizer_dir))
    assert {item.dialogue_id: item.answer_text for item in items} == codes
    with pytest.raises(UserError, match="one code"):
        RecallCorpusSpec(style="code", facts=2).check()
