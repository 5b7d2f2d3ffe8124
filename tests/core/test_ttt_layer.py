"""TTTMLP / TTTLinear against a primal reference written from the formula, streaming, padding, FP32, GQA, stats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from omnittt.core.ttt_cache import TTTCache
from omnittt.core.ttt_layer import TTTMLP, TTTLinear

pytestmark = pytest.mark.usefixtures("one_thread")

B16 = 16
KINDS = {"mlp": TTTMLP, "linear": TTTLinear}


def make_config(b: int = B16, kv_heads: int = 4, hidden: int = 64, heads: int = 4, **extra) -> LlamaConfig:
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=heads, num_key_value_heads=kv_heads)
    config.ttt_mini_batch_size = b
    config.layer_types = ["linear_attention"]
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def make_layer(kind: str, seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    layer = KINDS[kind](make_config(**config_kwargs), 0)
    with torch.no_grad():  # non-trivial values everywhere the reference should see them
        layer.learnable_token_idx.normal_(0, 0.05)
        layer.learnable_ttt_lr_bias.normal_(0, 0.5)
        layer.ttt_norm_weight.normal_(1, 0.1)
        layer.ttt_norm_bias.normal_(0, 0.1)
        for name in layer.state_keys:
            getattr(layer, name).normal_(0, 0.05)
    return layer


# --- primal reference: projections + per-token gradient descent at the mini-batch start, by autograd ---------------

def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _inner(W: dict, x: torch.Tensor, kind: str) -> torch.Tensor:
    z = x @ W["W1"] + W["b1"]
    if kind == "mlp":
        z = F.gelu(z, approximate="tanh") @ W["W2"] + W["b2"]
    return z


def _rope_ref(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    f = x.shape[-1]
    half = f // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / f)
    ang = pos.to(torch.float64)[:, None] * inv  # [T, f/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def primal_reference(layer, x: torch.Tensor, mask: torch.Tensor | None = None):
    """Output `[B, T, C]` and the per-token states W_i (list over tokens of dicts `[B, nh, ...]`)."""
    kind, b = layer.kind, layer.mini_batch_size
    B, T, C = x.shape
    nh, f = layer.num_heads, layer.head_dim
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    x = x * mask[..., None]
    q = (x @ layer.q_proj.weight.T).view(B, T, nh, f).transpose(1, 2)
    kv_heads = layer.k_proj.weight.shape[0] // f
    k = (x @ layer.k_proj.weight.T).view(B, T, kv_heads, f).transpose(1, 2)
    v = (x @ layer.v_proj.weight.T).view(B, T, kv_heads, f).transpose(1, 2)
    k = k.repeat_interleave(nh // kv_heads, dim=1)
    v = v.repeat_interleave(nh // kv_heads, dim=1)
    pos = torch.arange(T) % b
    q, k = _rope_ref(q, pos, layer.rope_theta), _rope_ref(k, pos, layer.rope_theta)
    lr = layer.base_lr * torch.sigmoid(
        torch.einsum("btc,hc->bht", x, layer.learnable_ttt_lr_weight[:, 0]) + layer.learnable_ttt_lr_bias[None]
    ) / f * mask[:, None, :]
    token_eta = (1.0 / torch.arange(1, b + 1, dtype=x.dtype) + layer.learnable_token_idx).clamp(min=0)
    nw, nb = layer.ttt_norm_weight[:, None], layer.ttt_norm_bias[:, None]
    W = {name: getattr(layer, name)[None].expand(B, *getattr(layer, name).shape) for name in layer.state_keys}

    def token_loss(W_s, ki, vi, lri):  # lr_j * l_j(W_s) summed over batch and heads; ki, vi [B, nh, 1, f]
        loss = 0.5 * ((_layer_norm(_inner(W_s, ki, kind), nw, nb) - (vi - ki)) ** 2).sum((-1, -2))
        return (lri * loss).sum()

    per_token_grad = torch.func.vmap(torch.func.grad(token_loss), in_dims=(None, 2, 2, 2))
    zs, states = [], []
    for s in range(0, T, b):
        e = min(s + b, T)
        grads = per_token_grad(W, k[:, :, s:e, None], v[:, :, s:e, None], lr[:, :, s:e])  # [r, B, nh, ...]
        # padding rule: a pad takes the eta of the last real token of its mini-batch
        eta = torch.zeros(B, e - s, dtype=x.dtype)
        last = torch.zeros(B, dtype=x.dtype)
        for i in range(s, e):
            last = torch.where(mask[:, i], token_eta[i - s], last)
            eta[:, i - s] = last
        for i in range(s, e):
            W_i = {n: W[n] - eta[:, i - s].view(B, 1, 1, 1) * grads[n][: i - s + 1].sum(0) for n in W}
            qi = q[:, :, i:i + 1]
            zs.append((qi + _layer_norm(_inner(W_i, qi, kind), nw, nb))[:, :, 0])
            states.append(W_i)
        W = W_i
    z = torch.stack(zs, dim=2).transpose(1, 2).reshape(B, T, nh * f)
    z = F.layer_norm(z, (nh * f,), layer.post_norm.weight, layer.post_norm.bias, 1e-6)
    return z @ layer.o_proj.weight.T, states


# --- tests ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("length", [5, 37, 64, 77, 150])
def test_layer_equals_primal_reference_float64(kind, length):
    layer = make_layer(kind, kv_heads=2).double()
    x = torch.randn(2, length, 64, dtype=torch.float64)
    with torch.no_grad():
        out, _ = layer(x)
        ref, _ = primal_reference(layer, x)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_outer_gradients_equal_primal_reference_through_streaming_float64(kind):
    """Every parameter's gradient (learned initial state, token_eta offsets, lr gate, projections) through a
    prefill ending inside a mini-batch and a chunk that completes it, vs the reference's autograd."""
    layer = make_layer(kind, kv_heads=2).double()
    x = torch.randn(2, 37, 64, dtype=torch.float64)
    weights = torch.randn(2, 37, 64, dtype=torch.float64)
    params = [p for p in layer.parameters()]
    streamed, _ = _stream(layer, x, [13])
    got = torch.autograd.grad((streamed * weights).sum(), params)
    ref, _ = primal_reference(layer, x)
    want = torch.autograd.grad((ref * weights).sum(), params)
    for (name, _), g, w in zip(layer.named_parameters(), got, want, strict=True):
        assert (g - w).abs().max().item() <= 1e-8 * max(1.0, w.abs().max().item()), name


def _stream(layer, x, cuts, config=None):
    cache = TTTCache(config or layer.config)
    outs, start = [], 0
    for stop in [*cuts, x.shape[1]]:
        if stop > start:
            outs.append(layer(x[:, start:stop], past_key_values=cache)[0])
        start = stop
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_streaming_prefill_decode_and_random_chunks_equal_one_pass(kind):
    layer = make_layer(kind, kv_heads=2)
    x = torch.randn(2, 70, 64)
    with torch.no_grad():
        full, _ = layer(x)
        decode, _ = _stream(layer, x, list(range(21, 70)))  # prefill 21 (a partial tail), then token by token
        assert (decode - full).abs().max().item() <= 1e-5
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            cuts = sorted(torch.randperm(69, generator=gen)[:6].add(1).tolist())
            chunked, _ = _stream(layer, x, cuts)
            assert (chunked - full).abs().max().item() <= 1e-5, cuts


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_right_padded_row_equals_row_alone(kind):
    layer = make_layer(kind)
    x = torch.randn(2, 45, 64)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 29:] = False
    x[1, 29:] = float("nan")  # pads may carry anything
    with torch.no_grad():
        batched, _ = layer(x, ttt_padding_mask=mask)
        alone, _ = layer(x[1:, :29])
    assert torch.isfinite(batched).all()
    assert (batched[1, :29] - alone[0]).abs().max().item() <= 1e-5
    assert (batched[0] - layer(x[:1])[0][0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["mlp", "linear"])
@pytest.mark.parametrize("last", [0, B16 // 2 - 1, B16 - 1])
def test_state_after_padding_is_primal_state_at_last_real_token(kind, last):
    layer = make_layer(kind).double()
    real = 2 * B16 + last + 1  # the last real token sits at offset `last` of the third mini-batch
    total = 3 * B16
    x = torch.randn(1, total, 64, dtype=torch.float64)
    mask = torch.zeros(1, total, dtype=torch.bool)
    mask[:, :real] = True
    with torch.no_grad():
        padded = TTTCache(layer.config)
        layer(x, past_key_values=padded, ttt_padding_mask=mask)
        _, states = primal_reference(layer, x[:, :real])
        turned = TTTCache(layer.config)
        layer(x[:, :real], past_key_values=turned)
        turned.end_turn()
    state = padded.layers[0].state
    assert padded.layers[0].grads is None and padded.layers[0].stream_position.tolist() == [total]
    for name in layer.state_keys:
        assert (state[name] - states[-1][name]).abs().max().item() <= 1e-10
        assert (turned.layers[0].state[name] - state[name]).abs().max().item() <= 1e-12
    assert turned.layers[0].stream_position.tolist() == [total]


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_all_pad_mini_batch_carries_state_unchanged(kind):
    layer = make_layer(kind)
    x = torch.randn(1, 2 * B16, 64)
    mask = torch.ones(1, 2 * B16, dtype=torch.bool)
    mask[:, B16:] = False
    with torch.no_grad():
        cache = TTTCache(layer.config)
        layer(x[:, :B16], past_key_values=cache)
        before = dict(cache.layers[0].state)
        layer(x[:, B16:], past_key_values=cache, ttt_padding_mask=mask[:, B16:])
    for name in layer.state_keys:
        assert torch.equal(cache.layers[0].state[name], before[name])


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_gradient_crosses_turns_through_cache_until_detach(kind):
    layer = make_layer(kind)
    turns = [torch.randn(2, n, 64) for n in (20, 13, 9)]

    def turn2_loss(detach_before_turn2: bool) -> torch.Tensor:
        cache = TTTCache(layer.config)
        layer(turns[0], past_key_values=cache)
        layer(turns[1], past_key_values=cache)
        if detach_before_turn2:
            cache.detach()
        return layer(turns[2], past_key_values=cache)[0].square().mean()

    layer.zero_grad()
    turn2_loss(False).backward()
    assert layer.W1.grad is not None and layer.W1.grad.abs().sum() > 0
    layer.zero_grad(set_to_none=True)
    turn2_loss(True).backward()
    assert layer.W1.grad is None or layer.W1.grad.abs().sum() == 0
    assert layer.q_proj.weight.grad.abs().sum() > 0  # the current turn still trains


def _assert_fp32_state(layer, cache):
    for name in ("W1", "b1", "ttt_norm_weight", "ttt_norm_bias"):
        assert getattr(layer, name).dtype == torch.float32, name
    for name, value in cache.layers[0].state.items():
        assert value.dtype == torch.float32, name
    assert all(g.dtype == torch.float32 for g in cache.layers[0].grads.values())


@pytest.mark.parametrize("cast", ["bfloat16", "half"])
def test_inner_state_stays_float32_under_casts(cast):
    layer = make_layer("mlp")
    reference = {name: getattr(layer, name).detach().clone() for name in layer.state_keys}
    layer = layer.to(torch.bfloat16) if cast == "bfloat16" else layer.half()
    dtype = torch.bfloat16 if cast == "bfloat16" else torch.float16
    assert layer.q_proj.weight.dtype == dtype
    for name, value in reference.items():
        assert torch.equal(getattr(layer, name), value)  # not round-tripped through the low precision
    cache = TTTCache(layer.config)
    out, _ = layer(torch.randn(2, 21, 64, dtype=dtype), past_key_values=cache)
    assert out.dtype == dtype and torch.isfinite(out).all()
    _assert_fp32_state(layer, cache)


def test_inner_state_stays_float32_under_autocast():
    layer = make_layer("mlp")
    cache = TTTCache(layer.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(torch.randn(2, 21, 64), past_key_values=cache)
    _assert_fp32_state(layer, cache)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_bf16_autocast_long_stream_does_not_drift():
    torch.manual_seed(0)
    layer = make_layer("mlp", hidden=128, b=64)
    x = torch.randn(1, 20_480, 128) * 0.5
    chunk = 1024
    errors = []
    with torch.no_grad():
        ref_cache, amp_cache = TTTCache(layer.config), TTTCache(layer.config)
        for start in range(0, x.shape[1], chunk):
            part = x[:, start:start + chunk]
            ref, _ = layer(part, past_key_values=ref_cache)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                amp, _ = layer(part, past_key_values=amp_cache)
            assert all(v.dtype == torch.float32 for v in amp_cache.layers[0].state.values())
            errors.append((amp.float() - ref).abs().mean().item())
    assert errors[-1] <= 2 * errors[0], errors


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_gqa_layer_equals_layer_with_expanded_kv(kind):
    gqa = make_layer(kind, kv_heads=2)
    full = KINDS[kind](make_config(kv_heads=4), 0)
    state = gqa.state_dict()
    f = gqa.head_dim
    for name in ("k_proj.weight", "v_proj.weight"):
        state[name] = state[name].view(2, f, -1).repeat_interleave(2, dim=0).reshape(4 * f, -1)
    full.load_state_dict(state)
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        assert (gqa(x)[0] - full(x)[0]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_stats_inner_loss_decreases_and_stats_off_is_bit_identical(kind):
    layer = make_layer(kind)
    x = torch.randn(3, 2 * B16 + 5, 64)
    with torch.no_grad():
        off_cache, on_cache = TTTCache(layer.config), TTTCache(layer.config)
        off, _ = layer(x[:, :2 * B16], past_key_values=off_cache)
        on, _ = layer(x[:, :2 * B16], past_key_values=on_cache, collect_ttt_stats=True)
        assert off_cache.layers[0].stats is None
        assert torch.equal(off, on)
        stats = on_cache.layers[0].stats
        assert (stats["inner_loss_after"] < stats["inner_loss_before"]).all()
        for name in layer.state_keys:
            assert stats[f"{name}_norm"].shape == (3,) and stats[f"{name}_norm"].dtype == torch.float32
            assert stats[f"{name}_delta"].shape == (3,)
        assert stats["dtypes"] == {name: "torch.float32" for name in layer.state_keys}
        assert stats["stream_position"].tolist() == [2 * B16] * 3
        assert (stats["mean_lr"] > 0).all()
        assert set(stats) == {f"{n}_{s}" for n in layer.state_keys for s in ("norm", "delta")} | {
            "inner_loss_before", "inner_loss_after", "mean_lr", "dtypes", "stream_position"}
        # a partial mini-batch: the carried state is what padding would commit; the loss still decreases
        tail_on, _ = layer(x[:, 2 * B16:], past_key_values=on_cache, collect_ttt_stats=True)
        tail_off, _ = layer(x[:, 2 * B16:], past_key_values=off_cache)
        assert torch.equal(tail_on, tail_off)
        stats = on_cache.layers[0].stats
        assert (stats["inner_loss_after"] < stats["inner_loss_before"]).all()


def test_rope_uses_position_modulo_mini_batch():
    """Shifting the stream by whole mini-batches with the same state gives the same outputs (phase restarts)."""
    layer = make_layer("mlp")
    x = torch.randn(1, 10, 64)
    with torch.no_grad():
        cache = TTTCache(layer.config)
        layer(torch.randn(1, B16, 64), past_key_values=cache)
        cache.layers[0].state = layer.initial_state(1)  # same start state, stream now at position b
        shifted, _ = layer(x, past_key_values=cache)
        fresh, _ = layer(x)
    assert (shifted - fresh).abs().max().item() <= 1e-6


def test_rejects_a_non_ttt_cache():
    from transformers import DynamicCache

    layer = make_layer("mlp")
    with pytest.raises(TypeError, match="TTTCache"):
        layer(torch.randn(1, 3, 64), past_key_values=DynamicCache())
