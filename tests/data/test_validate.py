"""`omnittt validate`: clean on the preprocessor's output of every source; every check fails on a dataset broken
for it, naming the offending sample; a pickle payload is refused without executing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from h6_fixtures import copy_dataset, processed

from omnittt.data.validate import CHECKS, validate_dataset


@pytest.fixture(scope="session")
def clean_pt(data) -> Path:
    return data


@pytest.mark.parametrize("source,fmt,mode", [("synthetic", "pt", "trim"), ("deepdialogue", "arrow", "trim"),
                                             ("conversations", "pt", "trim"), ("conversations", "pt", "full")])
def test_clean_on_every_source(h6_base, source, fmt, mode):
    data = processed(h6_base, source, fmt, mode)
    report = validate_dataset(data, workers=1)
    failures = {name: check.offenders for name, check in report.checks.items() if check.failed}
    assert failures == {}
    warnings = [(name, o["item"]) for name, check in report.checks.items() for o in check.offenders]
    # The only warning anywhere: the deliberately long exchange of the conversations corpus is an outlier.
    assert warnings == ([("tokens", warnings[0][1])] if source == "conversations" else [])
    if warnings:
        assert "conv_long turn 0" in warnings[0][1]
        assert report.token_stats["outliers"] == 1
        assert sum(report.skipped_inputs.values()) >= 1  # the damaged wav, reported by preprocessing
    assert report.ok and report.format == fmt
    assert report.checked_samples == report.total_samples == len(json.loads((data / "index.json").read_text()))
    for name in CHECKS:  # every check really ran
        assert report.checks[name].passed > 0, name


def _index(data: Path) -> list[dict]:
    return json.loads((data / "index.json").read_text())


def _write_index(data: Path, index: list[dict]) -> None:
    (data / "index.json").write_text(json.dumps(index))


def _edit_sample(data: Path, sample_id: int, edit) -> str:
    entry = _index(data)[sample_id]
    path = data / entry["file_path"]
    sample = torch.load(path, weights_only=True)
    edit(sample)
    torch.save(sample, path)
    return entry["file_path"]


def _pick(data: Path, turn: int) -> int:
    """A sample id with the given turn number (a later one, so the first samples stay intact)."""
    return [e["sample_id"] for e in _index(data) if e["turn_number"] == turn][-1]


def _speech_sample(data: Path) -> int:
    return [e["sample_id"] for e in _index(data) if e["audio_duration_sec"] > 0][3]


def _user_position(sample: dict) -> int:
    """A text position inside the user turn (just after the placeholders' header)."""
    ids = sample["input_ids"]
    return int((ids == -200).nonzero()[0]) - 1


BREAKS = {
    # check: (which sample, how to break it)
    "format/missing key": ("format", lambda s: s.pop("labels")),
    "format/dtype": ("format", lambda s: s.__setitem__("input_ids", s["input_ids"].to(torch.int32))),
    "format/not mono": ("format", lambda s: s.__setitem__("speech", s["speech"].repeat(1, 2))),
    "format/other conversation": ("format", lambda s: s.__setitem__("conversation_id", "someone/else")),
    "audio/silent": ("audio", lambda s: s["speech"].zero_()),
    "audio/nan": ("audio", lambda s: s["speech"].__setitem__(5, float("nan"))),
    "audio/out of range": ("audio", lambda s: s["speech"].mul_(10.0)),
    "audio/lengths": ("audio", lambda s: s.__setitem__("speech_lengths", s["speech_lengths"] - 1)),
    "audio/8 kHz": ("audio", lambda s: (s.__setitem__("speech", s["speech"][::2].clone()),
                                        s.__setitem__("speech_lengths", (s["speech_lengths"] + 1) // 2))),
    "alignment/one pad short": ("alignment", lambda s: [s.__setitem__(k, s[k][:-1])
                                                        for k in ("input_ids", "labels", "attention_mask")]),
    "labels/none trained": ("labels", lambda s: s["labels"].fill_(-100)),
    "labels/user turn trained": ("labels", lambda s: s["labels"].__setitem__(
        _user_position(s), s["input_ids"][_user_position(s)])),
    "labels/padding trained": ("labels", lambda s: s["labels"].__setitem__(-1, s["input_ids"][-1])),
    "tokens/outside vocabulary": ("tokens", lambda s: s["input_ids"].__setitem__(_user_position(s), 10**6)),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_each_sample_check_names_the_broken_sample(clean_pt, tmp_path, case):
    check, edit = BREAKS[case]
    data = copy_dataset(clean_pt, tmp_path / "broken")
    sid = _speech_sample(data)
    rel = _edit_sample(data, sid, edit)
    report = validate_dataset(data, workers=1)
    failed = report.checks[check]
    assert failed.failed == 1, failed.offenders
    assert rel in failed.offenders[0]["item"] and f"sample {sid}," in failed.offenders[0]["item"]
    assert not report.ok


def test_pickle_payload_is_refused_and_never_runs(clean_pt, tmp_path):
    data = copy_dataset(clean_pt, tmp_path / "broken")
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    entry = _index(data)[2]
    torch.save({"speech": Payload()}, data / entry["file_path"])
    report = validate_dataset(data, workers=1)
    assert report.checks["format"].failed == 1
    offender = report.checks["format"].offenders[0]
    assert entry["file_path"] in offender["item"] and "refused" in offender["message"]
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(data / entry["file_path"], weights_only=False)
    assert marker.exists()


def test_structural_checks_name_the_offender(clean_pt, tmp_path):
    data = copy_dataset(clean_pt, tmp_path / "broken")
    index = _index(data)
    escape, missing, dup, turn = 1, 4, 7, _pick(data, 2)
    index[escape]["file_path"] = "../../outside.pt"
    (data / index[missing]["file_path"]).unlink()
    index[dup]["sample_id"] = index[dup - 1]["sample_id"]
    index[turn]["turn_number"] = 1  # the conversation now has turn 1 twice and no turn 2
    _write_index(data, index)
    link = 10  # a sample file that is a symlink to a file outside the dataset
    outside = tmp_path / "elsewhere.pt"
    (data / index[link]["file_path"]).rename(outside)
    (data / index[link]["file_path"]).symlink_to(outside)
    report = validate_dataset(data, workers=1)
    items = {o["item"]: o["message"] for o in report.checks["index"].offenders}
    assert any("../../outside.pt" in item and "inside the dataset" in msg for item, msg in items.items())
    assert any(index[missing]["file_path"] in item and "does not exist" in msg for item, msg in items.items())
    assert any(index[link]["file_path"] in item and "inside the dataset" in msg for item, msg in items.items())
    assert sum("appears 2 times" in msg for msg in items.values()) == 2
    conv = report.checks["conversations"].offenders
    assert len(conv) == 1 and index[turn]["conversation_id"] in conv[0]["item"]
    assert "duplicates [1]" in conv[0]["message"] and "missing [2]" in conv[0]["message"]
    # The escaping path is never loaded and the missing file is not reported again as a load failure; the
    # renumbered sample's file disagrees with its index entry.
    fmt = report.checks["format"].offenders
    assert len(fmt) == 1 and f"sample {turn}," in fmt[0]["item"] and "turn_number 2 != index 1" in fmt[0]["message"]


def test_settings_check(clean_pt, tmp_path):
    data = copy_dataset(clean_pt, tmp_path / "broken")
    stats = json.loads((data / "preprocessing_stats.json").read_text())
    del stats["settings"]["mini_batch_size"]
    stats["complete"] = False
    stats["samples"] += 1
    stats["settings"]["tokenizer_fingerprint"] = "0" * 64
    (data / "preprocessing_stats.json").write_text(json.dumps(stats))
    report = validate_dataset(data, workers=1)
    messages = " | ".join(o["message"] for o in report.checks["settings"].offenders)
    assert "mini_batch_size" in messages and "fingerprint" in messages and "did not finish" in messages
    assert "preprocessing_stats.json says" in report.checks["index"].offenders[0]["message"]
    assert report.checks["alignment"].skipped == report.total_samples  # nothing to align to


def test_manifest_disagreement(clean_pt, tmp_path):
    data = copy_dataset(clean_pt, tmp_path / "broken")
    lines = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    lines[2]["num_turns"] += 1
    (data / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = validate_dataset(data, workers=1)
    offenders = report.checks["conversations"].offenders
    assert len(offenders) == 1 and lines[2]["conversation_id"] in offenders[0]["item"]


def test_sample_size_is_seeded_and_workers_agree(clean_pt, tmp_path, monkeypatch):
    import omnittt.data.validate as validate

    monkeypatch.setattr(validate, "MIN_SAMPLES_PER_WORKER", 2)  # use the worker pool even on a tiny dataset
    data = copy_dataset(clean_pt, tmp_path / "broken")
    for sid in range(0, len(_index(data)), 3):
        _edit_sample(data, sid, lambda s: s["labels"].fill_(-100))
    one = validate_dataset(data, sample_size=12, seed=5, workers=1)
    again = validate_dataset(data, sample_size=12, seed=5, workers=2)
    other = validate_dataset(data, sample_size=12, seed=6, workers=1)
    assert one.checked_samples == 12 and one.checks["index"].passed == one.total_samples  # structure: all
    assert one.checks["labels"].offenders == again.checks["labels"].offenders
    assert one.checks["labels"].to_dict() == again.checks["labels"].to_dict()
    assert one.token_stats == again.token_stats
    assert one.checks["labels"].offenders != other.checks["labels"].offenders
    full = validate_dataset(data, workers=2)
    assert full.checks["labels"].failed == len(range(0, len(_index(data)), 3))


def test_cli_exit_codes_and_report(clean_pt, tmp_path):
    from typer.testing import CliRunner

    from omnittt.cli.app import app

    runner = CliRunner()
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["validate", str(clean_pt), "--output", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and set(report["checks"]) == set(CHECKS)
    as_option = tmp_path / "report_option.json"  # --data DIR is the same as the positional DATA
    result = runner.invoke(app, ["validate", "--data", str(clean_pt), "--output", str(as_option), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(as_option.read_text())["checks"] == report["checks"]
    data = copy_dataset(clean_pt, tmp_path / "broken")
    rel = _edit_sample(data, 3, lambda s: s["speech"].zero_())
    result = runner.invoke(app, ["validate", str(data), "--workers", "1"])
    assert result.exit_code == 1 and rel in re.sub(r"[\s│]", "", result.output)  # named, however wrapped
    result = runner.invoke(app, ["validate", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    clipped = copy_dataset(clean_pt, tmp_path / "clipped")  # a warning only: clean, unless --strict
    _edit_sample(clipped, 3, lambda s: s["speech"].clamp_(-0.01, 0.01).mul_(100.0))
    assert runner.invoke(app, ["validate", str(clipped), "-j", "1"]).exit_code == 0
    assert runner.invoke(app, ["validate", str(clipped), "-j", "1", "--strict"]).exit_code == 1


def test_alignment_uses_the_recorded_speech_positions(h6_base, tmp_path):
    """Positions are those the model sees: a `full` dataset (300 positions per segment) read as `trim` is
    misaligned, which text-token counting could never notice."""
    data = copy_dataset(processed(h6_base, "conversations", "pt", "full"), tmp_path / "relabelled")
    stats = json.loads((data / "preprocessing_stats.json").read_text())
    stats["settings"]["speech_positions"] = "trim"
    (data / "preprocessing_stats.json").write_text(json.dumps(stats))
    report = validate_dataset(data, workers=1)
    speech = [e for e in _index(data) if e["audio_duration_sec"] > 0]
    assert report.checks["alignment"].failed == len(speech) > 0
    assert report.checks["alignment"].passed == len(_index(data)) - len(speech)  # text-only exchanges still fit
