"""TTT-MLP and TTT-Linear layers: drop-in replacements for transformers 5.x `LlamaAttention`.

Read against Sun et al. 2024 (arXiv 2407.04620) and `omnittt/core/ttt_ops.py` (the inner loop). Per call:

1. q/k/v projections (k/v keep `num_key_value_heads` and are repeated per group, as `repeat_kv`);
2. RoPE (Hugging Face rotate_half, the layer's `rope_theta`, no scaling) on q and k at `stream position % b`: a
   relative phase only means something inside a mini-batch, so every mini-batch restarts at phase 0;
3. per-head inner learning rate `lr_t = ttt_base_lr * sigmoid(x_t . w_h + b_h) / f` from the layer input, 0 on
   padding, and `token_eta[i] = max(1/(i+1) + learnable_token_idx[i], 0)`;
4. the inner loop, cut at the mini-batch boundaries of the TTT stream: the rest of an unfinished mini-batch
   (primal form, continuing the cached gradient), full mini-batches (dual form), a tail (primal form, left pending);
5. post-norm over the full width, optional gelu gate, o_proj; in `gated` mode the original attention is kept and
   the TTT output is added through a per-channel tanh gate initialised near 0.

Padding rule: a masked token has lr 0 and takes the eta row of the last real token before it in its mini-batch, so
the state carried out of a padded mini-batch is the state at its last real token.
The inner state W1 b1 W2 b2 and the TTT norm stay float32 under any cast or autocast (how: `FP32_PARAMS`); outputs
return in the input dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init
from transformers.models.llama.modeling_llama import LlamaAttention, rotate_half

from omnittt.core.hf_compat import CACHE_ARG, take_cache
from omnittt.core.ttt_cache import TTTCache, TTTCacheLayer
from omnittt.core.ttt_config import TTTConfig
from omnittt.core.ttt_ops import (
    LINEAR_KEYS,
    MLP_KEYS,
    inner_loss,
    ttt_commit,
    ttt_linear,
    ttt_linear_partial,
    ttt_mlp,
    ttt_mlp_partial,
)

FP32_PARAMS = ("W1", "b1", "W2", "b2", "ttt_norm_weight", "ttt_norm_bias")
"""The parameters that stay float32 (the learned initial inner state and the TTT norm), and how.

The inner loop adds many small updates to W1 b1 W2 b2; in bfloat16 (8 mantissa bits) they round away. Four places
keep it float32, each for a path the others do not cover: (1) `TTTBase.__init__` creates these parameters float32
whatever the default dtype, and transformers (>= 5.23) casts a checkpoint tensor to the dtype of the parameter it
loads into, so `from_pretrained(dtype=bfloat16)` needs nothing more (a `_keep_in_fp32_modules_strict` list was
redundant with this and is gone); (2) `TTTBase._apply` leaves them float32 under `.half()`, `.to(bfloat16)` and
`model.to(dtype)` (`build_model(dtype=...)`), following only the device, float64 allowed for precision tests;
(3) `TTTBase._ttt_output` runs the inner loop with autocast off, in W1's dtype, so the runtime state and pending
gradients in the cache are float32 under bf16 autocast; (4) `convert_llama_to_ttt`'s `_materialise` gives the
parameters the conversion did not load real storage in float32 (everything else new takes the source model's dtype:
the conversion builds on the meta device, so (1) does not reach it). `omnittt.inspect.fp32.FP32Enforcer` keeps
nothing float32 by itself: it is the check (the trainer runs it every `fp32_check_every` steps) that reports, and
with `auto_fix` repairs, a parameter or cache tensor that drifted anyway.
"""
POST_NORM_EPS = 1e-6


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Hugging Face rotate_half RoPE at integer `positions` `[T]`, angles computed in float64 (float32 on MPS,
    which has no float64)."""
    dim = x.shape[-1]
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=wide, device=x.device) / dim)
    freqs = positions.to(wide)[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def effective_token_eta(token_eta: torch.Tensor, mask: torch.Tensor, offset: int,
                        pending_eta: torch.Tensor | None) -> torch.Tensor:
    """token_eta `[B, T]` each token uses: that of the last real token at or before it in its mini-batch (the
    padding rule). Before any real token of a mini-batch: the cached `pending_eta` for the mini-batch the chunk
    continues, else 0 (nothing to commit)."""
    b = token_eta.shape[0]
    T = mask.shape[1]
    t = torch.arange(T, device=mask.device)
    off = (offset + t) % b
    segment_start = torch.where(t < b - offset, 0, t - off) if offset else t - off
    last = torch.where(mask, t, -1).cummax(dim=1).values  # [B, T] index of the last real token so far
    valid = last >= segment_start
    eta = token_eta[off[last.clamp(min=0)]]
    fallback = torch.zeros_like(eta)
    if offset and pending_eta is not None:
        fallback = torch.where(t < b - offset, pending_eta[:, None].to(eta.dtype), fallback)
    return torch.where(valid, eta, fallback)


class _Chunk(NamedTuple):
    """One chunk's inner-loop inputs `[B, nh, T, f]` (q, k after RoPE), inner lr `[B, nh, T]`, effective token eta
    `[B, T]` and the TTT norm's (weight, bias), all in the inner dtype."""

    XQ: torch.Tensor
    XK: torch.Tensor
    XV: torch.Tensor
    lr: torch.Tensor
    eta: torch.Tensor
    norm: tuple[torch.Tensor, torch.Tensor]


class _Carry(NamedTuple):
    """What a chunk leaves for the next one (`TTTCacheLayer.advance`) and for its statistics."""

    state: dict[str, torch.Tensor]  # at the last completed mini-batch
    grads: dict[str, torch.Tensor] | None  # gradient sum of the unfinished mini-batch (None on a boundary)
    pending_eta: torch.Tensor | None  # eta row of the last real token: the commit of `grads` uses it
    last: tuple | None  # (start state, state after or None if unfinished, slice) of the call's last mini-batch


class TTTBase(nn.Module):
    """Shared projections, RoPE, eta, padding, cache handling and statistics of TTT-MLP and TTT-Linear."""

    is_ttt_layer = True
    kind: str = ""
    state_keys: tuple[str, ...] = ()

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads or self.num_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.num_heads
        self.ttt_config = TTTConfig.from_model_config(config).validate()
        self.mini_batch_size = int(self.ttt_config.ttt_mini_batch_size)
        self.base_lr = self.ttt_config.inner_lr
        self.rope_theta = rope_theta(config)
        self.mode = self.ttt_config.ttt_mode
        self.checkpoint_group_size = int(self.ttt_config.ttt_checkpoint_group_size)
        width = self.num_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        nh, f = self.num_heads, self.head_dim

        self.q_proj = nn.Linear(hidden, width, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * f, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * f, bias=bias)
        self.o_proj = nn.Linear(width, hidden, bias=bias)
        self.learnable_ttt_lr_weight = nn.Parameter(torch.empty(nh, 1, hidden))
        self.learnable_ttt_lr_bias = nn.Parameter(torch.empty(nh, 1))
        self.learnable_token_idx = nn.Parameter(torch.empty(self.mini_batch_size))
        fp32 = {"dtype": torch.float32}  # FP32_PARAMS (1): created float32, loads keep it
        self.ttt_norm_weight = nn.Parameter(torch.empty(nh, f, **fp32))
        self.ttt_norm_bias = nn.Parameter(torch.empty(nh, f, **fp32))
        for name, shape in self._state_shapes().items():
            setattr(self, name, nn.Parameter(torch.empty(shape, **fp32)))
        self.post_norm = nn.LayerNorm(width, eps=POST_NORM_EPS)
        if self.ttt_config.ttt_use_gate:
            self.gate_proj = nn.Linear(hidden, width, bias=bias)
        if self.mode == "gated":
            self.attention = LlamaAttention(config, layer_idx)
            self.ttt_gate = nn.Parameter(torch.empty(hidden))
        self.reset_ttt_parameters()

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def reset_ttt_parameters(self) -> None:
        """Initialise the TTT-specific parameters (reference init). Uses transformers' guarded init functions, so
        inside `_init_weights` parameters already loaded from a checkpoint are left alone."""
        std = getattr(self.config, "initializer_range", 0.02) or 0.02
        hf_init.normal_(self.learnable_ttt_lr_weight, mean=0.0, std=std)
        hf_init.zeros_(self.learnable_ttt_lr_bias)
        hf_init.zeros_(self.learnable_token_idx)
        hf_init.ones_(self.ttt_norm_weight)
        hf_init.zeros_(self.ttt_norm_bias)
        for name in self.state_keys:
            param = getattr(self, name)
            (hf_init.normal_(param, mean=0.0, std=std) if name.startswith("W") else hf_init.zeros_(param))
        hf_init.ones_(self.post_norm.weight)
        hf_init.zeros_(self.post_norm.bias)
        if self.mode == "gated":
            hf_init.constant_(self.ttt_gate, float(self.ttt_config.ttt_gate_init))

    # FP32_PARAMS (2): the inner state and the TTT norm never follow a cast to a lower precision (`.half()`,
    # `.to(bfloat16)`): they keep float32 and only follow the device. A cast to float64 is allowed (precision tests).
    def _apply(self, fn, recurse: bool = True):
        order = list(self._parameters)
        kept = {name: self._parameters.pop(name) for name in FP32_PARAMS if name in self._parameters}
        try:
            super()._apply(fn, recurse)
        finally:
            for param in kept.values():
                if param is None:
                    continue
                with torch.no_grad():
                    moved = fn(param)
                if moved.dtype in (torch.float16, torch.bfloat16) and param.dtype != moved.dtype:
                    moved = param.data.to(device=moved.device)
                param.data = moved
            self._parameters = {name: kept[name] if name in kept else self._parameters[name] for name in order}
        return self

    # -- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        ttt_padding_mask: torch.Tensor | None = None,
        collect_ttt_stats: bool = False,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        cache = take_cache(cache, past_key_values, kwargs, f"TTT layer {self.layer_idx}")
        if cache is not None and not isinstance(cache, TTTCache):
            raise TypeError(
                f"TTT layers need a TTTCache, got {type(cache).__name__}; "
                "build one with omnittt.core.TTTCache(model.config)"
            )
        layer_cache = cache.layers[self.layer_idx] if cache is not None else None
        out = self._ttt_output(hidden_states, layer_cache, ttt_padding_mask, collect_ttt_stats)
        if self.mode == "gated":
            attn, _ = self.attention(
                hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                **{CACHE_ARG: cache}, **kwargs,
            )
            out = attn + torch.tanh(self.ttt_gate).to(out.dtype) * out
        return out, None

    def _project(self, hidden_states: torch.Tensor, inner: torch.dtype):
        B, T, _ = hidden_states.shape
        nh, f = self.num_heads, self.head_dim

        def heads(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.to(inner).view(B, T, n, f).transpose(1, 2)

        XQ = heads(self.q_proj(hidden_states), nh)
        XK = heads(self.k_proj(hidden_states), self.num_key_value_heads)
        XV = heads(self.v_proj(hidden_states), self.num_key_value_heads)
        if self.num_key_value_groups > 1:
            XK = XK.repeat_interleave(self.num_key_value_groups, dim=1)
            XV = XV.repeat_interleave(self.num_key_value_groups, dim=1)
        return XQ, XK, XV

    def _token_eta(self, inner: torch.dtype) -> torch.Tensor:
        b = self.mini_batch_size
        base = 1.0 / torch.arange(1, b + 1, dtype=inner, device=self.learnable_token_idx.device)
        return (base + self.learnable_token_idx.to(inner)).clamp(min=0)

    def _inner_lr(self, X: torch.Tensor) -> torch.Tensor:
        """`[B, nh, T]` = ttt_base_lr * sigmoid(x . w_h + b_h) / f."""
        w = self.learnable_ttt_lr_weight.to(X.dtype)[:, 0]  # [nh, C]
        logits = torch.einsum("btc,hc->bht", X, w) + self.learnable_ttt_lr_bias.to(X.dtype)[None]
        return self.base_lr * torch.sigmoid(logits) / self.head_dim

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The learned initial state, tiled (by view) over the batch."""
        return {k: getattr(self, k).unsqueeze(0).expand(batch_size, *getattr(self, k).shape) for k in self.state_keys}

    def _start_state(self, cache: TTTCacheLayer | None, batch_size: int) -> dict[str, torch.Tensor]:
        init = self.initial_state(batch_size)
        if cache is None or cache.state is None:
            return init
        state = cache.state
        if cache.reset_rows is not None:
            rows = cache.reset_rows.view(-1, 1, 1, 1)
            state = {k: torch.where(rows, init[k], state[k]) for k in self.state_keys}
        return state

    def _ttt_output(self, hidden_states: torch.Tensor, cache: TTTCacheLayer | None,
                    padding_mask: torch.Tensor | None, collect_stats: bool) -> torch.Tensor:
        """Steps 1-5 of the module docstring on one chunk `[B, T, C]`: the state comes from `cache` and the new one
        goes back into it (`cache.advance`), with the statistics of the call's last mini-batch when asked."""
        B, T, _ = hidden_states.shape
        in_dtype, device = hidden_states.dtype, hidden_states.device
        mask = None
        if padding_mask is not None:
            mask = padding_mask[:, -T:].to(device=device, dtype=torch.bool)
            # whatever a pad carries (even non-finite values) must not reach the state: lr 0 alone would give 0 * inf
            hidden_states = hidden_states.masked_fill(~mask[..., None], 0)
        XQ, XK, XV = self._project(hidden_states, self.W1.dtype)  # under the caller's autocast, if any

        with torch.autocast(device_type=device.type, enabled=False):  # FP32_PARAMS (3): the state stays float32
            if cache is not None:
                cache.begin(B, device)
            offset = cache.offset if cache is not None else 0
            pending_eta = cache.pending_eta if cache is not None else None
            chunk = self._chunk(hidden_states, XQ, XK, XV, mask, offset, pending_eta)
            grads = cache.grads if cache is not None else None
            z, carry = self._ttt(chunk, self._start_state(cache, B), grads, pending_eta, offset)
            if cache is not None:
                cache.advance(carry.state, carry.grads, carry.pending_eta, T)
                if collect_stats and carry.last is not None:
                    cache.stats = self._statistics(chunk, carry, cache.stream_position)
            z = self._post_norm(z)
        z = z.to(in_dtype)
        if hasattr(self, "gate_proj"):
            z = F.gelu(self.gate_proj(hidden_states), approximate="tanh") * z
        return self.o_proj(z)

    def _chunk(self, hidden_states: torch.Tensor, XQ: torch.Tensor, XK: torch.Tensor, XV: torch.Tensor,
               mask: torch.Tensor | None, offset: int, pending_eta: torch.Tensor | None) -> _Chunk:
        """Steps 2-3: RoPE at stream position mod b, the inner lr (0 on padding), the eta each token uses."""
        B, T, _ = hidden_states.shape
        inner, device = self.W1.dtype, hidden_states.device
        positions = (offset + torch.arange(T, device=device)) % self.mini_batch_size
        XQ = _rope(XQ, positions, self.rope_theta)
        XK = _rope(XK, positions, self.rope_theta)
        lr = self._inner_lr(hidden_states.to(inner))
        if mask is not None:
            lr = lr * mask[:, None, :].to(inner)
        real = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        eta = effective_token_eta(self._token_eta(inner), real, offset, pending_eta)
        norm = (self.ttt_norm_weight.to(inner), self.ttt_norm_bias.to(inner))
        return _Chunk(XQ, XK, XV, lr, eta, norm)

    def _ttt(self, x: _Chunk, state: dict[str, torch.Tensor], grads: dict[str, torch.Tensor] | None,
             pending_eta: torch.Tensor | None, offset: int) -> tuple[torch.Tensor, _Carry]:
        """Step 4, the inner loop over one chunk, cut at the mini-batch boundaries of the TTT stream: a head (the rest
        of the mini-batch the cache left unfinished, primal form continuing its gradient sum `grads`), full
        mini-batches (dual form), a tail (primal form, left pending). `offset` = stream position mod b at the chunk's
        start. Returns the output `[B, nh, T, f]` and the new state."""
        b, T = self.mini_batch_size, x.XK.shape[2]
        n_head = min(T, b - offset) if offset else 0
        n_full = (T - n_head) // b
        n_tail = T - n_head - n_full * b
        outputs = []
        last = None  # (start state, state after or None, slice) of the call's last mini-batch, for statistics
        if n_head:
            s = slice(0, n_head)
            z, grads = self._partial(x, s, state, grads)
            outputs.append(z)
            start, pending_eta = state, x.eta[:, n_head - 1]
            if offset + n_head == b:  # the head completes its mini-batch: commit it (the primal update)
                state, grads = ttt_commit(state, grads, pending_eta), None
                last = (start, state, s)
            else:
                last = (start, None, s)
        if n_full:
            # the last full mini-batch in its own call, so that its start state (for the statistics) comes for free
            # and outputs do not depend on whether statistics are collected
            if n_full > 1:
                z, state = self._dual(x, slice(n_head, n_head + (n_full - 1) * b), state, n_full - 1)
                outputs.append(z)
            s = slice(n_head + (n_full - 1) * b, n_head + n_full * b)
            start = state
            z, state = self._dual(x, s, state, 1)
            outputs.append(z)
            pending_eta, last = None, (start, state, s)
        if n_tail:
            s = slice(T - n_tail, T)
            z, grads = self._partial(x, s, state, None)
            outputs.append(z)
            pending_eta, last = x.eta[:, T - 1], (state, None, s)
        z = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
        return z, _Carry(state, grads, pending_eta, last)

    def _partial(self, x: _Chunk, s: slice, params, grads):
        """Primal form over the part `s` of one mini-batch: output and the gradient sum so far (not committed)."""
        fn = ttt_mlp_partial if self.kind == "mlp" else ttt_linear_partial
        return fn(x.XK[:, :, s], x.XQ[:, :, s], x.XV[:, :, s], x.lr[:, :, s], x.eta[:, None, s], *x.norm, params,
                  grads)

    def _dual(self, x: _Chunk, s: slice, state, n_mb: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Dual form over `n_mb` full mini-batches at `s`: output `[B, nh, n_mb * b, f]` and the state after them."""
        B, nh, _, f = x.XK.shape
        b = self.mini_batch_size

        def blocks(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, s].reshape(B, nh, n_mb, b, f)

        lr_mb = x.lr[:, :, s].reshape(B, nh, n_mb, 1, b)
        eta = x.eta[:, s].reshape(B, 1, n_mb, b, 1) * lr_mb  # eta[i, j] = token_eta_eff[i] * lr_j
        fn = ttt_mlp if self.kind == "mlp" else ttt_linear
        final, z = fn(blocks(x.XK), blocks(x.XQ), blocks(x.XV), eta, *x.norm, *(state[k] for k in self.state_keys),
                      checkpoint_group_size=self.checkpoint_group_size)
        return z.reshape(B, nh, n_mb * b, f), {k: final[f"{k}_states"] for k in self.state_keys}

    def _post_norm(self, z: torch.Tensor) -> torch.Tensor:
        """Step 5's post-norm over the full width: `[B, nh, T, f]` -> `[B, T, nh * f]`."""
        B, nh, T, f = z.shape
        inner = self.W1.dtype
        z = z.transpose(1, 2).reshape(B, T, nh * f)
        return F.layer_norm(z, z.shape[-1:], self.post_norm.weight.to(inner), self.post_norm.bias.to(inner),
                            self.post_norm.eps)

    @torch.no_grad()
    def _statistics(self, x: _Chunk, carry: _Carry, stream_position: torch.Tensor) -> dict:
        """Detached statistics of the call's last mini-batch (docs/architecture.md "TTT statistics")."""
        start, after, s = carry.last
        if after is None:  # unfinished mini-batch: the state padding would commit now
            after = ttt_commit(carry.state, carry.grads, carry.pending_eta)
        lr_s = x.lr[:, :, s]
        stats: dict[str, Any] = {}
        for k in self.state_keys:
            stats[f"{k}_norm"] = after[k].float().flatten(1).norm(dim=1)
            stats[f"{k}_delta"] = (after[k] - start[k]).float().flatten(1).norm(dim=1)
        before = inner_loss(start, x.XK[:, :, s], x.XV[:, :, s], *x.norm, kind=self.kind, weights=lr_s)
        after_loss = inner_loss(after, x.XK[:, :, s], x.XV[:, :, s], *x.norm, kind=self.kind, weights=lr_s)
        stats["inner_loss_before"] = before.float().mean(1)
        stats["inner_loss_after"] = after_loss.float().mean(1)
        real = (lr_s[:, 0] > 0).sum(1).clamp(min=1) * self.num_heads
        stats["mean_lr"] = (lr_s.float().sum((1, 2)) / real).float()
        stats["dtypes"] = {k: str(after[k].dtype) for k in self.state_keys}
        stats["stream_position"] = stream_position.detach().clone()
        return stats


class TTTMLP(TTTBase):
    """TTT layer whose inner model is a 2-layer GELU MLP f -> 4f -> f per head."""

    kind = "mlp"
    state_keys = MLP_KEYS

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        nh, f = self.num_heads, self.head_dim
        return {"W1": (nh, f, 4 * f), "b1": (nh, 1, 4 * f), "W2": (nh, 4 * f, f), "b2": (nh, 1, f)}


class TTTLinear(TTTBase):
    """TTT layer whose inner model is a linear map f -> f per head."""

    kind = "linear"
    state_keys = LINEAR_KEYS

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        nh, f = self.num_heads, self.head_dim
        return {"W1": (nh, f, f), "b1": (nh, 1, f)}


TTT_LAYER_CLASSES = {"mlp": TTTMLP, "linear": TTTLinear}


def build_ttt_layer(config, layer_idx: int) -> TTTBase:
    """The TTT layer `config.ttt_type` asks for."""
    return TTT_LAYER_CLASSES[TTTConfig.from_model_config(config).validate().ttt_type](config, layer_idx)
