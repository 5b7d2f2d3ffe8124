"""Crash tests: a preprocess run killed at any phase, then rerun, ends with exactly the samples (ids and
content hashes) and index files of an uninterrupted run. Faults are injected with OMNITTT_FAULT_AT; one test
uses a real SIGKILL from the fault point, the slow one a SIGKILL from outside at an arbitrary moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from digests import sample_hashes
from fake_corpora import make_deepdialogue, write_dialogue

from omnittt.data.preprocess import InjectedFault, PreprocessOptions, preprocess
from omnittt.data.store import open_dataset


def digest(out: Path) -> dict:
    """Everything a rerun must reproduce: per sample id, a hash of its content; the index, manifest and
    errors (paths in the index included)."""
    ds = open_dataset(out)
    hashes = sample_hashes(ds)
    errors = (out / "errors.jsonl").read_text()
    stats = {k: v for k, v in ds.stats.items() if k not in ("elapsed_sec", "x_real_time", "resumed_from_dialogue")}
    files = sorted(p.relative_to(out).as_posix() for p in (out / "samples").rglob("*") if p.is_file())
    return {"hashes": hashes, "index": ds.index, "manifest": ds.manifest, "errors": errors, "stats": stats,
            "files": files}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "DeepDialogue-xtts"
    make_deepdialogue(root)
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "processed"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(corpus), output=str(out)))
    ref = digest(out)
    assert len(ref["hashes"]) >= 10
    return ref


def _options(corpus: Path, out: Path, **kw) -> PreprocessOptions:
    return PreprocessOptions(source="deepdialogue", input_dir=str(corpus), output=str(out), **kw)


@pytest.mark.parametrize("faults", ["sample@3", "rename@5", "journal@2", "finalize@1", "finalize@3",
                                    "sample@1,journal@4"])
def test_rerun_after_injected_fault_equals_uninterrupted(corpus, reference, tmp_path, monkeypatch, faults):
    out = tmp_path / "processed"
    for spec in faults.split(","):  # one fault per run, then a clean rerun
        monkeypatch.setenv("OMNITTT_FAULT_AT", spec)
        with pytest.raises(InjectedFault):
            preprocess(_options(corpus, out))
        assert not (out / "index.json").exists()
    monkeypatch.delenv("OMNITTT_FAULT_AT")
    summary = preprocess(_options(corpus, out))
    if not faults.startswith("finalize"):
        assert summary.stats["resumed_from_dialogue"] > 0
    assert digest(out) == reference


def test_torn_journal_line_is_dropped(corpus, reference, tmp_path, monkeypatch):
    out = tmp_path / "processed"
    monkeypatch.setenv("OMNITTT_FAULT_AT", "journal@3")
    with pytest.raises(InjectedFault):
        preprocess(_options(corpus, out))
    journal = (out / ".preprocess" / "journal.jsonl").read_bytes()
    assert not journal.endswith(b"\n")  # the fault left half a line
    monkeypatch.delenv("OMNITTT_FAULT_AT")
    preprocess(_options(corpus, out, workers=2))
    assert digest(out) == reference


def _run_cli(corpus: Path, out: Path, env: dict, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "omnittt", "preprocess", "deepdialogue", str(corpus), "--output", str(out),
           "--workers", env.pop("WORKERS", "1")]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **popen)


def test_sigkill_between_temp_write_and_rename(corpus, reference, tmp_path):
    """A real SIGKILL at the fault point: the temp file of a sample stays behind, the rerun cleans it up."""
    out = tmp_path / "processed"
    proc = _run_cli(corpus, out, {"OMNITTT_FAULT_AT": "rename@6", "OMNITTT_FAULT_MODE": "kill"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert list((out / "samples").glob("*/.*.tmp")), "the kill should leave a temp file"
    preprocess(_options(corpus, out))
    assert not list(out.rglob("*.tmp"))
    assert digest(out) == reference


@pytest.mark.slow
def test_sigkill_from_outside_at_any_moment(tmp_path):
    """SIGKILL of the whole process group (workers included) while it runs, at a moment it does not choose."""
    corpus = tmp_path / "DeepDialogue-xtts"
    folder = corpus / "data" / "dialogues_llama3-8B"
    for i in range(60):
        write_dialogue(folder, f"cars_{i}_6", [f"turn {t} of dialogue {i}" for t in range(6)], seconds=2.0)
    ref_out = tmp_path / "reference"
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(corpus), output=str(ref_out)))
    reference = digest(ref_out)

    out = tmp_path / "processed"
    proc = _run_cli(corpus, out, {"WORKERS": "2"}, start_new_session=True)
    journal = out / ".preprocess" / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        if lines >= 12 or proc.poll() is not None:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "index.json").exists()
    summary = preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(corpus), output=str(out)))
    assert summary.stats["resumed_from_dialogue"] >= 11
    assert digest(out) == reference


def test_killed_before_the_first_journal_line(corpus, reference, tmp_path):
    """A run killed after it made its folders but before the journal header: the rerun starts fresh and
    replaces whatever tokenizer folder was left (it might come from other flags)."""
    out = tmp_path / "processed"
    (out / ".preprocess").mkdir(parents=True)
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / ".index.json.abc.tmp").write_text("half")
    preprocess(_options(corpus, out))
    assert digest(out) == reference
    assert json.loads((out / "tokenizer" / "tokenizer.json").read_text()) != {}
    assert not list(out.glob("*.tmp"))
