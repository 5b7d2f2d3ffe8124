"""The TTT cache: per-row TTT state for TTT layers, KV for attention layers, and the two position counters.

`TTTCache` is a transformers 5.x `Cache`, so `generate()` and beam search drive it like any other cache. What it
adds (docs/architecture.md "core: TTT op, layers, cache, models"):

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
from typing import Any

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


def _kv_positions(kv: DynamicLayer | None) -> int:
    return 0 if kv is None or not kv.is_initialized or kv.keys is None or kv.keys.numel() == 0 else kv.keys.shape[-2]


def _kv_state_dict(kv: DynamicLayer | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not _kv_positions(kv):
        return {}, {}
    return {"keys": kv.keys, "values": kv.values}, {"cumulative_length": getattr(kv, "cumulative_length", None)}


def _kv_load_state_dict(kv: DynamicLayer | None, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    keys, values = tensors.get("keys"), tensors.get("values")
    if kv is None or keys is None:
        return
    kv.lazy_initialization(keys, values)
    kv.keys, kv.values = keys, values
    if info.get("cumulative_length") is not None:
        kv.cumulative_length = int(info["cumulative_length"])


def _kv_summary(kv: DynamicLayer | None) -> dict[str, Any]:
    held = _kv_positions(kv)
    if kv is None:
        return {}
    if not held:
        return {"kv_positions": 0}
    return {"kv_positions": held, "kv_dtype": str(kv.keys.dtype).removeprefix("torch."),
            "kv_bytes": sum(t.numel() * t.element_size() for t in (kv.keys, kv.values))}


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

    def tensors(self, group: str = "state") -> dict[str, torch.Tensor]:
        """The runtime state ("state") or the unfinished mini-batch's gradient sum ("grads") by name ({} if none);
        a new dict, so callers cannot rebind the layer's own entries."""
        if group not in ("state", "grads"):
            raise ValueError(f"group must be 'state' or 'grads', got {group!r}")
        return dict(getattr(self, group) or {})

    def to_float32(self, group: str, name: str) -> None:
        """Put one runtime tensor back to float32, keeping its graph (the FP32 enforcer's repair)."""
        held = getattr(self, group)
        held[name] = held[name].float()

    def positions(self) -> torch.Tensor | None:
        """The TTT stream position of every row (None before the first forward)."""
        return self.stream_position

    def current_stats(self) -> dict[str, Any]:
        """The statistics of the last call made with `collect_ttt_stats=True`, or {} when they describe an earlier
        state (a later call, or rows reset since)."""
        stats = self.stats or {}
        logged, current = stats.get("stream_position"), self.stream_position
        if isinstance(logged, torch.Tensor) and isinstance(current, torch.Tensor) and not (
                logged.shape == current.shape and bool(torch.equal(logged.to(current.device), current))):
            return {}
        return stats

    def state_for_report(self, init: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """The state as the next forward will read it: rows reset individually hold their old tensors until then,
        and are reported as the learned `init` they already are (None before the first forward)."""
        if self.state is None:
            return None
        if self.reset_rows is None or not bool(self.reset_rows.any()) or not init:
            return self.state
        rows = self.reset_rows
        return {k: torch.where(rows.to(v.device).reshape(-1, *[1] * (v.dim() - 1)),
                               init[k].detach().to(v.dtype).expand_as(v), v) if k in init else v
                for k, v in self.state.items()}

    def summary(self, init: dict[str, torch.Tensor], row: int = 0) -> dict[str, Any]:
        """One row's state norms (the learned `init` before the first forward), dtype, stream position, positions
        into the unfinished mini-batch, state bytes and the KV it keeps."""
        initial = self.state is None
        tensors = init if initial else {k: v[row] for k, v in self.state.items()}
        position = 0 if self.stream_position is None else int(self.stream_position[row])
        return {"initial": initial, "norms": {k: float(v.detach().float().norm()) for k, v in tensors.items()},
                "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
                "stream_position": position, "pending": self.offset,
                "state_bytes": 0 if initial else sum(t.numel() * t.element_size() for t in self.state.values()),
                **_kv_summary(self.kv)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The layer between turns: its tensors by name and the plain values that go with them."""
        if self.reset_rows is not None:
            raise ValueError("a cache with rows reset individually cannot be saved; save between turns")
        tensors = {f"{group}.{k}": v for group in ("state", "grads") for k, v in (getattr(self, group) or {}).items()}
        for name in ("pending_eta", "stream_position"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        kv_tensors, kv_info = _kv_state_dict(self.kv)
        return {**tensors, **kv_tensors}, {"offset": self.offset, **kv_info}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        for group in ("state", "grads"):
            found = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(group + ".")}
            setattr(self, group, found or None)
        self.pending_eta = tensors.get("pending_eta")
        self.stream_position = tensors.get("stream_position")
        self.offset = int(info["offset"])
        self.has_previous_state[0] = self.state is not None
        _kv_load_state_dict(self.kv, tensors, info)

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

    def real_positions(self, row: int = 0) -> int:
        """Real tokens (and speech positions) of `row`'s conversation so far: what attention counts."""
        return 0 if self.real_tokens is None else int(self.real_tokens[row])

    # -- inspection and save / load (chat's /state, /save and /load)
    def summary(self, initial_states: dict[int, dict[str, torch.Tensor]], row: int = 0) -> dict[str, Any]:
        """Per layer what `row` holds (TTT layers: `TTTCacheLayer.summary` with their learned init from
        `initial_states`; attention: KV positions), the positions fed and the bytes of state, KV and mask history."""
        layers = []
        for idx, layer in enumerate(self.layers):
            if isinstance(layer, TTTCacheLayer):
                layers.append({"layer": idx, "kind": "ttt", **layer.summary(initial_states[idx], row)})
            else:
                kind = "sliding-attention" if layer.is_sliding else "attention"
                layers.append({"layer": idx, "kind": kind, **_kv_summary(layer)})
        history = self.attention_mask_history
        return {"positions_fed": self.seen_positions, "layers": layers,
                "ttt_state_bytes": sum(entry.pop("state_bytes", 0) for entry in layers),
                "kv_bytes": sum(entry.pop("kv_bytes", 0) for entry in layers),
                "mask_history_bytes": 0 if history is None else history.numel() * history.element_size()}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the cache holds between turns: CPU tensors by name (`layers.<i>.<name>` and the attention
        counters) and a JSON-able description that `load_state_dict` needs beside them."""
        tensors: dict[str, torch.Tensor] = {}
        layers: dict[str, Any] = {}
        for idx, layer in enumerate(self.layers):
            own, info = layer.state_dict() if isinstance(layer, TTTCacheLayer) else _kv_state_dict(layer)
            tensors.update({f"layers.{idx}.{k}": v for k, v in own.items()})
            layers[str(idx)] = info
        for name in ("real_tokens", "attention_mask_history"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value.to(torch.uint8) if value.dtype == torch.bool else value
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        return tensors, {"seen_positions": self.seen_positions, "layers": layers,
                         "mask_history_bool": self.attention_mask_history is not None}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], info: dict[str, Any],
                        device: torch.device | str = "cpu") -> None:
        """Restore what `state_dict` returned, onto `device`."""
        for idx, layer in enumerate(self.layers):
            prefix = f"layers.{idx}."
            own = {k[len(prefix):]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
            layer_info = info["layers"][str(idx)]
            if isinstance(layer, TTTCacheLayer):
                layer.load_state_dict(own, layer_info)
            else:
                _kv_load_state_dict(layer, own, layer_info)
        real = tensors.get("real_tokens")
        self.real_tokens = None if real is None else real.to(device)
        history = tensors.get("attention_mask_history")
        self.attention_mask_history = None if history is None else history.to(device=device, dtype=torch.bool)
        self.seen_positions = int(info["seen_positions"])

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
