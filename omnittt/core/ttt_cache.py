"""The TTT cache: per-row TTT state for TTT layers, KV for attention layers, and the two position counters.

`TTTCache` is a transformers 5.x `Cache`, so `generate()` and beam search drive it like any other cache. What it
adds (DESIGN.md "core: the TTT op, layer and cache"):

- a `TTTCacheLayer` per TTT layer holding, per batch row, the state at the last completed mini-batch (`state`), the
  accumulated gradient of the unfinished mini-batch (`grads`), the token_eta its commit will use (`pending_eta`) and
  the TTT stream position (every position fed, alignment pads included);
- per-row attention bookkeeping for the attention layers: the number of real tokens seen (attention positions count
  real tokens only, so pads never shift RoPE) and the past 2D mask (pads stay masked in later chunks).

Tensors are stored by reference, never `.copy_()`-ed into buffers, so a loss on exchange k back-propagates into
exchanges < k until `detach()` cuts the graph (truncated BPTT).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers.cache_utils import (
    Cache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionCacheLayerMixin,
)

from omnittt.core.ttt_ops import ttt_commit


def _rows(batch_index: int | Sequence[int] | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Boolean `[B]` row selector from an int, a list of ints, an index tensor or a boolean mask."""
    index = torch.as_tensor(batch_index, device=device)
    if index.dtype == torch.bool:
        if index.shape != (batch_size,):
            raise ValueError(f"a boolean batch_index must have shape [{batch_size}], got {list(index.shape)}")
        return index
    selected = torch.zeros(batch_size, dtype=torch.bool, device=device)
    selected[index.long().reshape(-1)] = True
    return selected


def _map_values(tensors: dict[str, torch.Tensor] | None, fn) -> dict[str, torch.Tensor] | None:
    return None if tensors is None else {k: fn(v) for k, v in tensors.items()}


def _kv_detach(layer: DynamicLayer) -> None:
    if layer.is_initialized and layer.keys is not None:
        layer.keys = layer.keys.detach()
        layer.values = layer.values.detach()


class StreamNotAdvancedError(RuntimeError):
    """A forward did not advance the TTT cache it was given (the state would silently not carry)."""


class TTTCacheLayer(LinearAttentionCacheLayerMixin):
    """Cache of one TTT layer (and, in `gated` mode, of the attention it keeps, in `kv`).

    `state`: dict `W1 b1 W2 b2` (TTT-Linear: `W1 b1`) of `[B, nh, ...]` float32 tensors, the state at the start of the
    current mini-batch; None until first use / after a full reset. `grads`: the unfinished mini-batch's accumulated
    `sum_j lr_j dl_j/dW(state)` (same keys) or None on a mini-batch boundary. `pending_eta` `[B]`: token_eta of the last
    real token of the unfinished mini-batch (what padding would commit with). `stream_position` `[B]` long;
    `offset` = stream position % b, the same for every row.
    `stats`: the statistics dict of the last call with `collect_ttt_stats=True`, else None.
    Rows reset individually are flagged in `reset_rows` and replaced by the learned initial state by the layer on its
    next forward (the cache does not own the learned parameters).
    """

    is_sliding = False
    is_compileable = False  # state tensors are replaced, not written into static buffers

    def __init__(self, mini_batch_size: int, kv: DynamicLayer | None = None):
        super().__init__(number_of_states=1)
        self.mini_batch_size = mini_batch_size
        self.kv = kv
        if kv is not None:
            self.is_sliding = kv.is_sliding
        self.state: dict[str, torch.Tensor] | None = None
        self.grads: dict[str, torch.Tensor] | None = None
        self.pending_eta: torch.Tensor | None = None
        self.stream_position: torch.Tensor | None = None
        self.offset = 0  # stream position % b, shared by every row (mini-batch boundaries are batched)
        self.reset_rows: torch.Tensor | None = None
        self.stats: dict | None = None
        self.positions_fed = 0  # every position this layer consumed since the last full reset (the stream guard)

    def __repr__(self) -> str:
        return f"TTTCacheLayer(kv={self.kv!r})" if self.kv is not None else "TTTCacheLayer"

    # transformers' recurrent-state API is not how TTT state is stored (it copies into static buffers, which would
    # cut the graph between exchanges); the layer reads and writes `state`/`grads` directly.
    def lazy_initialization(self, *args, **kwargs) -> None:
        raise NotImplementedError("TTTCacheLayer keeps its state in .state/.grads, not in recurrent_states")

    def update_conv_state(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError("TTTCacheLayer keeps its state in .state/.grads, not in conv_states")

    def update_recurrent_state(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError("TTTCacheLayer keeps its state in .state/.grads, not in recurrent_states")

    # -- attention kept in gated mode: transformers' `Cache.update` lands here
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.kv is None:
            raise TypeError("this TTT layer keeps no attention KV (mode 'replace')")
        return self.kv.update(key_states, value_states, *args, **kwargs)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self.kv.get_seq_length() if self.kv is not None else 0

    @property
    def batch_size(self) -> int:
        return -1 if self.stream_position is None else int(self.stream_position.shape[0])

    def begin(self, batch_size: int, device: torch.device) -> None:
        """Start the per-row counters on first use."""
        if self.stream_position is None:
            self.stream_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        elif self.stream_position.shape[0] != batch_size:
            raise ValueError(
                f"the TTT cache holds {self.stream_position.shape[0]} rows but the input has {batch_size}; "
                "use a new cache (or cache.reset()) for a new batch"
            )
        self.has_previous_state[0] = self.state is not None

    def advance(self, state: dict[str, torch.Tensor], grads: dict[str, torch.Tensor] | None,
                pending_eta: torch.Tensor | None, length: int) -> None:
        """Store the state after `length` more stream positions: `state` at the last completed mini-batch and the
        unfinished mini-batch's gradient sum `grads` (None on a boundary) with the eta its commit will use."""
        self.state, self.grads = state, grads
        self.pending_eta = pending_eta if grads is not None else None
        self.reset_rows = None
        self.stream_position = self.stream_position + length
        self.offset = (self.offset + length) % self.mini_batch_size
        self.positions_fed += length
        self.has_previous_state[0] = True
        self.stats = None

    def commit_pending(self) -> None:
        """Commit the unfinished mini-batch exactly as padding would (eta row of its last real token)."""
        if self.grads is not None:
            self.state = ttt_commit(self.state, self.grads, self.pending_eta)
        self.grads = None
        self.pending_eta = None

    def end_turn(self) -> None:
        self.commit_pending()
        if self.stream_position is not None:
            b = self.mini_batch_size
            self.stream_position = (self.stream_position + b - 1) // b * b
        self.offset = 0

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Full reset (rows None) or reset of the rows selected by the boolean `rows` `[B]`."""
        if rows is None or self.stream_position is None:
            self.state = self.grads = self.pending_eta = self.stream_position = self.reset_rows = None
            self.stats = None
            self.offset = self.positions_fed = 0
            self.has_previous_state[0] = False
            if self.kv is not None:
                self.kv.reset()
            return
        if self.offset:
            raise ValueError(
                "rows can only be reset on a mini-batch boundary (after cache.end_turn() or alignment padding); "
                f"the batch is {self.offset} positions into a mini-batch of {self.mini_batch_size}"
            )
        self.stream_position = torch.where(rows, 0, self.stream_position)
        self.reset_rows = rows.clone() if self.reset_rows is None else (self.reset_rows | rows)

    def detach(self) -> None:
        self.state = _map_values(self.state, torch.Tensor.detach)
        self.grads = _map_values(self.grads, torch.Tensor.detach)
        if self.pending_eta is not None:
            self.pending_eta = self.pending_eta.detach()
        if self.kv is not None:
            _kv_detach(self.kv)

    def _map_rows(self, fn) -> None:
        self.state = _map_values(self.state, fn)
        self.grads = _map_values(self.grads, fn)
        for name in ("pending_eta", "stream_position", "reset_rows"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))
        self.stats = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))
        if self.kv is not None:
            self.kv.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0))
        if self.kv is not None:
            self.kv.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_rows(lambda t: t[indices])
        if self.kv is not None:
            self.kv.batch_select_indices(indices)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a TTT state cannot be rolled back (assisted generation is not supported)")

    def offload(self) -> None:  # TTT state is small and always resident
        pass

    def prefetch(self) -> None:
        pass


class TTTCache(Cache):
    """Cache of a TTT Llama: `TTTCacheLayer` for TTT layers, `DynamicLayer` / `DynamicSlidingWindowLayer` for attention.

    Layers follow `config.layer_types` (set by `prepare_ttt_config`, transformers' names): `full_attention` ->
    DynamicLayer, `sliding_attention` -> DynamicSlidingWindowLayer(config.sliding_window), `linear_attention` -> a TTT
    layer (`replace` mode), `hybrid` / `hybrid_sliding` -> a TTT layer with the KV of the attention it keeps (`gated`).

    Also holds, per batch row, the attention counters: `real_tokens` `[B]` (real tokens since the conversation
    start; attention `position_ids` continue from it) and `attention_mask_history` `[B, S]` (the 2D mask of every
    position fed to the attention layers, pads 0; one byte per position and row, also under a sliding window, since
    transformers' mask builders index it by absolute position). `seen_positions` = positions fed (what
    `get_seq_length()` reports, as transformers' attention caches do).
    """

    def __init__(self, config):
        window = getattr(config, "sliding_window", None)
        b = getattr(config, "ttt_mini_batch_size", 64)
        layers = []
        for kind in getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers:
            if kind == "full_attention":
                layers.append(DynamicLayer())
            elif kind == "sliding_attention":
                layers.append(DynamicSlidingWindowLayer(sliding_window=window))
            elif kind == "linear_attention":
                layers.append(TTTCacheLayer(b))
            elif kind == "hybrid":
                layers.append(TTTCacheLayer(b, kv=DynamicLayer()))
            elif kind == "hybrid_sliding":
                layers.append(TTTCacheLayer(b, kv=DynamicSlidingWindowLayer(sliding_window=window)))
            else:
                raise ValueError(f"unsupported layer type {kind!r} in config.layer_types")
        super().__init__(layers=layers)
        self.mini_batch_size = b
        self.real_tokens: torch.Tensor | None = None
        self.attention_mask_history: torch.Tensor | None = None
        self.seen_positions = 0

    def __repr__(self) -> str:
        return f"TTTCache(layers={self.layers}, seen_positions={self.seen_positions})"

    # -- iteration
    def ttt_layers(self) -> Iterator[tuple[int, TTTCacheLayer]]:
        """(layer_idx, TTTCacheLayer) for every TTT layer."""
        for idx, layer in enumerate(self.layers):
            if isinstance(layer, TTTCacheLayer):
                yield idx, layer

    def _kv_layers(self) -> Iterator[DynamicLayer]:
        for layer in self.layers:
            if isinstance(layer, TTTCacheLayer):
                if layer.kv is not None:
                    yield layer.kv
            else:
                yield layer

    def attention_layer_index(self, sliding: bool) -> int | None:
        """Index of the first layer holding full (or sliding-window) attention KV, None if there is none."""
        for idx, layer in enumerate(self.layers):
            kv = layer.kv if isinstance(layer, TTTCacheLayer) else layer
            if kv is not None and kv.is_sliding == sliding:
                return idx
        return None

    # -- sizes (transformers asks these of layer 0 or of the layer it builds a mask for)
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_positions

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.seen_positions

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    @property
    def batch_size(self) -> int:
        return -1 if self.real_tokens is None else int(self.real_tokens.shape[0])

    @property
    def stream_position(self) -> torch.Tensor | None:
        """TTT stream position `[B]` (every position fed, pads included; advanced to a mini-batch boundary by
        `end_turn`), or None before the first forward / in a model without TTT layers."""
        for _, layer in self.ttt_layers():
            return layer.stream_position
        return None

    # -- attention counters, used by TTTLlamaModel
    def attention_inputs(self, chunk_mask: torch.Tensor, with_history: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention `position_ids` `[B, T]` (real tokens only) and the 2D mask `[B, S + T]` of past + chunk (None
        without `with_history`: a model without attention layers keeps no mask history)."""
        batch = chunk_mask.shape[0]
        chunk = chunk_mask.bool()
        if self.real_tokens is None:
            real = torch.zeros(batch, dtype=torch.long, device=chunk_mask.device)
        elif self.real_tokens.shape[0] != batch:
            raise ValueError(
                f"the cache holds {self.real_tokens.shape[0]} rows but the input has {batch}; "
                "use a new cache (or cache.reset()) for a new batch"
            )
        else:
            real = self.real_tokens
        position_ids = (real[:, None] + chunk.long().cumsum(1) - 1).clamp(min=0)
        if not with_history:
            return position_ids, None
        history = self.attention_mask_history
        if history is None:
            history = chunk.new_zeros(batch, self.seen_positions)
        return position_ids, torch.cat([history, chunk], dim=1)

    def record_chunk(self, chunk_mask: torch.Tensor, keep_history: bool) -> None:
        """Advance the attention counters after a forward over `chunk_mask` `[B, T]`."""
        chunk = chunk_mask.bool()
        real = chunk.long().sum(1)
        self.real_tokens = real if self.real_tokens is None else self.real_tokens + real
        if keep_history:
            history = self.attention_mask_history
            if history is None:
                history = chunk.new_zeros(chunk.shape[0], self.seen_positions)
            self.attention_mask_history = torch.cat([history, chunk], dim=1)
        self.seen_positions += chunk.shape[1]

    # -- the stream guard
    def progress(self) -> tuple[int, ...]:
        """Positions fed so far: to the model (`seen_positions`), then to each TTT layer. Two readings around a
        forward tell whether the stream advanced (`check_advanced`)."""
        return (self.seen_positions, *(layer.positions_fed for _, layer in self.ttt_layers()))

    def check_advanced(self, before: tuple[int, ...], fed: int | None = None) -> None:
        """Raise `StreamNotAdvancedError` unless the model and every TTT layer consumed `fed` more positions since
        the reading `before` (`fed` None: the same positive number everywhere). A model that ignores its cache
        argument leaves the cache as it was and would silently start every exchange from the initial state."""
        after = self.progress()
        deltas = [a - b for a, b in zip(after, before, strict=True)]
        ok = all(d == fed for d in deltas) if fed is not None else len(set(deltas)) == 1 and deltas[0] > 0
        if not ok:
            raise StreamNotAdvancedError(
                f"the TTT cache did not advance by the positions fed ({'a positive number' if fed is None else fed}"
                f"; model, then TTT layers: {before} -> {after}): the model did not read its cache, so the TTT "
                "state would not carry between exchanges. Is the installed transformers release a supported one "
                "(see pyproject.toml)?"
            )

    # -- conversation control
    def reset(self, batch_index: int | Sequence[int] | torch.Tensor | None = None) -> None:
        """Start a new conversation: for every row (None) or for the selected rows (exchange 0 of a new
        conversation). A row's TTT state goes back to the learned initial state, its stream position and real-token
        count to 0, and its past attention positions are masked out (a dense KV tensor cannot drop one row)."""
        if batch_index is None or self.real_tokens is None:
            for layer in self.layers:
                layer.reset()
            self.real_tokens = self.attention_mask_history = None
            self.seen_positions = 0
            return
        rows = _rows(batch_index, self.real_tokens.shape[0], self.real_tokens.device)
        for _, layer in self.ttt_layers():
            layer.reset(rows)
        self.real_tokens = torch.where(rows, 0, self.real_tokens)
        if self.attention_mask_history is not None:
            self.attention_mask_history = self.attention_mask_history & ~rows[:, None]

    def reset_ttt_state(self, rows: torch.Tensor) -> None:
        """Put the TTT state of `rows` (bool `[B]`) back to the learned initial state; attention context and the
        attention counters are kept (eval's reset-every-turn control)."""
        if not bool(rows.any()):
            return
        for _, layer in self.ttt_layers():
            if layer.stream_position is not None:
                layer.reset(rows.to(layer.stream_position.device))

    def end_turn(self) -> None:
        """Close the exchange as alignment padding would: commit every TTT layer's unfinished mini-batch with the
        eta row of its last real token and advance the TTT stream position to the next multiple of b. Chat and eval
        call it after each exchange's final `<eot>`; attention counters are unchanged (pads are never attended)."""
        for _, layer in self.ttt_layers():
            layer.end_turn()

    def detach(self) -> None:
        """Cut the autograd graph of every layer, TTT state and attention KV alike (between TBPTT windows)."""
        for layer in self.layers:
            if isinstance(layer, TTTCacheLayer):
                layer.detach()
            else:
                _kv_detach(layer)

    # -- beam search
    def _map_counters(self, fn) -> None:
        if self.real_tokens is not None:
            self.real_tokens = fn(self.real_tokens)
        if self.attention_mask_history is not None:
            self.attention_mask_history = fn(self.attention_mask_history)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_counters(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_counters(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_counters(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a TTT cache cannot be rolled back (assisted generation is not supported)")
