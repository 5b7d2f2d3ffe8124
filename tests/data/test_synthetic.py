"""The espeak-ng synthetic corpus: deterministic from the seed, in the DeepDialogue-xtts layout, two voices a
dialogue, replies that depend on what the user said, recall dialogues; `download` / `preprocess` CLI on it."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from omnittt.cli.app import app
from omnittt.data.sources import deepdialogue
from omnittt.data.store import open_dataset
from omnittt.data.synthetic import (
    FOLDER,
    VOICES,
    dialogue_specs,
    make_synthetic_corpus,
    number_words,
    query_table,
    speak,
)
from omnittt.errors import UserError


def tree_hash(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    make_synthetic_corpus(root, dialogues=6, seed=3, recall_exchanges=6)
    return root


def test_same_seed_same_bytes_other_seed_other_corpus(corpus, tmp_path):
    again = make_synthetic_corpus(tmp_path / "again", dialogues=6, seed=3, recall_exchanges=6, workers=1)
    assert again.created and tree_hash(again.path) == tree_hash(corpus)
    other = make_synthetic_corpus(tmp_path / "other", dialogues=6, seed=4, recall_exchanges=6)
    assert tree_hash(other.path) != tree_hash(corpus)
    assert not make_synthetic_corpus(corpus, dialogues=6, seed=3, recall_exchanges=6).created
    with pytest.raises(UserError, match="not this synthetic corpus"):
        make_synthetic_corpus(corpus, dialogues=7, seed=3)


def test_real_layout_and_audio_format(corpus):
    refs = deepdialogue.discover(corpus)
    assert len(refs) == 6 and all(r.conversation_id.startswith(f"{FOLDER}/") for r in refs)
    for ref in refs:
        stem = ref.conversation_id.split("/")[1]
        assert int(stem.rsplit("_", 1)[1]) == len(json.loads(open(ref.path).read())["conversation"])
        conv = deepdialogue.read(corpus, ref)
        assert conv.problem is None and all(t.problem is None for t in conv.turns)
        assert [t.speaker for t in conv.turns] == ["LLM1", "LLM2"] * (len(conv.turns) // 2)
        info = sf.info(str(conv.turns[0].audio_path))
        assert (info.samplerate, info.channels, info.subtype) == (24_000, 1, "PCM_16")
        # file names carry the RAVDESS label set, the JSON the dialogue emotions
        assert conv.turns[0].metadata["file_emotion"] in {"happy", "neutral", "calm", "surprised", "fearful"}
        assert conv.turns[0].metadata["emotion"] in {"enthusiastic", "curious", "relaxed", "surprised", "worried",
                                                     "grateful"}
    assert "\\u2019" in "".join(open(r.path).read() for r in refs)  # non-ASCII written as JSON escapes


def test_two_voices_and_replies_that_depend_on_the_speech(corpus):
    specs = dialogue_specs(6, seed=3, recall_exchanges=6)
    for spec in specs:
        assert spec.voices[0] != spec.voices[1]
        tsv = (corpus / "data" / FOLDER / spec.stem / "metadata.tsv").read_text().splitlines()[1:]
        actors = {row.split("\t")[2]: row.split("\t")[4] for row in tsv}
        assert actors["LLM1"] != actors["LLM2"]
        for x in spec.exchanges:
            numbers = re.findall(r"number (?:is )?([a-z ]+?)[.?]", x.user)
            if spec.kind == "numbers" and numbers:  # the answer follows from the speech, never from the reply's text
                assert f" {numbers[0]} " not in f" {x.reply.rstrip('.')} " and x.reply.rstrip(".").endswith(x.answer)
        if spec.kind == "names":
            name = re.search(r"my name is (\w+)", spec.exchanges[0].user).group(1)
            assert name in spec.exchanges[-1].reply and name not in spec.exchanges[-1].user
        if spec.kind == "recall":
            code = re.search(r"code: ([a-z ]+)\.", spec.exchanges[0].user).group(1)
            assert len(spec.exchanges) == 6 and code in spec.exchanges[-1].reply
            # spoken recall: the code is in the first user turn's speech only, never in a text turn before
            assert all(code not in x.user for x in spec.exchanges[1:])
            assert all(code not in x.reply for x in spec.exchanges[:-1])
    # The two voices of a dialogue sound different saying the same words.
    spec = specs[0]
    a, b = (speak("hello forty two", voice, pitch, spec.speed) for voice, pitch in zip(spec.voices, spec.pitches,
                                                                                         strict=True))
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_number_words():
    assert [number_words(n) for n in (0, 13, 40, 42, 100, 117, 999)] == [
        "zero", "thirteen", "forty", "forty two", "one hundred", "one hundred and seventeen",
        "nine hundred and ninety nine"]


def test_cli_download_then_preprocess(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["download", "synthetic", "--dialogues", "3"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "synthetic" / "synthetic.json").exists()
    done = runner.invoke(app, ["preprocess", "synthetic", "--workers", "1"])  # no paths needed
    assert done.exit_code == 0, done.output
    assert "omnittt-bpe" in done.output and "estimate" in done.output and "preprocess summary" in done.output
    ds = open_dataset(tmp_path / "processed_data")
    assert len(ds) > 0 and ds.settings["source"] == "synthetic"
    assert not (tmp_path / "processed_data" / "errors.jsonl").read_text()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the offline path, no download
    assert runner.invoke(app, ["download", "deepdialogue"]).exit_code == 2
    bad = runner.invoke(app, ["preprocess", "nosuch", "x"])
    assert bad.exit_code == 2 and "unknown source" in bad.output


def test_output_size_estimate_is_close(corpus, tmp_path):
    from omnittt.data.preprocess import PreprocessOptions, plan, run

    the_plan = plan(PreprocessOptions(source="synthetic", input_dir=str(corpus), output=str(tmp_path / "o")))
    run(the_plan)
    actual = sum(p.stat().st_size for p in (tmp_path / "o" / "samples").rglob("*.pt"))
    assert 0.8 < the_plan.estimate_bytes / actual < 1.25


def test_kinds_voices_and_the_query_table(tmp_path):
    """--kinds picks the dialogue kinds, --voices the user's voices (an eval corpus of voices no training
    dialogue has), and every answer the table names is the ending of its reply and (repeat, recall) said in the
    speech of the exchange it points to."""
    held_out = ["en-us+m7", "en-gb+f5"]
    specs = dialogue_specs(12, seed=1, kinds=["repeat", "recall"], voices=held_out)
    assert {spec.kind for spec in specs} == {"repeat", "recall"}
    assert {spec.voices[0] for spec in specs} <= set(held_out) and all(v[1] != v[0] for v in (s.voices for s in specs))
    train = dialogue_specs(12, seed=1, kinds=["repeat"], voices=[v for v in VOICES if v not in held_out])
    assert not {spec.voices[0] for spec in train} & set(held_out)
    for spec in specs:
        table = query_table(spec.exchanges)
        assert table, spec.stem
        for query in table:
            reply, heard = spec.exchanges[query["exchange"]].reply, spec.exchanges[query["fact_exchange"]].user
            assert reply.rstrip(".").endswith(query["answer"]) and query["answer"] in heard
        if spec.kind == "repeat":
            assert [q["exchange"] for q in table] == [q["fact_exchange"] for q in table]
    make_synthetic_corpus(tmp_path / "c", dialogues=2, seed=1, kinds=["repeat"], voices=held_out, workers=1)
    data = json.loads(next((tmp_path / "c" / "data" / FOLDER).glob("repeat_*.json")).read_text())
    assert data["recall"]["queries"][0]["answer"] in data["conversation"][0]["text"]
    for bad in ({"kinds": ["singing"]}, {"voices": ["klingon"]}, {"kinds": []}):
        with pytest.raises(UserError, match="synthetic"):
            make_synthetic_corpus(tmp_path / "bad", dialogues=2, **bad)
