"""Fixtures shared by the validate, curriculum and dataset tests: datasets made once by the real preprocessor."""

from __future__ import annotations

from pathlib import Path

import pytest
from h6_fixtures import processed


@pytest.fixture(scope="session")
def h6_base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "h6_datasets"


@pytest.fixture(scope="session")
def data(h6_base) -> Path:
    return processed(h6_base, "synthetic", "pt")
