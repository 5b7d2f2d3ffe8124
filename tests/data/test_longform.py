"""The generated long-form corpus (espeak-ng, both LibriLight layouts) and its training view: `omnittt preprocess
librilight` indexes either layout, and `AudioIndexStore` makes the same recordings of both into exchanges of at most
--segment-sec of speech, cut at the voice-activity pauses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from omnittt.data.audio_index_store import AudioIndexStore, vad_chunks
from omnittt.data.longform import make_longform_corpus

SEGMENT_SEC = 4.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("longform") / "corpus"
    make_longform_corpus(root, speakers=2, books_per_speaker=1, recordings_per_book=2, seconds=10, seed=0,
                         layout="both", cut_sec=SEGMENT_SEC)
    return root


def _index(folder: Path, output: Path) -> AudioIndexStore:
    from omnittt.cli.app import app

    result = CliRunner().invoke(app, ["preprocess", "librilight", str(folder), "--output", str(output),
                                      "--mini-batch-size", "16", "--segment-sec", str(SEGMENT_SEC)])
    assert result.exit_code == 0, result.output
    return AudioIndexStore(output)


def test_the_generator_writes_both_librilight_layouts(corpus):
    raw = sorted((corpus / "small").glob("*/*/*.flac"))
    cut = sorted((corpus / "small_cut").glob("*/*/*.flac"))
    record = json.loads((corpus / "longform.json").read_text())
    assert len(raw) == len(record["recordings"]) == 4
    assert {p.parts[-3] for p in raw} == {p.parts[-3] for p in cut}  # the same speakers
    assert all(p.parent.name.isdigit() and p.stem.rsplit("_", 1)[1].isdigit() for p in cut)
    for flac in raw:
        meta = json.loads(flac.with_suffix(".json").read_text())
        info = sf.info(str(flac))
        assert info.samplerate == 16000 and meta["book_meta"]["id"] and meta["speaker"] == flac.parts[-3]
        spans = meta["voice_activity"]
        assert spans and all(a < b <= info.duration for a, b in spans)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))  # pauses between
    voices = {r["speaker"]: r["voice"] for r in record["recordings"]}
    assert len(set(voices.values())) == len(voices) == 2


def test_vad_chunks_merge_spans_up_to_the_limit_and_split_longer_ones():
    spans = [[0.0, 1.0], [1.5, 2.5], [3.0, 9.5], [10.0, 10.4]]
    chunks = vad_chunks(spans, 3.0)
    assert all(0 < b - a <= 3.0 for a, b in chunks)
    assert chunks[0] == (0.0, 2.5)  # the first two merged
    assert chunks[-1][1] == 10.4 and (3.0, 6.0) in chunks  # the 6.5 s span split, its tail merged on
    voiced = sum(b - a for a, b in spans)
    covered = sum(min(b, e) - max(a, s) for a, b in spans for s, e in chunks if min(b, e) > max(a, s))
    assert covered == pytest.approx(voiced)  # every voiced second lands in exactly one chunk


def test_raw_and_cut_layouts_give_the_same_recordings_as_exchanges(corpus, tmp_path):
    raw = _index(corpus / "small", tmp_path / "raw")
    cut = _index(corpus / "small_cut", tmp_path / "cut")
    raw_ids = [m["conversation_id"].split("/", 1)[1] for m in raw.manifest]
    cut_ids = [m["conversation_id"].split("/", 1)[1] for m in cut.manifest]
    assert len(raw_ids) == len(cut_ids) == 4
    assert [i.rsplit("/", 1)[1] for i in raw_ids] == [i.rsplit("/", 1)[1] for i in cut_ids]
    # the cut layout was made with the same grouping rule: as many exchanges per recording, the same audio
    assert len(raw.index) == len(cut.index)
    for a, b in zip(raw.index, cut.index, strict=True):
        sa, sb = raw.load(a)["speech"][:, 0].numpy(), cut.load(b)["speech"][:, 0].numpy()
        assert abs(len(sa) - len(sb)) <= 1 and len(sa) <= SEGMENT_SEC * 16000 + 1
        n = min(len(sa), len(sb))
        assert np.abs(sa[:n] - sb[:n]).max() < 1e-3
        assert a["turn_number"] == b["turn_number"]


def test_an_exchange_is_speech_only_and_aligned_to_the_mini_batch(corpus, tmp_path):
    from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
    from omnittt.core.speech import sample_positions

    store = _index(corpus / "small", tmp_path / "raw")
    for entry in store.index[:3]:
        sample = store.load(entry)
        ids = sample["input_ids"]
        assert int((ids == SPEECH_TOKEN_INDEX).sum()) == 1 and int(sample["attention_mask"].sum()) == 1
        assert bool((sample["labels"] == IGNORE_INDEX).all())
        positions = sample_positions(len(ids), sample["speech_lengths"].tolist(), "trim")
        assert positions % 16 == 0 and positions == entry["num_tokens"]


def test_the_text_objective_refuses_an_audio_index(corpus, tmp_path):
    from omnittt.errors import UserError
    from omnittt.train.settings import TrainSettings
    from omnittt.train.setup import start_run

    _index(corpus / "small", tmp_path / "raw")
    settings = TrainSettings(preset="tiny", data=str(tmp_path / "raw"), stage="none", run=str(tmp_path / "run"),
                             ttt_mini_batch_size=16, num_threads=1, progress=False)
    with pytest.raises(UserError, match="audio index"):
        start_run(settings)


def test_download_longform_makes_the_corpus_and_refuses_a_full_folder(tmp_path):
    from omnittt.cli.app import app

    runner = CliRunner()
    args = ["download", "longform", "--to", str(tmp_path / "lf"), "--speakers", "1", "--books", "1", "--seconds", "3",
            "--layout", "cut"]
    made = runner.invoke(app, args)
    assert made.exit_code == 0, made.output
    assert list((tmp_path / "lf" / "small_cut").glob("*/*/*_0000.flac")) and not (tmp_path / "lf" / "small").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output


def test_curriculum_plans_the_stages_of_an_audio_index(corpus, tmp_path):
    from omnittt.cli.app import app
    from omnittt.data.curriculum import Stage
    from omnittt.data.dataset import ConversationDataset

    store = _index(corpus / "small", tmp_path / "raw")
    shown = CliRunner().invoke(app, ["curriculum", str(tmp_path / "raw")])
    text = " ".join(shown.output.split())  # rich wraps the title
    assert shown.exit_code == 0 and "4 conversations" in text, shown.output
    lengths = {}
    for entry in store.index:
        lengths[entry["conversation_id"]] = lengths.get(entry["conversation_id"], 0) + entry["num_tokens"]
    # a stage just above one recording packs a book's two recordings into one session, state carried through both
    stage = Stage("test", max(lengths.values()) + 1, 2 * max(lengths.values()) + 16, 1e-4)
    sessions = ConversationDataset(tmp_path / "raw", stage=stage).conversations
    assert sessions and all(len(s.source_conversation_ids) == 2 for s in sessions)
    assert all(len({cid.rsplit("/", 1)[0] for cid in s.source_conversation_ids}) == 1 for s in sessions)
