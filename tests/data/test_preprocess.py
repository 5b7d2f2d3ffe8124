"""`omnittt preprocess` on generated corpora in the real DeepDialogue-xtts layout (with defects), the
conversations layout, both tasks, both formats, and the sample/prompt-builder property."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from fake_corpora import CROSS, MINI, make_conversations, make_deepdialogue, write_dialogue

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.prompt import Exchange, PromptBuilder, concatenate
from omnittt.core.tokenizer import chat_tokens
from omnittt.data.preprocess import PreprocessOptions, preprocess
from omnittt.data.store import open_dataset
from omnittt.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("dd")
    outside = tmp_path_factory.mktemp("outside")
    root = base / "DeepDialogue-xtts"
    expect = make_deepdialogue(root, outside=outside)
    return root, expect


@pytest.fixture(scope="module")
def processed(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("out") / "processed_data"
    summary = preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out)))
    return out, summary


def _json_texts(root: Path, conversation_id: str) -> list[str | None]:
    folder, stem = conversation_id.split("/")
    data = json.loads((root / "data" / folder / f"{stem}.json").read_text())
    return [turn.get("text") for turn in data["conversation"]]


def test_every_defect_reported_and_good_exchanges_kept(corpus, processed):
    root, expect = corpus
    out, summary = processed
    ds = open_dataset(out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_conv = defaultdict(list)
    for err in errors:
        by_conv[err["conversation_id"]].append((err["reason"], err.get("exchange")))
    kept = defaultdict(int)
    for entry in ds.index:
        kept[entry["conversation_id"]] += 1
    for conv_id, exp in expect.items():
        assert by_conv.get(conv_id, []) == exp["errors"], conv_id
        assert kept.get(conv_id, 0) == exp["kept"], conv_id
    assert set(by_conv) <= set(expect)
    assert summary.stats["skipped"] == {
        reason: sum(1 for errs in by_conv.values() for r, _ in errs if r == reason)
        for reason in sorted({r for errs in by_conv.values() for r, _ in errs})}
    # Errors name the file: relative paths inside the input, the broken segment itself where there is one.
    paths = {err["reason"]: err["path"] for err in errors}
    assert paths["truncated_audio"] == f"data/{MINI}/education_7_6/segments/003_LLM1_happy.wav"
    assert paths["empty_audio"] == f"data/{MINI}/health_2_4/segments/001_LLM1_happy.wav"
    assert paths["missing_audio"].startswith(f"data/{MINI}/music_3_6/segments/005_LLM1_")
    assert paths["missing_audio_folder"] == f"data/{MINI}/food_8_2.json"
    assert paths["missing_text"] == f"data/{MINI}/sports_6_4.json"
    # Ids are unique across model folders; sample ids are 0..N-1 in sorted conversation-id order.
    assert kept[f"{CROSS}/cars_5_4"] == kept[f"{MINI}/cars_5_4"] == 2
    assert [e["sample_id"] for e in ds.index] == list(range(len(ds.index)))
    order = [e["conversation_id"] for e in ds.index]
    assert order == sorted(order, key=lambda c: (c, 0))
    assert (out / "tokenizer" / "tokenizer.json").exists()


def test_stereo_44k_is_converted_not_dropped(corpus, processed):
    root, _ = corpus
    out, summary = processed
    ds = open_dataset(out)
    entry = next(e for e in ds.index if e["conversation_id"] == f"{MINI}/travel_4_4" and e["turn_number"] == 0)
    sample = ds.load(entry)
    data, rate = sf.read(root / "data" / MINI / "travel_4_4" / "segments" / "001_LLM1_happy.wav", dtype="float32")
    assert data.ndim == 2 and rate == 44_100
    expected = soxr.resample(data.mean(axis=1), rate, 16_000)
    assert sample["speech"].shape == (len(expected), 1)
    np.testing.assert_allclose(sample["speech"][:, 0].numpy(), expected, atol=1e-6)
    assert summary.stats["converted_files"] == len(ds.index)  # every file here is 24 or 44.1 kHz


def test_sample_format_and_padding(processed, tokenizer):
    out, _ = processed
    ds = open_dataset(out)
    pad = chat_tokens(tokenizer).pad
    assert ds.settings["mini_batch_size"] == 64 and ds.settings["speech_positions"] == "trim"
    assert ds.settings["task"] == "dialogue" and ds.settings["sample_rate"] == 16_000
    assert ds.settings["tokenizer_fingerprint"] and ds.settings["vocab_size"] == len(tokenizer)
    for entry in ds.index:
        s = ds.load(entry)
        assert set(s) == {"speech", "speech_lengths", "input_ids", "labels", "attention_mask",
                          "conversation_id", "turn_number", "speaker_id", "original_length", "prefix_len"}
        assert s["speech"].dtype == torch.float32 and s["speech"].shape[1] == 1
        assert float(s["speech"].abs().max()) <= 1.0
        assert int(s["speech_lengths"].sum()) == s["speech"].shape[0]
        n_seg = len(s["speech_lengths"])
        positions = len(s["input_ids"]) - n_seg + sum(-(-int(n) // 1600) for n in s["speech_lengths"])
        assert positions % 64 == 0 and positions == entry["num_tokens"]
        real = int(s["attention_mask"].sum())
        assert s["attention_mask"][:real].all() and not s["attention_mask"][real:].any()
        assert (s["input_ids"][real:] == pad).all() and (s["labels"][real:] == IGNORE_INDEX).all()
        assert s["original_length"] == positions - (len(s["input_ids"]) - real)
        assert int((s["input_ids"] == SPEECH_TOKEN_INDEX).sum()) == n_seg
        assert s["speaker_id"] == "LLM1"
        assert (s["prefix_len"] > 0) == (s["turn_number"] == 0)


def test_samples_concatenate_to_the_whole_conversation(corpus, processed, tokenizer):
    """Concatenating a conversation's unpadded samples gives the prompt builder's output for the whole
    conversation, built here independently from the JSON texts."""
    root, _ = corpus
    out, _ = processed
    ds = open_dataset(out)
    builder = PromptBuilder(tokenizer)
    by_conv = defaultdict(list)
    for entry in ds.index:
        by_conv[entry["conversation_id"]].append(ds.load(entry))
    assert len(by_conv) >= 5
    for conv_id, samples in by_conv.items():
        assert [s["turn_number"] for s in samples] == list(range(len(samples)))
        texts = _json_texts(root, conv_id)
        exchanges = [Exchange(speech_segments=1, reply=texts[2 * k + 1]) for k in range(len(samples))]
        whole = concatenate(builder.conversation(exchanges))
        ids, labels = [], []
        for s in samples:
            real = int(s["attention_mask"].sum())
            ids += s["input_ids"][:real].tolist()
            labels += s["labels"][:real].tolist()
        assert ids == whole.input_ids and labels == whole.labels, conv_id
    # the \u2019 apostrophe survives into the targets
    s0 = by_conv[f"{CROSS}/cars_5_4"][0]
    trained = [t for t in s0["labels"].tolist() if t != IGNORE_INDEX]
    assert "what\u2019s next" in tokenizer.decode(trained)


def test_manifest(processed):
    out, _ = processed
    ds = open_dataset(out)
    by_id = {m["conversation_id"]: m for m in ds.manifest}
    cross = by_id[f"{CROSS}/cars_5_4"]
    assert cross["model1"] == "Qwen/Qwen2.5-72B-Instruct"  # the absolute HF-cache path, normalised
    assert cross["group"] == f"{CROSS}/cars" and cross["source"] == "deepdialogue"
    assert cross["num_turns"] == 2
    entries = [e for e in ds.index if e["conversation_id"] == cross["conversation_id"]]
    assert cross["total_tokens"] == sum(e["num_tokens"] for e in entries)
    assert cross["first_sample_id"] == entries[0]["sample_id"]
    assert abs(cross["duration_sec"] - sum(e["audio_duration_sec"] for e in entries)) < 1e-3
    assert all(m["num_turns"] > 0 for m in ds.manifest)


def test_split_at_holes(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "split"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root / "data" / MINI), output=str(out),
                                 split_at_holes=True))
    ds = open_dataset(out)
    edu = [(e["conversation_id"], e["turn_number"]) for e in ds.index if "education_7_6" in e["conversation_id"]]
    assert edu == [(f"{MINI}/education_7_6", 0), (f"{MINI}/education_7_6#2", 0)]
    part2 = ds.load(next(e for e in ds.index if e["conversation_id"].endswith("#2")))
    assert part2["prefix_len"] > 0
    assert next(m for m in ds.manifest if m["conversation_id"].endswith("#2"))["split_from"] == \
        f"{MINI}/education_7_6"
    reasons = [json.loads(line)["reason"] for line in (out / "errors.jsonl").read_text().splitlines()]
    assert "after_hole" not in reasons and "truncated_audio" in reasons


def test_asr_task_every_turn_is_speech(corpus, tmp_path, tokenizer):
    root, expect = corpus
    out = tmp_path / "asr"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out), task="asr",
                                 max_dialogues=2))
    ds = open_dataset(out)
    assert ds.settings["task"] == "asr"
    conv_ids = sorted(expect)[:2]
    assert [e["conversation_id"] for e in ds.index] == [
        c for c in conv_ids for _ in range(len(_json_texts(root, c)))]
    for entry in ds.index:
        s = ds.load(entry)
        text = _json_texts(root, entry["conversation_id"])[entry["turn_number"]]
        target = [t for t in s["labels"].tolist() if t != IGNORE_INDEX]
        assert tokenizer.decode(target[:-1]) == text
        assert s["speaker_id"] == f"LLM{entry['turn_number'] % 2 + 1}"


def test_workers_and_arrow_give_the_same_samples(corpus, processed, tmp_path):
    root, _ = corpus
    out, _ = processed
    ref = open_dataset(out)
    arrow = tmp_path / "arrow"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(arrow), format="arrow",
                                 workers=2))
    ds = open_dataset(arrow)
    assert ds.format == "arrow" and not (arrow / "samples").exists()
    assert [dict(e, file_path=None) for e in ds.index] == [dict(e, file_path=None) for e in ref.index]
    for entry in ref.index:
        a, b = ref.load(entry), ds.load(entry["sample_id"])
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
            else:
                assert value == b[key], key


def test_conversations_layout(tmp_path, tokenizer):
    root = tmp_path / "convs"
    make_conversations(root)
    out = tmp_path / "out"
    summary = preprocess(PreprocessOptions(source="conversations", input_dir=str(root), output=str(out)))
    ds = open_dataset(out)
    ids = [(e["conversation_id"], e["turn_number"]) for e in ds.index]
    assert ids == [("conv_a", 0), ("conv_a", 1), ("conv_b", 0), ("conv_b", 1)]
    text_turn = ds.load(1)
    assert text_turn["speech"].shape == (0, 1) and len(text_turn["speech_lengths"]) == 0
    assert "Where is Paris?" in tokenizer.decode(text_turn["input_ids"][text_turn["attention_mask"].bool()])
    b0 = ds.load(2)  # 22.05 kHz -> 16 kHz, first speaker is the user, its reply is turn_1.txt
    assert b0["speech"].shape[0] == round(0.4 * 16_000) and b0["speaker_id"] == "A"
    assert summary.stats["skipped"] == {"path_outside_input": 1}
    assert ds.manifest[0]["group"] == "travel"


def test_strict_and_mismatched_rerun_are_refused(corpus, processed, tmp_path):
    root, _ = corpus
    with pytest.raises(UserError, match="--strict"):
        preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(tmp_path / "s"),
                                     strict=True))
    out, _ = processed
    with pytest.raises(UserError, match="other settings"):
        preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out),
                                     mini_batch_size=32))
    with pytest.raises(UserError, match="inside the input"):
        preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(root / "x")))
    again = preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out)))
    assert again.already_complete


def test_long_turn_is_split_into_30s_segments(tmp_path):
    root = tmp_path / "dd"
    folder = root / "data" / CROSS
    write_dialogue(folder, "cars_1_2", ["a long question", "a short answer"], seconds=31.0)
    out = tmp_path / "out"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out)))
    sample = open_dataset(out).load(0)
    assert sample["speech_lengths"].tolist() == [480_000, 16_000]
    assert int((sample["input_ids"] == SPEECH_TOKEN_INDEX).sum()) == 2


def test_skip_max_full_positions_and_user_speaker(corpus, processed, tmp_path):
    root, _ = corpus
    full_run = open_dataset(processed[0])
    conv_order = list(dict.fromkeys(e["conversation_id"] for e in full_run.index))
    out = tmp_path / "full"
    summary = preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out), skip=1,
                                           max_dialogues=1, speech_positions="full"))
    ds = open_dataset(out)
    assert summary.stats["dialogues"] == 1 and summary.stats["dialogues_found"] == 10
    assert {e["conversation_id"] for e in ds.index} == {conv_order[1]}  # books_9_5: the second in id order
    for entry in ds.index:
        s = ds.load(entry)
        assert entry["num_tokens"] == len(s["input_ids"]) - 1 + 300 and entry["num_tokens"] % 64 == 0
    out2 = tmp_path / "llm2"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out2), max_dialogues=1,
                                 user_speaker="LLM2"))
    ds2 = open_dataset(out2)
    assert [e["speaker_id"] for e in ds2.index] == ["LLM2"]  # LLM2's turn 1 + LLM1's turn 2; turn 3 has no reply
    reasons = [json.loads(line)["reason"] for line in (out2 / "errors.jsonl").read_text().splitlines()]
    assert reasons == ["no_user_turn", "no_reply"]


def test_hugging_face_cache_symlinks_are_inside(tmp_path):
    """snapshot folders link their files to ../../blobs: that is inside the cache repo, so it is accepted."""
    repo = tmp_path / "hub" / "datasets--SALT-Research--DeepDialogue-xtts"
    snapshot = repo / "snapshots" / "0a1b2c"
    seg = write_dialogue(snapshot / "data" / MINI, "cars_5_2", ["hello", "hi"])
    blobs = repo / "blobs"
    blobs.mkdir()
    for path in seg.iterdir():
        blob = blobs / f"sha-{path.name}"
        path.rename(blob)
        path.symlink_to(Path("../../../../../../blobs") / blob.name)
        assert path.resolve() == blob
    out = tmp_path / "out"
    summary = preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(snapshot), output=str(out)))
    assert summary.stats["samples"] == 1 and summary.stats["errors"] == 0


def test_cli_strict_exits_2_naming_the_file(corpus, tmp_path):
    from typer.testing import CliRunner

    from omnittt.cli.app import app

    root, _ = corpus
    done = CliRunner().invoke(app, ["preprocess", "deepdialogue", str(root), "--output", str(tmp_path / "o"),
                                    "--strict", "--workers", "1"])
    assert done.exit_code == 2
    assert "--strict" in done.output and "books_9_5" in done.output  # the first dialogue with a skip


def test_asr_needs_speech_in_the_conversations_layout(tmp_path):
    root = tmp_path / "convs"
    make_conversations(root)
    out = tmp_path / "out"
    preprocess(PreprocessOptions(source="conversations", input_dir=str(root), output=str(out), task="asr"))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    # conv_a: turn 1 is text only -> missing_audio, then after_hole
    assert [(e["conversation_id"], e["reason"]) for e in errors if e["conversation_id"] == "conv_a"] == [
        ("conv_a", "missing_audio"), ("conv_a", "after_hole"), ("conv_a", "after_hole")]
    ds = open_dataset(out)
    assert [e["conversation_id"] for e in ds.index].count("conv_b") == 4
    assert ds.settings["prefix_len"] == ds.load(0)["prefix_len"]


def test_cli_defaults_are_the_options_defaults():
    """The flags' defaults and PreprocessOptions' defaults are one set of values (the CLI shows them in --help)."""
    import dataclasses

    import typer

    from omnittt.cli.app import app

    command = typer.main.get_command(app).commands["preprocess"]
    cli = {p.name: p.default for p in command.params if not p.required}
    renamed = {"fmt": "format"}
    defaults = {f.name: f.default for f in dataclasses.fields(PreprocessOptions)}
    compared = 0
    for name, value in cli.items():
        key = renamed.get(name, name)
        if key in defaults and key != "workers":  # workers: the CLI default is all cores
            assert (str(value) if isinstance(value, Path) else value) == defaults[key], key
            compared += 1
    assert compared >= 12
