"""Training fixtures: a small synthetic spoken-dialogue dataset (espeak-ng, preprocessed with mini-batch 16 so the
tiny model trains on little padding), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import make_dataset


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_data"), dialogues=9)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The tiny preset trained once on 60 synthetic dialogues (slow tier): the trainer, and the validation losses
    before and after training."""
    from train_fixtures import tiny_settings

    from omnittt.train.setup import start_run

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root, dialogues=60)
    trainer = start_run(tiny_settings(data, root / "run", max_steps=100, save_every=50, batch_size=2, tbptt_turns=4,
                                      lr=3e-3, warmup_steps=10, train="all", val_conversations=12)).trainer
    losses = {"start": trainer.validate()}
    trainer.fit()
    losses["end"] = trainer.validate()
    return trainer, losses
