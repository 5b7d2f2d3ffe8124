"""TTTCache: per-row reset, end_turn, detach, beam-search row operations over the pending mini-batch."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnittt.core.ttt_cache import TTTCache, TTTCacheLayer
from omnittt.core.ttt_llama import convert_llama_to_ttt

pytestmark = pytest.mark.usefixtures("one_thread")

B = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    return convert_llama_to_ttt(LlamaForCausalLM(config).eval(), [1, 2], mini_batch_size=B).eval()


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= tol


def test_reset_of_one_row_restarts_that_row_only(model):
    first, second = ids(2, 2 * B, seed=1), ids(2, 11, seed=2)
    with torch.no_grad():
        cache = TTTCache(model.config)
        model(first, past_key_values=cache)
        cache.reset(1)
        out = model(second, past_key_values=cache).logits
        fresh = model(second[1:]).logits
        kept = TTTCache(model.config)
        model(first, past_key_values=kept)
        continued = model(second, past_key_values=kept).logits
    assert close(out[1], fresh[0]) and close(out[0], continued[0])
    assert cache.stream_position.tolist() == [2 * B + 11, 11]
    assert cache.real_tokens.tolist() == [2 * B + 11, 11]


def test_reset_inside_a_mini_batch_is_refused_and_full_reset_starts_over(model):
    tokens = ids(2, 5)
    with torch.no_grad():
        cache = TTTCache(model.config)
        model(tokens, past_key_values=cache)
        with pytest.raises(ValueError, match="mini-batch boundary"):
            cache.reset([0])
        cache.reset()
        assert cache.get_seq_length() == 0 and cache.stream_position is None
        assert all(layer.state is None for _, layer in cache.ttt_layers())
        again = model(tokens, past_key_values=cache).logits
    assert close(again, model(tokens).logits)


def test_end_turn_commits_and_aligns_the_stream(model):
    with torch.no_grad():
        cache = TTTCache(model.config)
        model(ids(1, 11), past_key_values=cache)
        _, layer = next(cache.ttt_layers())
        state, grads, eta = dict(layer.state), dict(layer.grads), layer.pending_eta
        cache.end_turn()
    assert layer.grads is None and layer.pending_eta is None
    assert cache.stream_position.tolist() == [2 * B] and cache.get_seq_length() == 11
    for key in state:
        assert torch.equal(layer.state[key], state[key] - eta.view(-1, 1, 1, 1) * grads[key])
    committed = dict(layer.state)
    cache.end_turn()  # on a boundary: nothing to commit, nothing to advance
    assert cache.stream_position.tolist() == [2 * B]
    assert all(torch.equal(layer.state[k], committed[k]) for k in committed)


def test_detach_cuts_every_layer(model):
    cache = TTTCache(model.config)
    model(ids(2, 13), past_key_values=cache)
    ttt, kv = [layer for _, layer in cache.ttt_layers()], [cache.layers[0]]
    assert ttt[0].state["W1"].grad_fn is not None and ttt[0].grads["W1"].grad_fn is not None
    assert kv[0].keys.grad_fn is not None
    cache.detach()
    for layer in ttt:
        assert all(v.grad_fn is None for v in (*layer.state.values(), *layer.grads.values(), layer.pending_eta))
    assert kv[0].keys.grad_fn is None and kv[0].values.grad_fn is None


@pytest.mark.parametrize("operation", ["reorder", "select", "repeat"])
def test_beam_row_operations_cover_the_pending_mini_batch(model, operation):
    prefix, rest = ids(3, 11, seed=3), ids(3, 6, seed=4)  # 11 = one mini-batch + 3 pending tokens
    rows = {"reorder": [2, 0, 0], "select": [1, 2], "repeat": [0, 0, 1, 1, 2, 2]}[operation]
    with torch.no_grad():
        cache = TTTCache(model.config)
        model(prefix, past_key_values=cache)
        if operation == "reorder":
            cache.reorder_cache(torch.tensor(rows))
        elif operation == "select":
            cache.batch_select_indices(torch.tensor(rows))
        else:
            cache.batch_repeat_interleave(2)
        out = model(rest[rows], past_key_values=cache).logits
        direct = TTTCache(model.config)
        model(prefix[rows], past_key_values=direct)
        expected = model(rest[rows], past_key_values=direct).logits
    assert close(out, expected)
    assert cache.stream_position.tolist() == [17] * len(rows)


def test_layer_types_map_to_cache_layers():
    config = LlamaConfig(num_hidden_layers=5, hidden_size=64, num_attention_heads=4)
    config.layer_types = ["full_attention", "sliding_attention", "linear_attention", "hybrid", "hybrid_sliding"]
    config.sliding_window = 16
    config.ttt_mini_batch_size = 8
    cache = TTTCache(config)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["DynamicLayer", "DynamicSlidingWindowLayer", "TTTCacheLayer", "TTTCacheLayer", "TTTCacheLayer"]
    assert cache.layers[2].kv is None and not cache.layers[3].kv.is_sliding and cache.layers[4].kv.is_sliding
    assert [i for i, _ in cache.ttt_layers()] == [2, 3, 4]
    assert all(isinstance(cache.layers[i], TTTCacheLayer) for i in (2, 3, 4))
    with pytest.raises(NotImplementedError):
        cache.crop(-1)
