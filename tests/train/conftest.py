"""Training fixtures: a small synthetic spoken-dialogue dataset (espeak-ng, preprocessed with mini-batch 16 so the
tiny model trains on little padding), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import make_dataset


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_data"), dialogues=9)
