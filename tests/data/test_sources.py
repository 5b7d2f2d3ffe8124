"""The LibriSpeech, DailyTalk, Common Voice and LibriLight adapters on generated corpora in their real layouts,
each with defects that must be reported by name and skipped while every good utterance is kept; `auto`
recognises every layout; `omnittt validate` passes on each source's output."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from fake_corpora import make_conversations, make_deepdialogue
from source_corpora import (
    CLIENT_A,
    CLIENT_B,
    make_commonvoice,
    make_dailytalk,
    make_librilight,
    make_librispeech,
)
from typer.testing import CliRunner

from omnittt.core.constants import IGNORE_INDEX
from omnittt.data.preprocess import PreprocessOptions, preprocess
from omnittt.data.sources import detect
from omnittt.data.store import open_dataset
from omnittt.data.validate import validate_dataset
from omnittt.errors import UserError


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpora")
    return {
        "librispeech": (base / "ls", make_librispeech(base / "ls")),
        "dailytalk": (base / "DailyTalk", make_dailytalk(base)),
        "commonvoice": (base / "cv-corpus-17.0", make_commonvoice(base)),
        "librilight": make_librilight(base),
    }


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def _targets(ds, tokenizer) -> dict[str, list[str]]:
    """conversation id -> the decoded training target of each sample, in turn order."""
    by_conv = defaultdict(list)
    for entry in ds.index:
        sample = ds.load(entry)
        assert sample["turn_number"] == len(by_conv[entry["conversation_id"]])
        target = [t for t in sample["labels"].tolist() if t != IGNORE_INDEX][:-1]  # without the final <eot>
        by_conv[entry["conversation_id"]].append(tokenizer.decode(target))
    return dict(by_conv)


def _validate_ok(out: Path) -> None:
    report = validate_dataset(out, workers=1)
    failed = {name: check.to_dict() for name, check in report.checks.items() if check.status == "fail"}
    assert report.ok, failed


@pytest.fixture(scope="module")
def librispeech_out(corpora, tmp_path_factory):
    root, _ = corpora["librispeech"]
    out = tmp_path_factory.mktemp("ls_out") / "data"
    return out, preprocess(PreprocessOptions(source="librispeech", input_dir=str(root), output=str(out)))


def test_librispeech_chapters_are_asr_pseudo_conversations(corpora, librispeech_out, tokenizer):
    root, expect = corpora["librispeech"]
    out, summary = librispeech_out
    ds = open_dataset(out)
    assert ds.settings["task"] == "asr" and ds.settings["source"] == "librispeech"  # asr by default
    # every good utterance kept, in utterance order; a bad one skipped alone (the chapter goes on)
    assert _targets(ds, tokenizer) == {cid: e["texts"] for cid, e in expect.items()}
    errors = [(e["conversation_id"], e["reason"], e["path"]) for e in _errors(out)]
    assert errors == [(cid, reason, path) for cid, e in sorted(expect.items()) for reason, path in e["errors"]]
    assert "after_hole" not in summary.stats["skipped"]
    manifest = {m["conversation_id"]: m for m in ds.manifest}
    assert manifest["dev-clean/84-121123"]["group"] == "dev-clean/84"
    assert manifest["dev-clean/84-121123"]["chapter"] == "121123"
    assert {ds.load(e)["speaker_id"] for e in ds.index if e["conversation_id"].startswith("dev-clean/84-")} == {"84"}
    _validate_ok(out)


def test_librispeech_split_and_no_dialogue_task(corpora, tmp_path):
    root, _ = corpora["librispeech"]
    out = tmp_path / "test-clean"
    preprocess(PreprocessOptions(source="librispeech", input_dir=str(root / "LibriSpeech"), output=str(out),
                                 split="test-clean"))
    assert {e["conversation_id"] for e in open_dataset(out).index} == {"test-clean/1089-134686"}
    with pytest.raises(UserError, match="no subset dev-other"):
        preprocess(PreprocessOptions(source="librispeech", input_dir=str(root), output=str(tmp_path / "x"),
                                     split="dev-other"))
    with pytest.raises(UserError, match="has no dialogues"):
        preprocess(PreprocessOptions(source="librispeech", input_dir=str(root), output=str(tmp_path / "y"),
                                     task="dialogue"))


def test_dailytalk_dialogues(corpora, tmp_path, tokenizer):
    root, expect = corpora["dailytalk"]
    out = tmp_path / "dt"
    summary = preprocess(PreprocessOptions(source="dailytalk", input_dir=str(root), output=str(out)))
    ds = open_dataset(out)
    assert ds.settings["task"] == "dialogue"
    targets = _targets(ds, tokenizer)
    assert targets == {cid: e["replies"] for cid, e in expect.items() if e["replies"]}
    # numeric order of the dialogue number: d10 after d2
    assert list(dict.fromkeys(e["conversation_id"] for e in ds.index)) == ["d0", "d1", "d10"]
    errors = [(e["conversation_id"], e["reason"], e.get("exchange")) for e in _errors(out)]
    assert errors == [(cid, r, k) for cid in ("d0", "d1", "d2", "d10") for r, k in expect[cid]["errors"]]
    paths = {e["reason"]: e["path"] for e in _errors(out)}
    assert paths["missing_audio"] == "data/1/2_0_d1.wav" and paths["unreadable_audio"] == "data/2/0_0_d2.wav"
    # the speaker who opens the dialogue is the user: d0 and d10 are opened by speaker 1
    assert {ds.load(e)["speaker_id"] for e in ds.index if e["conversation_id"] in ("d0", "d10")} == {"1"}
    assert summary.stats["converted_files"] == len(ds.index)  # 44.1 kHz -> 16 kHz
    _validate_ok(out)


def test_commonvoice_grouped_clips(corpora, tmp_path, tokenizer):
    root, expect = corpora["commonvoice"]
    out = tmp_path / "cv"
    preprocess(PreprocessOptions(source="commonvoice", input_dir=str(root), output=str(out), group_size=4))
    ds = open_dataset(out)
    assert ds.settings["task"] == "asr" and ds.settings["split"] == "train"
    assert _targets(ds, tokenizer) == {cid: e["texts"] for cid, e in expect.items()}
    # read with no quoting: the unbalanced quote is kept and does not swallow the following rows
    assert 'He said "hello and walked away.' in _targets(ds, tokenizer)[next(c for c in expect if "bbbb" in c)]
    errors = [(e["conversation_id"], e["reason"], e["path"].rsplit("/", 1)[-1]) for e in _errors(out)]
    assert errors == [(cid, r, clip) for cid, e in sorted(expect.items()) for r, clip in e["errors"]]
    assert all(m["group"] == "en" for m in ds.manifest)
    assert {ds.load(e)["speaker_id"] for e in ds.index} == {CLIENT_A[:16], CLIENT_B[:16]}
    _validate_ok(out)
    dev = tmp_path / "cv_dev"
    preprocess(PreprocessOptions(source="commonvoice", input_dir=str(root / "en"), output=str(dev), split="dev"))
    assert len(open_dataset(dev).index) == 2
    with pytest.raises(UserError, match="not found"):
        preprocess(PreprocessOptions(source="commonvoice", input_dir=str(root), output=str(tmp_path / "z"),
                                     split="other"))


def test_librilight_writes_an_audio_index_and_no_samples(corpora, tmp_path):
    from omnittt.data.sources import librilight

    info = corpora["librilight"]
    out = tmp_path / "ll"
    summary = librilight.build_index(info["root"], out)
    lines = [json.loads(line) for line in (out / "audio_index.jsonl").read_text().splitlines()]
    assert sorted((line["path"], line["duration_sec"]) for line in lines) == info["good"]
    first = next(line for line in lines if line["path"].endswith("sea_fairies_01_baum.flac"))
    assert (first["speaker"], first["book"], first["subset"]) == ("100", "sea_fairies_0812_librivox", "small")
    assert first["metadata"]["voice_activity"] and first["snr"] == 12.5 and first["book_id"] == "0812"
    assert next(line for line in lines if "emma_01" in line["path"])["metadata"] is None
    assert [(e["path"], e["reason"]) for e in _errors(out)] == [(p, "unreadable_audio") for p in info["bad"]]
    assert summary.files == 3 and summary.without_metadata == 1 and summary.stats["samples"] == 0
    assert not (out / "index.json").exists()
    with pytest.raises(UserError, match="audio index"):
        open_dataset(out)
    with pytest.raises(UserError, match="audio-only"):
        preprocess(PreprocessOptions(source="librilight", input_dir=str(info["root"]), output=str(tmp_path / "n")))


def test_auto_recognises_every_layout(corpora, tmp_path):
    dd = tmp_path / "DeepDialogue-xtts"
    make_deepdialogue(dd)
    conv = tmp_path / "conv"
    make_conversations(conv)
    synthetic = tmp_path / "synth"
    make_deepdialogue(synthetic)
    (synthetic / "synthetic.json").write_text("{}")
    cases = {
        dd: "deepdialogue", dd / "data": "deepdialogue", dd / "data" / "dialogues_phi4-mini": "deepdialogue",
        synthetic: "synthetic", conv: "conversations",
        corpora["librispeech"][0]: "librispeech",
        corpora["librispeech"][0] / "LibriSpeech" / "dev-clean": "librispeech",
        corpora["dailytalk"][0]: "dailytalk", corpora["dailytalk"][0] / "data": "dailytalk",
        corpora["commonvoice"][0]: "commonvoice", corpora["commonvoice"][0] / "en": "commonvoice",
        corpora["librilight"]["root"]: "librilight", corpora["librilight"]["root"] / "small": "librilight",
    }
    assert {path: detect(path)[0] for path in cases} == cases
    with pytest.raises(UserError, match="no known corpus layout"):
        detect(tmp_path / "conv" / "conversations" / "conv_a")


def test_cli_auto_says_what_it_found(corpora, tmp_path):
    from omnittt.cli.app import app

    runner = CliRunner()
    root, expect = corpora["librispeech"]
    out = tmp_path / "auto_ls"
    result = runner.invoke(app, ["preprocess", "auto", str(root), "--output", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "holds librispeech" in result.output
    assert open_dataset(out).settings["source"] == "librispeech"
    ll = tmp_path / "auto_ll"
    result = runner.invoke(app, ["preprocess", "auto", str(corpora["librilight"]["root"]), "--output", str(ll)])
    assert result.exit_code == 0, result.output
    assert "holds librilight" in result.output and "no samples" in result.output
    assert (ll / "audio_index.jsonl").exists()
