"""Exact resume. Default tier: a run copied as it stood after its first checkpoint (what a crash leaves) resumes in
process to the same losses, final weights, optimizer and schedule state, RNG state and trainer state as the
uninterrupted run. Slow tier (crash tests): a real `omnittt train` subprocess dies at each checkpoint commit phase
(fault injection) or by a real SIGKILL, then `omnittt resume` finishes the run; the loss sequence, the final weights,
optimizer, schedule and RNG states equal the uninterrupted run's (<= 1e-6 relative for floats, exactly for
integers and RNG states; CPU, one thread), and every checkpoint file loads with weights_only=True or as JSON."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_fixtures import MINI_BATCH, tiny_settings

from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    SCHEDULER_FILE,
    load_torch_state,
    load_weights,
    read_trainer_state,
)
from omnittt.train.faults import FAULT_ENV, FAULT_EXIT_CODE
from omnittt.train.run_dir import RunDir
from omnittt.train.setup import resume_run, start_run

MAX_STEPS, SAVE_EVERY = 8, 2
CLI_FLAGS = ["--preset", "tiny", "--stage", "none", "--ttt-mini-batch-size", str(MINI_BATCH), "--batch-size", "2",
             "--tbptt-turns", "2", "--lr", "3e-3", "--set", "warmup_steps=2", "--set", "keep_checkpoints=10",
             "--num-threads", "1", "--max-steps", str(MAX_STEPS), "--save-every", str(SAVE_EVERY)]


def _cli(*args, fault: str | None = None, wait: bool = True):
    env = {**os.environ, "COLUMNS": "120"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "omnittt", *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") is None}


def _reference_run(data, run, max_steps=MAX_STEPS, save_every=SAVE_EVERY):
    start_run(tiny_settings(data, run, max_steps=max_steps, save_every=save_every,
                            keep_checkpoints=10)).trainer.fit()
    losses = _losses(run)
    assert sorted(losses) == list(range(1, max_steps + 1))
    saved = [step for step, _ in RunDir(run).list_checkpoints()]
    return losses, saved, run


@pytest.fixture(scope="module")
def reference(synthetic_data, tmp_path_factory):
    reference = _reference_run(synthetic_data, tmp_path_factory.mktemp("reference") / "run")
    assert len(reference[1]) >= 3, reference[1]  # checkpoints fall at batch ends: one between the first and last
    return reference


def _assert_same_losses(run_dir, reference):
    reference = reference[0]
    resumed = _losses(run_dir)
    assert sorted(resumed) == sorted(reference)
    for step, loss in reference.items():
        assert abs(resumed[step] - loss) <= 1e-6 * abs(loss), (step, resumed[step], loss)


def _assert_same(a, b, where: str, rel: float) -> None:
    """`a` equals `b` through nested dicts / lists / tuples: floating tensors and floats within `rel` of the
    largest magnitude (0: bitwise), everything else (integer tensors such as RNG states, ints, strings) exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}", rel)
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]", rel)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point() and rel:
            scale = max(b.abs().max().item(), 1e-12) if b.numel() else 1.0
            assert (a - b).abs().max().item() <= rel * scale if a.numel() else True, where
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, float) and rel:
        assert abs(a - b) <= rel * max(abs(b), 1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _assert_same_final_state(run_dir, reference_run, rel: float = 1e-6) -> None:
    """The last checkpoint of the resumed run holds what the uninterrupted run's last checkpoint holds: weights,
    optimizer state (moments, step counts, groups), schedule, RNG state (torch, Python, NumPy) and trainer state."""
    resumed, original = RunDir(run_dir).latest_checkpoint(), RunDir(reference_run).latest_checkpoint()
    assert resumed.name == original.name
    _assert_same(load_weights(resumed), load_weights(original), "weights", rel)
    for name in (OPTIMIZER_FILE, SCHEDULER_FILE):
        _assert_same(load_torch_state(resumed, name), load_torch_state(original, name), name, rel)
    _assert_same(load_torch_state(resumed, RNG_FILE), load_torch_state(original, RNG_FILE), RNG_FILE, 0)
    _assert_same(read_trainer_state(resumed), read_trainer_state(original), "trainer_state", 0)


def test_resume_from_a_mid_run_checkpoint_is_exact(synthetic_data, tmp_path):
    """Default tier: the run directory as a crash after its first checkpoint leaves it (its later checkpoints and
    `latest` gone, its logs longer than the checkpoint), resumed in this process."""
    reference = _reference_run(synthetic_data, tmp_path / "reference", max_steps=4, save_every=1)
    run = tmp_path / "run"
    shutil.copytree(reference[2], run)
    middle = reference[1][0]  # checkpoints fall at batch ends: the first one, with steps after it
    assert 0 < middle < 4, reference[1]
    for step, path in RunDir(run).list_checkpoints():
        if step > middle:
            shutil.rmtree(path)
    RunDir(run).write_latest(RunDir(run).checkpoint_dir(middle))
    assert max(_losses(run)) == 4  # the logs ran on past the checkpoint: resume drops those lines

    prepared = resume_run(str(run))
    assert prepared.trainer.state.step == middle
    prepared.trainer.fit()
    _assert_same_losses(run, reference)
    _assert_same_final_state(run, reference[2], rel=0)  # one process, one thread: bitwise


def _assert_checkpoints_load_safely(run_dir):
    for _, path in RunDir(run_dir).list_checkpoints():
        for file in path.iterdir():
            if file.suffix == ".pt":
                torch.load(file, weights_only=True)
            elif file.suffix == ".json":
                json.loads(file.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["checkpoint:after_temp_write", "checkpoint:after_rename",
                                   "checkpoint:after_latest"])
def test_crash_in_each_checkpoint_phase_then_resume_is_exact(synthetic_data, tmp_path, reference, phase):
    run = tmp_path / "run"
    crash_at = reference[1][1]  # the second checkpoint: one committed checkpoint exists before it
    crashed = _cli("train", "--data", str(synthetic_data), "--run", str(run), *CLI_FLAGS, fault=f"{phase}@{crash_at}")
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr[-2000:]
    resumed = _cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_losses(run, reference)
    _assert_same_final_state(run, reference[2])
    _assert_checkpoints_load_safely(run)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # temp folders cleaned


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_exact(synthetic_data, tmp_path, reference):
    run = tmp_path / "run"
    proc = _cli("train", "--data", str(synthetic_data), "--run", str(run), *CLI_FLAGS, wait=False)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:  # kill once a checkpoint is committed and a step
            if latest.exists():  # past it has been logged: the kill lands mid-training, between checkpoints
                committed = int(latest.read_text().strip().removeprefix("step_"))
                if max(_losses(run), default=0) > committed:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert max(_losses(run)) < MAX_STEPS
    resumed = _cli("resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_losses(run, reference)
    _assert_same_final_state(run, reference[2])
    _assert_checkpoints_load_safely(run)
