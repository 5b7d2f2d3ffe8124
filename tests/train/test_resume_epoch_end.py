"""A run whose last step fell on the last batch of an epoch (the quickstart's default run does) resumes and trains
on: the loader's position is then the end of that epoch, which must roll over to the next one rather than read as
an empty dataset (before the fix, `omnittt resume RUN --max-steps N` stopped at once and crashed re-saving the
checkpoint it had resumed from)."""

from __future__ import annotations

import json

from train_fixtures import tiny_settings

from omnittt.train.setup import resume_run, start_run


def test_a_run_that_ended_on_an_epochs_last_batch_resumes_and_trains_on(synthetic_data, tmp_path):
    run = tmp_path / "run"
    first = start_run(tiny_settings(synthetic_data, run, epochs=1, tbptt_turns=8)).trainer
    first.fit()
    assert first.loader.next_batch == len(first.loader.batch_plan(0))  # stopped on the epoch's last batch
    steps = first.step

    resumed = resume_run(str(run), {"max_steps": steps + 1}).trainer
    resumed.fit()
    assert resumed.step == steps + 1
    state = json.loads((run / "checkpoints" / f"step_{steps + 1}" / "trainer_state.json").read_text())
    assert state["step"] == steps + 1 and state["loader"]["epoch"] == 1
