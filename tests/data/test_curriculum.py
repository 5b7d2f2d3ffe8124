"""The stage table, the scheduler, session packing and `omnittt curriculum`, checked against counts made
directly from the sample files and the manifest."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from omnittt.core.speech import padded_positions, sample_positions
from omnittt.data.curriculum import STAGES, Stage, get_stage, previous_stage_name
from omnittt.data.dataset import plan_stages
from omnittt.errors import UserError

SMALL = (Stage("s1", 300, 600, 1e-4), Stage("s2", 600, 1200, 5e-5), Stage("s3", 1200, 2400, 2e-5))


@pytest.fixture(scope="session")
def truth(data) -> dict:
    """Counted straight from the files: per conversation its group, positions, positions without its
    prefix (exchange 0 re-padded), audio seconds."""
    index = json.loads((data / "index.json").read_text())
    manifest = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    mbs = json.loads((data / "preprocessing_stats.json").read_text())["settings"]["mini_batch_size"]
    convs: dict[str, dict] = {m["conversation_id"]: {"group": m["group"], "positions": 0, "stripped": 0,
                                                      "seconds": 0.0} for m in manifest}
    for entry in index:
        sample = torch.load(data / entry["file_path"], weights_only=True)
        lengths = sample["speech_lengths"].tolist()
        positions = sample_positions(len(sample["input_ids"]), lengths)
        conv = convs[sample["conversation_id"]]
        conv["positions"] += positions
        conv["seconds"] += len(sample["speech"]) / 16000
        if sample["turn_number"] == 0:
            real = int(sample["attention_mask"].sum())
            positions = padded_positions(sample_positions(real - sample["prefix_len"], lengths), mbs)
        conv["stripped"] += positions
    return convs


def test_stage_table_is_the_one_place():
    assert [s.name for s in STAGES] == ["8k", "16k", "32k", "64k"]
    assert [s.max_positions for s in STAGES] == [8192, 16384, 32768, 65536]
    for stage, nxt in zip(STAGES, STAGES[1:], strict=False):
        assert stage.min_positions < stage.max_positions == nxt.min_positions  # no gaps between stages
        assert 2 * stage.min_positions <= stage.max_positions  # two short conversations always fit together
        assert nxt.learning_rate < stage.learning_rate
    with pytest.raises(UserError, match="unknown curriculum stage"):
        get_stage("128k")


def test_each_stage_continues_from_the_one_before():
    assert [previous_stage_name(s.name) for s in STAGES] == [None, "8k", "16k", "32k"]
    assert previous_stage_name("128k") is None
    assert previous_stage_name("s2", SMALL) == "s1" and previous_stage_name("s2") is None


def test_stage_plans_match_counts_from_the_files(data, truth):
    plans = plan_stages(data, SMALL)
    assert plans == plan_stages(data, SMALL)  # deterministic
    used_anywhere = 0
    for plan in plans:
        stage = plan.stage
        accounted = Counter()
        for item in plan.items:
            sources = item.source_conversation_ids
            accounted.update(sources)
            assert len({truth[cid]["group"] for cid in sources}) == 1 == len({item.group})  # never crosses groups
            assert item.group == truth[sources[0]]["group"]
            expected = truth[sources[0]]["positions"] + sum(truth[cid]["stripped"] for cid in sources[1:])
            assert item.num_positions == expected and stage.contains(expected)
            assert item.duration_sec == pytest.approx(sum(truth[cid]["seconds"] for cid in sources), abs=1e-3)
            assert item.is_session == (len(sources) > 1)
            if not item.is_session:
                assert stage.contains(truth[sources[0]]["positions"])
            else:  # only conversations shorter than the stage are packed, in id order
                assert all(truth[cid]["positions"] < stage.min_positions for cid in sources)
                assert list(sources) == sorted(sources)
        accounted.update(plan.too_long)
        accounted.update(plan.leftover)
        assert accounted == Counter(set(truth))  # every conversation exactly once
        assert sorted(plan.too_long) == sorted(c for c, t in truth.items() if t["positions"] > stage.max_positions)
        whole = sum(1 for t in truth.values() if stage.contains(t["positions"]))
        assert len(plan.items) - plan.num_sessions == whole
        used_anywhere += plan.num_sessions
    assert used_anywhere > 0  # the fixture really exercises packing


def test_cli_table_write_and_empty_stages(data, truth, tmp_path):
    from typer.testing import CliRunner

    from omnittt.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["curriculum", str(data)], terminal_width=200)
    assert result.exit_code == 0, result.output
    # The fixture's groups hold about a thousand positions each: every default stage is empty, and says so.
    assert result.output.count("is empty") == 4 and "Fix:" in result.output
    out = tmp_path / "8k.jsonl"
    result = runner.invoke(app, ["curriculum", str(data), "--stage", "8k", "--write", str(out)])
    assert result.exit_code == 0 and out.read_text() == ""
    result = runner.invoke(app, ["curriculum", str(data), "--write", str(out)])
    assert result.exit_code == 2 and "--stage" in result.output


def test_data_is_an_option_and_the_positional_form_still_works(data, tmp_path):
    from typer.testing import CliRunner

    from omnittt.cli.app import app

    runner = CliRunner()
    as_option = runner.invoke(app, ["curriculum", "--data", str(data)], terminal_width=200)
    as_argument = runner.invoke(app, ["curriculum", str(data)], terminal_width=200)
    assert as_option.exit_code == 0, as_option.output
    assert as_option.output == as_argument.output
    two = runner.invoke(app, ["curriculum", str(data), "--data", str(tmp_path)])
    assert two.exit_code == 2 and "two datasets" in two.output


def test_write_lists_a_stage(data, truth, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import omnittt.data.curriculum as curriculum
    from omnittt.cli.app import app

    # The CLI reads THE stage table; point it at small stages to get a non-empty list from the fixture.
    monkeypatch.setattr(curriculum, "STAGES", SMALL)
    out = tmp_path / "s2.jsonl"
    result = CliRunner().invoke(app, ["curriculum", str(data), "--stage", "s2", "--write", str(out)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(600 <= row["num_positions"] <= 1200 for row in rows)
    for row in rows:
        src = row["source_conversation_ids"]
        assert row["num_positions"] == truth[src[0]]["positions"] + sum(truth[c]["stripped"] for c in src[1:])
    total = sum(row["num_positions"] for row in rows)
    assert f"{total:,}" in result.output
