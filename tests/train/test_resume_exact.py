"""Crash tests (slow tier): a real `omnittt train` subprocess dies at each checkpoint commit phase (fault injection)
or by a real SIGKILL, then `omnittt resume` finishes the run; the loss sequence equals the uninterrupted run's
(<= 1e-6 relative, CPU, one thread), and every checkpoint file loads with weights_only=True or as JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_fixtures import MINI_BATCH, tiny_settings

from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.faults import FAULT_ENV, FAULT_EXIT_CODE
from omnittt.train.run_dir import RunDir
from omnittt.train.setup import start_run

pytestmark = pytest.mark.slow
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


@pytest.fixture(scope="module")
def reference(synthetic_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    start_run(tiny_settings(synthetic_data, run, max_steps=MAX_STEPS, save_every=SAVE_EVERY,
                            keep_checkpoints=10)).trainer.fit()
    losses = _losses(run)
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    saved = [step for step, _ in RunDir(run).list_checkpoints()]
    assert len(saved) >= 3, saved  # checkpoints fall at batch ends: at least one between the first and the last
    return losses, saved


def _assert_same_losses(run_dir, reference):
    reference = reference[0]
    resumed = _losses(run_dir)
    assert sorted(resumed) == sorted(reference)
    for step, loss in reference.items():
        assert abs(resumed[step] - loss) <= 1e-6 * abs(loss), (step, resumed[step], loss)


def _assert_checkpoints_load_safely(run_dir):
    for _, path in RunDir(run_dir).list_checkpoints():
        for file in path.iterdir():
            if file.suffix == ".pt":
                torch.load(file, weights_only=True)
            elif file.suffix == ".json":
                json.loads(file.read_text())


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
    _assert_checkpoints_load_safely(run)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # temp folders cleaned


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
    _assert_checkpoints_load_safely(run)
