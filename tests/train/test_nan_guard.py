"""NaN/Inf guard in the real loop: a NaN injected into a TTT layer's runtime state is caught in that step (the
window is skipped and logged, nothing is stepped), training goes on, and no checkpoint ever holds it; too many in
a row stop the run with a clear message."""

from __future__ import annotations

import math

import pytest
import torch
from train_fixtures import tiny_settings

from omnittt.core.hf_compat import CACHE_ARG
from omnittt.inspect.fp32 import find_ttt_modules
from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.checkpoint import load_weights
from omnittt.train.guard import TrainingDivergedError
from omnittt.train.setup import start_run


def _poison_state_at(trainer, windows: set[int] | None):
    """Write NaN into the first TTT layer's carried W1 state during the given windows (None: every window)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    _, module = find_ttt_modules(model)[0]

    def hook(mod, args, kwargs, output):
        if windows is None or trainer.state.windows in windows:
            layer = kwargs[CACHE_ARG].layers[mod.layer_idx]
            layer.state = {**layer.state, "W1": layer.state["W1"] * float("nan")}

    return module.register_forward_hook(hook, with_kwargs=True)


def test_nan_in_ttt_state_is_caught_in_that_step_and_never_saved(synthetic_data, tmp_path):
    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=4, save_every=1)).trainer
    _poison_state_at(trainer, {1})  # the second window
    trainer.fit()
    lines = [r for r in read_jsonl(trainer.run.metrics_path) if r.get("event") is None]
    skipped = [r for r in lines if "skipped" in r]
    assert len(skipped) == 1, lines
    assert "state layer" in skipped[0]["skipped"] and "W1" in skipped[0]["skipped"]
    assert skipped[0]["loss"] is None  # written as null, never as a number
    assert skipped[0]["step"] == 2  # caught in the step it happened in (one good step before it)
    good = [r for r in lines if "skipped" not in r]
    assert [r["step"] for r in good] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in good)
    assert trainer.state.skipped == 1
    for _, path in trainer.run.list_checkpoints():
        assert all(bool(torch.isfinite(t).all()) for t in load_weights(path).values()), path


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(synthetic_data, tmp_path):
    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=4, save_every=1,
                                      max_nonfinite_steps=2)).trainer
    _poison_state_at(trainer, None)
    with pytest.raises(TrainingDivergedError, match="2 steps in a row had non-finite values"):
        trainer.fit()
    assert trainer.run.latest_checkpoint() is None and trainer.state.step == 0
