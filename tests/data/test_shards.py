"""Sharding across machines and `omnittt preprocess merge`: N shards merged equal one unsharded run (sample ids,
sample content hashes, index, manifest, errors, statistics); the merge refuses what cannot be merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from digests import sample_hashes
from fake_corpora import make_deepdialogue, write_dialogue
from source_corpora import make_commonvoice, make_librispeech
from typer.testing import CliRunner

from omnittt.data.merge import merge_datasets
from omnittt.data.preprocess import PreprocessOptions, preprocess, shard_block
from omnittt.data.sources import ConversationRef
from omnittt.data.store import open_dataset
from omnittt.data.validate import validate_dataset
from omnittt.errors import UserError

TIMING = ("elapsed_sec", "x_real_time", "resumed_from_dialogue", "merged_from", "elapsed_sec_merge")


def digest(out: Path) -> dict:
    ds = open_dataset(out)
    hashes = sample_hashes(ds)
    stats = {k: v for k, v in ds.stats.items() if k not in TIMING}
    return {"hashes": hashes, "index": ds.index, "manifest": ds.manifest, "stats": stats,
            "errors": (out / "errors.jsonl").read_text()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd") / "DeepDialogue-xtts"
    make_deepdialogue(root)
    return root


def _run(corpus: Path, out: Path, **kw) -> Path:
    preprocess(PreprocessOptions(source="deepdialogue", input_dir=str(corpus), output=str(out), **kw))
    return out


def test_shard_blocks_cover_the_input_once():
    for n in range(0, 23):
        refs = [ConversationRef(f"c{i:03d}", "") for i in range(n)]
        for shards in range(1, 6):
            blocks = [shard_block(refs, shards, i) for i in range(shards)]
            assert [r for b in blocks for r in b] == refs
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("fmt", ["pt", "arrow"])
def test_three_shards_merged_equal_one_unsharded_run(corpus, tmp_path, fmt):
    whole = _run(corpus, tmp_path / "whole", format=fmt, skip=1)
    shards = [_run(corpus, tmp_path / f"shard{i}", format=fmt, skip=1, num_shards=3, shard_index=i)
              for i in range(3)]
    sizes = [len(open_dataset(s).index) for s in shards]
    assert all(sizes) and sum(sizes) == len(open_dataset(whole).index)
    assert open_dataset(shards[1]).settings["shard_index"] == 1
    merged = tmp_path / "merged"
    summary = merge_datasets([shards[2], shards[0], shards[1]], merged)  # any order: shard order wins
    assert summary.shards and summary.inputs == [s.resolve() for s in shards]
    got, want = digest(merged), digest(whole)
    assert got["hashes"] == want["hashes"]
    assert got == want
    assert "num_shards" not in open_dataset(merged).settings
    assert validate_dataset(merged, workers=1).ok


def test_merge_refuses_what_cannot_be_merged(corpus, tmp_path):
    shards = [_run(corpus, tmp_path / f"s{i}", num_shards=2, shard_index=i, max_dialogues=4) for i in range(2)]
    with pytest.raises(UserError, match="shard 1 of 2 missing"):
        merge_datasets([shards[0]], tmp_path / "m1")
    with pytest.raises(UserError, match="both shard 0"):
        merge_datasets([shards[0], shards[0], shards[1]], tmp_path / "m2")
    odd = _run(corpus, tmp_path / "odd1", num_shards=2, shard_index=1, max_dialogues=5)
    with pytest.raises(UserError, match="different --max-dialogues"):
        merge_datasets([shards[0], odd], tmp_path / "m6")
    grown = tmp_path / "grown" / "DeepDialogue-xtts"  # the same corpus on another machine, one dialogue more
    shutil.copytree(corpus, grown)
    write_dialogue(grown / "data" / "dialogues_phi4-mini", "zoo_1_2", ["hi", "hello"])
    other_input = _run(grown, tmp_path / "grown1", num_shards=2, shard_index=1, max_dialogues=4)
    with pytest.raises(UserError, match="saw different inputs"):
        merge_datasets([shards[0], other_input], tmp_path / "m7")
    other = _run(corpus, tmp_path / "mbs32", max_dialogues=2, mini_batch_size=32)
    first = _run(corpus, tmp_path / "mbs64", max_dialogues=2)
    with pytest.raises(UserError, match="mini_batch_size is 32"):
        merge_datasets([first, other], tmp_path / "m3")
    with pytest.raises(UserError, match="is in both"):
        merge_datasets([first, first], tmp_path / "m4")
    with pytest.raises(UserError, match="mix shards"):
        merge_datasets([first, shards[0], shards[1]], tmp_path / "m5")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        merge_datasets(shards, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cli_shards_and_merge_of_two_sources(tmp_path):
    """Two ASR corpora preprocessed separately (one of them in 2 shards through the CLI), then merged in the
    order given: ids follow that order, settings that differ (the source) are kept per input."""
    from omnittt.cli.app import app

    make_librispeech(tmp_path / "ls")
    make_commonvoice(tmp_path)
    runner = CliRunner()
    for i in range(2):
        result = runner.invoke(app, ["preprocess", "librispeech", str(tmp_path / "ls"), "--output",
                                     str(tmp_path / f"ls{i}"), "--num-shards", "2", "--shard-index", str(i), "-j", "1"])
        assert result.exit_code == 0, result.output
        assert f"{i} of 2:" in result.output
    result = runner.invoke(app, ["preprocess", "merge", str(tmp_path / "ls1"), str(tmp_path / "ls0"),
                                 "--output", str(tmp_path / "ls")])
    assert result.exit_code == 2 and "already exists" in result.output  # the corpus folder itself
    result = runner.invoke(app, ["preprocess", "merge", str(tmp_path / "ls1"), str(tmp_path / "ls0"),
                                 "--output", str(tmp_path / "ls_all")])
    assert result.exit_code == 0, result.output
    assert "2 shards" in result.output
    result = runner.invoke(app, ["preprocess", "commonvoice", str(tmp_path / "cv-corpus-17.0"), "--output",
                                 str(tmp_path / "cv"), "-j", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["preprocess", "merge", str(tmp_path / "cv"), str(tmp_path / "ls_all"),
                                 "--output", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    both, cv, ls = (open_dataset(tmp_path / name) for name in ("both", "cv", "ls_all"))
    assert [e["conversation_id"] for e in both.index] == [e["conversation_id"] for e in cv.index + ls.index]
    assert [e["sample_id"] for e in both.index] == list(range(len(both.index)))
    assert both.settings["source"] == ["commonvoice", "librispeech"]
    assert both.stats["source"] == "commonvoice+librispeech"
    errors = [json.loads(line) for line in (tmp_path / "both" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == cv.stats["errors"] + ls.stats["errors"] > 0
    assert validate_dataset(tmp_path / "both", workers=1).ok
