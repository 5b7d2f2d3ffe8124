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
    make_librilight_cut,
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
        "librilight_cut": make_librilight_cut(base / "librilight_cut" / "small_cut"),
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
    # metadata.json's labels reach each conversation's manifest line (per utterance number u)
    manifest = {m["conversation_id"]: m for m in ds.manifest}
    for cid, entry in manifest.items():
        labels = expect[cid]["labels"]
        got = {k: entry[k] for k in ("topic", "emotions", "acts") if k in entry}
        assert got == (labels or {}), cid
    assert manifest["d0"]["topic"] == "ordinary_life" and manifest["d0"]["emotions"][1] == "happiness"
    _validate_ok(out)


def test_dailytalk_labels_from_the_data_folder_and_a_broken_metadata_json(corpora, tmp_path):
    import shutil

    from omnittt.data.sources import dailytalk

    root, expect = corpora["dailytalk"]
    refs = {ref.conversation_id: ref for ref in dailytalk.discover(root / "data")}  # metadata.json one level up
    conv = dailytalk.read(root / "data", refs["d1"])
    assert [t.metadata.get("emotion") for t in conv.turns] == expect["d1"]["labels"]["emotions"]
    assert [t.metadata.get("act") for t in conv.turns] == expect["d1"]["labels"]["acts"]
    assert {t.metadata.get("topic") for t in conv.turns} == {"work"}
    assert dailytalk.read(root, refs["d10"]).metadata == {"dialogue": 10}  # no entry: no labels
    broken = tmp_path / "DailyTalk"
    shutil.copytree(root, broken)
    (broken / "metadata.json").write_text('{"0": {"0": {"emotion": ')
    with pytest.raises(UserError, match=r"metadata\.json: does not parse") as err:
        dailytalk.discover(broken)
    assert "move it away" in err.value.fix
    (broken / "metadata.json").unlink()  # without it: no labels, no error
    assert all(ref.items == () for ref in dailytalk.discover(broken))


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


def test_commonvoice_refuses_up_front_a_libsndfile_without_mp3(tmp_path):
    from omnittt.data.sources.commonvoice import mp3_unsupported, require_mp3

    formats = {"WAV": "Microsoft", "FLAC": "Free Lossless Audio Codec", "OGG": "OGG (Ogg Container format)"}
    assert mp3_unsupported("1.2.2", {**formats, "MP3": "MPEG-1/2 Audio"}) is None
    assert mp3_unsupported("1.1.0", ["MP3", "WAV"]) is None
    assert mp3_unsupported("1.0.31", formats) == "libsndfile 1.0.31 cannot decode MP3 (it needs libsndfile >= 1.1.0)"
    assert mp3_unsupported("1.0.28-exp", {**formats, "MP3": "?"}).startswith("libsndfile 1.0.28-exp cannot")
    assert mp3_unsupported("1.2.0", formats) == "libsndfile 1.2.0 was built without MP3 support"
    clips = tmp_path / "en" / "clips"
    with pytest.raises(UserError) as err:
        require_mp3(clips, "1.0.31", formats)
    assert str(err.value.message) == (f"{clips}: the Common Voice clips are MP3, but libsndfile 1.0.31 cannot "
                                      "decode MP3 (it needs libsndfile >= 1.1.0)")
    assert "soundfile>=0.12" in err.value.fix and "\n" not in str(err.value)
    require_mp3(clips, "1.2.2", ["MP3"])  # fine: no error


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
    assert (first["layout"], first["recording"], first["segment"]) == ("raw", "sea_fairies_01_baum", 0)
    assert next(line for line in lines if "emma_01" in line["path"])["metadata"] is None
    assert [(e["path"], e["reason"]) for e in _errors(out)] == [(p, "unreadable_audio") for p in info["bad"]]
    assert summary.files == 3 and summary.without_metadata == 1 and summary.stats["samples"] == 0
    assert not (out / "index.json").exists()
    with pytest.raises(UserError, match="audio index"):
        open_dataset(out)
    with pytest.raises(UserError, match="audio-only"):
        preprocess(PreprocessOptions(source="librilight", input_dir=str(info["root"]), output=str(tmp_path / "n")))


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "audio_index.jsonl").read_text().splitlines()]


def test_librilight_vad_cut_layout_is_indexed_by_recording_and_segment(corpora, tmp_path):
    """The layout libri-light's cut_by_vad.py writes: each piece names its recording and its number, and a
    recording's pieces come consecutive and in numeric order (_9999 before _10000), ready for sessions."""
    from omnittt.data.sources import librilight

    info = corpora["librilight_cut"]
    out = tmp_path / "cut"
    summary = librilight.build_index(info["root"], out)
    lines = _index(out)
    assert {line["layout"] for line in lines} == {"vad_cut"} and {line["subset"] for line in lines} == {"small_cut"}
    order = [(line["speaker"], line["book_id"], line["recording"]) for line in lines]
    assert order == [key for key, pieces in info["recordings"].items() for _ in pieces]  # consecutive, in order
    got = {}
    for line in lines:
        assert line["book"] == line["book_id"] and line["metadata"] is None and line["snr"] is None
        assert line["path"] == f"{line['speaker']}/{line['book_id']}/{line['recording']}_{line['segment']:04}.flac"
        got.setdefault((line["speaker"], line["book_id"], line["recording"]), []).append(
            (line["segment"], line["duration_sec"]))
    assert got == info["recordings"]
    assert sorted((e["path"], e["reason"]) for e in _errors(out)) == info["errors"]
    assert summary.without_metadata == 0 and summary.stats["layouts"] == {"vad_cut": len(lines)}
    assert summary.stats["recordings"] == 3 and summary.stats["files_found"] == len(lines) + len(info["errors"])


def test_librilight_raw_and_cut_folders_side_by_side(corpora, tmp_path):
    import shutil

    from omnittt.cli.app import app
    from omnittt.data.sources import librilight

    both = tmp_path / "LibriLight"
    shutil.copytree(corpora["librilight"]["root"] / "small", both / "small")
    shutil.copytree(corpora["librilight_cut"]["root"], both / "small_cut")
    make_librilight_cut(both / "mp3_cut", extension=".mp3")  # --out_extension .mp3
    shutil.copy(both / "small_cut/100/0812/sea_fairies_01_baum_0000.flac", both / "small_cut/x_0000.flac")  # stray
    assert detect(both)[0] == "librilight" and "small_cut (cut by VAD)" in detect(both)[1]
    result = CliRunner().invoke(app, ["preprocess", "librilight", str(both), "--output", str(tmp_path / "ix")])
    assert result.exit_code == 0, result.output
    lines = _index(tmp_path / "ix")
    counts = json.loads((tmp_path / "ix" / "preprocessing_stats.json").read_text())["layouts"]
    pieces = sum(map(len, corpora["librilight_cut"]["recordings"].values()))
    assert counts == {"raw": 3, "vad_cut": 2 * pieces}
    mp3 = [(line["recording"], line["segment"]) for line in lines if line["path"].endswith(".mp3")]
    assert mp3 == [(r, s) for (_, _, r), pieces in corpora["librilight_cut"]["recordings"].items() for s, _ in pieces]
    # a raw file and the pieces cut from it share `recording`
    raw = next(line for line in lines if line["layout"] == "raw" and line["recording"] == "sea_fairies_01_baum")
    cut = [line for line in lines if line["subset"] == "small_cut" and line["recording"] == raw["recording"]]
    assert raw["segment"] == 0 and [line["segment"] for line in cut] == list(range(12))
    assert ("small_cut/x_0000.flac", "misplaced") in {(e["path"], e["reason"]) for e in _errors(tmp_path / "ix")}
    librilight.build_index(both, tmp_path / "only_cut", split="small_cut")
    assert {line["subset"] for line in _index(tmp_path / "only_cut")} == {"small_cut"}


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
        corpora["librilight_cut"]["root"]: "librilight",  # numeric folders of flacs, yet not LibriSpeech
        corpora["librilight_cut"]["root"].parent: "librilight",
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
