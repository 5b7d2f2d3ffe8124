"""Shared fixtures. Everything is built offline: the default tokenizer, tiny models, generated audio."""

from __future__ import annotations

import os

import pytest

# Deterministic, comparable CPU numerics in every test process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from omnittt.core.tokenizer import build_default_tokenizer

    return build_default_tokenizer()
