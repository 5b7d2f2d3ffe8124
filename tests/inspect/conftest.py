"""Builders of `metrics.jsonl` / `ttt_state.jsonl` lines in the documented schema (docs/jsonl_schemas.md), for the
reader and monitor tests. The model-backed tests write through the real `TTTStateLogger` instead."""

from __future__ import annotations

from typing import Any

import pytest

from omnittt.inspect.jsonl import JsonlWriter, dumps_line
from omnittt.inspect.schemas import METRICS_FILE, TTT_STATE_FILE


def metrics_line(step: int, loss: float = 2.0, time: float | None = None, **extra: Any) -> dict[str, Any]:
    record = {"schema": 1, "step": step, "time": 1000.0 + step if time is None else time, "loss": loss,
              "lr": 1e-4, "tokens_per_s": 800.0 + step, "grad_norm": 0.5, "stage": "8k",
              "total_steps": 100}
    record.update(extra)
    return record


def ttt_line(step: int, layer: int, w1: float = 1.0, w2: float = 2.0, dtype: str = "float32",
             **extra: Any) -> dict[str, Any]:
    record = {
        "schema": 1, "step": step, "time": 1000.0 + step, "layer": layer, "kind": "mlp", "source": "stats",
        "rows": 2, "norm": {"W1": w1, "b1": 0.1, "W2": w2, "b2": 0.2},
        "delta": {"W1": 0.01, "b1": 0.001, "W2": 0.02, "b2": 0.002},
        "dtype": {"W1": dtype, "b1": "float32", "W2": "float32", "b2": "float32"},
        "inner_loss_before": 0.5, "inner_loss_after": 0.4, "mean_lr": 0.01, "nan": 0, "inf": 0, "nonfinite": [],
    }
    record.update(extra)
    return record


class RunWriter:
    """Appends lines to a run directory the way a training process does."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = JsonlWriter(run_dir / METRICS_FILE)
        self.ttt = JsonlWriter(run_dir / TTT_STATE_FILE)

    def step(self, step: int, layers=(2, 3), time: float | None = None, **ttt_extra: Any) -> None:
        self.metrics.write(metrics_line(step, loss=3.0 / step, time=time))
        self.ttt.write_many([ttt_line(step, layer, w1=1.0 + 0.01 * step, **ttt_extra) for layer in layers])

    def partial_ttt(self, record: dict[str, Any], cut: int) -> str:
        """Write the first `cut` characters of a line (a writer caught mid-line); returns the rest."""
        text = dumps_line(record)
        with (self.run_dir / TTT_STATE_FILE).open("a") as handle:
            handle.write(text[:cut])
        return text[cut:]

    def append_raw_ttt(self, text: str) -> None:
        with (self.run_dir / TTT_STATE_FILE).open("a") as handle:
            handle.write(text)


@pytest.fixture
def run_writer(tmp_path):
    return RunWriter(tmp_path / "tiny-run")


class Lines:
    metrics = staticmethod(metrics_line)
    ttt = staticmethod(ttt_line)


@pytest.fixture
def lines():
    return Lines


TTT_LAYERS = (1, 2)


def build_tiny_ttt_model():
    """A real converted Llama (transformers' LlamaForCausalLM + H2's TTT layers), tiny and random."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from omnittt.core.ttt_llama import convert_llama_to_ttt

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = convert_llama_to_ttt(LlamaForCausalLM(config), ttt_layers=list(TTT_LAYERS), mini_batch_size=16)
    return model.eval()


@pytest.fixture
def tiny_ttt_model():
    import torch

    # tiny ops on a shared 2-core machine: a second thread only adds contention (10x slower under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build_tiny_ttt_model()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def ttt_turn():
    """Run one exchange of `tokens` positions through the model; returns the cache."""
    import torch

    def run(model, cache=None, tokens: int = 32, rows: int = 2, collect: bool = True, seed: int = 1):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (rows, tokens), generator=generator)
        cache = model.new_cache() if cache is None else cache
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True, collect_ttt_stats=collect)
        return cache

    return run
