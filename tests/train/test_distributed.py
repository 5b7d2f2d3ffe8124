"""Two training processes on CPU (gloo) through `omnittt train --num-processes 2` (accelerate launch): disjoint
conversations per step, one run directory written by the main process, all-pad windows where one process's batch
is shorter, and a checkpoint that continues in one process with `omnittt resume`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from train_fixtures import MINI_BATCH
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.data.dataset import ConversationDataset, ConversationLoader
from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.distributed import rescale_loader_state

runner = CliRunner()
TBPTT = 2


def _plan(data, num_replicas: int, rank: int) -> tuple[list[list[str]], ConversationDataset]:
    """Conversation ids of each batch of epoch 0 as the trainer's loader orders them (seed 0, shuffled)."""
    dataset = ConversationDataset(data, stage=None)
    loader = ConversationLoader(dataset, batch_size=1, shuffle=True, seed=0, num_replicas=num_replicas, rank=rank,
                                compute_features=False, prefetch=False)
    return [[dataset[i].conversation_id for i in batch] for batch in loader.batch_plan(0)], dataset


def test_rescaled_loader_position_counts_batches_over_all_processes():
    state = {"epoch": 1, "next_batch": 3, "num_replicas": 2}
    assert rescale_loader_state(state, 1) == {"epoch": 1, "next_batch": 6, "num_replicas": 1}
    assert rescale_loader_state(state, 3)["next_batch"] == 2
    with pytest.raises(Exception, match="cannot split evenly"):
        rescale_loader_state(state, 4)


def test_two_cpu_processes_train_disjoint_conversations_and_resume_in_one(synthetic_data, tmp_path):
    run = tmp_path / "run"
    plans = [_plan(synthetic_data, 2, rank)[0] for rank in (0, 1)]
    single, dataset = _plan(synthetic_data, 1, 0)
    exchanges = {conv.conversation_id: conv.num_exchanges for conv in dataset.conversations}
    # one epoch: batch pair i runs as many windows as the longer of the two processes' batches
    windows = [[math.ceil(exchanges[batch[0]] / TBPTT) for batch in plan] for plan in plans]
    steps = sum(max(pair) for pair in zip(*windows, strict=True))
    args = ["train", "--preset", "tiny", "--data", str(synthetic_data), "--run", str(run), "--stage", "none",
            "--ttt-mini-batch-size", str(MINI_BATCH), "--batch-size", "1", "--tbptt-turns", str(TBPTT),
            "--save-every", "1000", "--num-threads", "1", "--num-processes", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    records = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # one line per step: the main process's
    position = 0
    for i, (w0, w1) in enumerate(zip(*windows, strict=True)):
        ids = {plans[0][i][0], plans[1][i][0]}
        assert len(ids) == 2  # the two processes never train the same conversation
        for record in records[position:position + min(w0, w1)]:
            assert set(record["conversation_ids"]) == ids and record["turns"]
        # past the shorter batch's end that process runs all-pad windows: only the other's conversation
        longer = plans[0][i][0] if w0 > w1 else plans[1][i][0]
        for record in records[position + min(w0, w1):position + max(w0, w1)]:
            assert record["conversation_ids"] == [longer]
        position += max(w0, w1)
    assert any(w0 != w1 for w0, w1 in zip(*windows, strict=True))  # the data did exercise the all-pad windows
    trained = {cid for r in records for cid in r["conversation_ids"]}
    assert trained == {batch[0] for plan in plans for batch in plan}

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["num_processes"] == 2 and config["total_steps"] == steps
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == steps and state["loader"]["num_replicas"] == 2
    for pt in checkpoint.glob("*.pt"):
        torch.load(pt, weights_only=True)

    # one process continues from the consolidated checkpoint: after 2 x 4 batches, the one-process order's
    # 9th batch (the conversation two processes left out to keep their batch counts equal)
    assert len(single) == 2 * len(plans[0]) + 1
    resumed = runner.invoke(app, ["resume", str(run), "--max-steps", str(steps + 1)])
    assert resumed.exit_code == 0, resumed.output
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None]
    assert [r["step"] for r in records] == list(range(1, steps + 2))
    assert records[-1]["conversation_ids"] == single[-1] and math.isfinite(records[-1]["loss"])


def test_a_user_error_in_the_processes_is_one_line_and_exit_2(synthetic_data, tmp_path):
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(synthetic_data), "--run",
                                 str(tmp_path / "run"), "--stage", "none", "--max-steps", "1",
                                 "--num-processes", "2"])  # the tiny preset's b is 64, the data's 16
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"mini-batch size {MINI_BATCH}" in lines[0], result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_processes_step_like_one_process_accumulating_both_windows(synthetic_data, tmp_path):
    """Data parallel = gradient accumulation over the same windows: a step of 2 processes on global batches 0
    and 1 gives the weights and loss of 1 process accumulating 2 windows over those batches (every conversation
    fits one window here)."""
    from train_fixtures import tiny_settings

    from omnittt.train.checkpoint import load_weights
    from omnittt.train.setup import start_run

    common = ["--preset", "tiny", "--data", str(synthetic_data), "--stage", "none", "--ttt-mini-batch-size",
              str(MINI_BATCH), "--batch-size", "1", "--tbptt-turns", "32", "--max-steps", "1", "--num-threads", "1",
              "--lr", "3e-3", "--set", "warmup_steps=0"]
    result = runner.invoke(app, ["train", *common, "--run", str(tmp_path / "two"), "--num-processes", "2"])
    assert result.exit_code == 0, result.output
    one = start_run(tiny_settings(synthetic_data, tmp_path / "one", batch_size=1, tbptt_turns=32, max_steps=1,
                                  lr=3e-3, warmup_steps=0, gradient_accumulation=2)).trainer
    one.fit()

    def last(run):
        return [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") is None][-1]

    two_record, one_record = last(tmp_path / "two"), last(tmp_path / "one")
    assert two_record["conversation_ids"] == one_record["conversation_ids"]
    assert two_record["loss"] == pytest.approx(one_record["loss"], rel=1e-6)
    # the gradient's scale (Adam's first step hides it in the weights): a mean over processes, not a sum
    assert two_record["grad_norm"] == pytest.approx(one_record["grad_norm"], rel=1e-5)
    weights = [load_weights(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip())
               for run in (tmp_path / "two", tmp_path / "one")]
    start = start_run(tiny_settings(synthetic_data, tmp_path / "init", max_steps=1)).trainer.model.state_dict()
    changed = [name for name, tensor in weights[1].items() if not torch.equal(tensor, start[name])]
    assert changed  # the step moved the trained weights, so equal weights say the two steps agree
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-5, atol=1e-6)
