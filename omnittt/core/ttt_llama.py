"""TTT Llama: a transformers 5.x Llama whose chosen layers are TTT layers, and the conversion from a Llama.

`TTTLlamaModel` keeps Llama's decoder layers and swaps `self_attn` for a TTT layer where `config.ttt_layers` says.
What it adds to `LlamaModel.forward` (docs/architecture.md, "Two position counters per batch row"):

- attention `position_ids` count real tokens only (from the cache's per-row counter), so alignment pads fed in
  training and `end_turn()` in chat give the same attention;
- the 4D masks are built from the cache's per-row past 2D mask + the chunk's mask (pads of earlier exchanges stay
  masked), one per attention kind (full / sliding window when `attention_window` is set);
- TTT layers get the chunk's 2D mask as `ttt_padding_mask` (and `collect_ttt_stats`), never the 4D mask.

Padding goes on the right: pads never change a TTT state, but they do occupy TTT stream positions, so a
left-padded row's mini-batch boundaries (and outputs) differ from the row alone. Rows of a batch share the stream
position modulo b (they do in training: exchanges are aligned to b; in chat after `end_turn()`).
With `attention_window`, the window counts the positions the KV holds, alignment pads included: across an exchange
boundary a training step (pads fed) sees up to b - 1 fewer real tokens in the window than chat (`end_turn()`).

`TTTLlamaForCausalLM` is a `LlamaForCausalLM` with that model, a `TTTCache` in `generate()`, `_is_stateful`
(assisted generation refused: a TTT state cannot be rolled back); the inner state stays float32 on load
(`ttt_layer.FP32_PARAMS`).
Never call `gradient_checkpointing_enable()`: transformers' checkpointing layer drops the cache in training, which
silently cuts the state between exchanges; `enable_ttt_checkpointing()` is the cache-preserving alternative.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from omnittt.core.hf_compat import CACHE_ARG, CACHE_FIELD, take_cache
from omnittt.core.ttt_cache import TTTCache
from omnittt.core.ttt_config import TTTConfig
from omnittt.core.ttt_layer import FP32_PARAMS, TTTBase, build_ttt_layer

logger = logging.getLogger(__name__)

# layer type -> the attention mask it needs (None: a TTT layer without attention)
MASK_KIND = {
    "full_attention": "full",
    "sliding_attention": "sliding",
    "linear_attention": None,
    "hybrid": "full",
    "hybrid_sliding": "sliding",
}


def prepare_ttt_config(config: LlamaConfig) -> LlamaConfig:
    """Fill in the TTT attributes' defaults and validate them (`TTTConfig`), and derive `layer_types` (and
    `sliding_window`)."""
    n = config.num_hidden_layers
    ttt = TTTConfig.from_model_config(config).validate(n)
    ttt.apply_to(config)
    layers, window = ttt.ttt_layers, ttt.attention_window
    config.sliding_window = window
    gated = ttt.ttt_mode == "gated"
    types = []
    for i in range(n):
        if i in layers:
            types.append(("hybrid_sliding" if window else "hybrid") if gated else "linear_attention")
        else:
            types.append("sliding_attention" if window else "full_attention")
    config.layer_types = types
    return config


def _chunk_mask(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """The current chunk's 2D mask `[B, T]` (generate passes past + chunk: its last T columns are the chunk's)."""
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise ValueError(f"TTT Llama takes a 2D attention_mask [B, T], got shape {list(attention_mask.shape)}")
    if attention_mask.shape[1] < length:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions but the input has {length}")
    return attention_mask[:, attention_mask.shape[1] - length:].to(device=device, dtype=torch.bool)


class TTTLlamaModel(LlamaModel):
    """`LlamaModel` with TTT layers at `config.ttt_layers` and the TTT cache's position and mask bookkeeping."""

    def __init__(self, config: LlamaConfig):
        prepare_ttt_config(config)
        super().__init__(config)
        for i in config.ttt_layers:
            self.layers[i].self_attn = build_ttt_layer(config, i)
        self.mask_kinds = [MASK_KIND[t] for t in config.layer_types]
        self.ttt_checkpointing = False
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # new TTT parameters are initialised here, on the inner model: on from_pretrained transformers dispatches
        # `_init_weights` to the PreTrainedModel that owns them (on the outer class they would load as garbage)
        super()._init_weights(module)
        if isinstance(module, TTTBase):
            module.reset_ttt_parameters()

    def ttt_modules(self) -> list[TTTBase]:
        return [layer.self_attn for layer in self.layers if isinstance(layer.self_attn, TTTBase)]

    def _attention_masks(self, cache: TTTCache, inputs_embeds: torch.Tensor, full_mask: torch.Tensor | None,
                         position_ids: torch.Tensor) -> dict[str | None, Any]:
        """The attention mask of each mask kind the layers use ("full", "sliding"; None for TTT layers), built
        once per forward over the cached history and this chunk."""
        masks: dict[str | None, Any] = {None: None}
        for kind, make in (("full", create_causal_mask), ("sliding", create_sliding_window_causal_mask)):
            idx = cache.attention_layer_index(sliding=kind == "sliding")
            if idx is not None:
                masks[kind] = make(config=self.config, inputs_embeds=inputs_embeds, attention_mask=full_mask,
                                   position_ids=position_ids, layer_idx=idx, **{CACHE_ARG: cache})
        return masks

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: TTTCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        collect_ttt_stats: bool = False,
        past_key_values: TTTCache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        given = take_cache(cache, past_key_values, kwargs, "TTT Llama")
        if given is not None and not isinstance(given, TTTCache):
            raise TypeError(
                f"TTT Llama needs a TTTCache, got {type(given).__name__}; "
                "pass omnittt.core.TTTCache(model.config) or no cache"
            )
        keep_cache = bool(use_cache) or given is not None
        cache = given if given is not None else TTTCache(self.config)
        batch, length = inputs_embeds.shape[:2]
        chunk_mask = _chunk_mask(attention_mask, batch, length, inputs_embeds.device)
        has_attention = any(kind is not None for kind in self.mask_kinds)
        attention_positions, full_mask = cache.attention_inputs(chunk_mask, with_history=has_attention)
        if position_ids is None:
            position_ids = attention_positions

        masks = self._attention_masks(cache, inputs_embeds, full_mask, position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        ttt_kwargs = {
            "ttt_padding_mask": chunk_mask if attention_mask is not None else None,
            "collect_ttt_stats": collect_ttt_stats,
        }
        for decoder_layer, kind in zip(self.layers[: self.config.num_hidden_layers], self.mask_kinds, strict=True):
            layer_kwargs = dict(
                attention_mask=masks[kind],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_ARG: cache},
                **kwargs,
            )
            if isinstance(decoder_layer.self_attn, TTTBase):
                layer_kwargs.update(ttt_kwargs)
            if self.ttt_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = _checkpointed_layer(decoder_layer, hidden_states, layer_kwargs)
            else:
                hidden_states = decoder_layer(hidden_states, **layer_kwargs)
        cache.record_chunk(chunk_mask, keep_history=has_attention)

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_FIELD: cache if keep_cache else None})


def _checkpointed_layer(decoder_layer: nn.Module, hidden_states: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    """One decoder layer under `torch.utils.checkpoint`, the cache passed through.

    The layer writes its new TTT state / KV into the cache during the forward; the recomputation in backward must not
    write again, so it runs against a snapshot of that layer's cache entry taken before the forward, and the cache
    keeps the tensors of the original forward (which hold the graph to the earlier exchanges)."""
    cache: TTTCache = layer_kwargs[CACHE_ARG]
    idx = decoder_layer.self_attn.layer_idx
    before = copy.copy(cache.layers[idx])
    if getattr(before, "kv", None) is not None:
        before.kv = copy.copy(before.kv)
    state = {"first": True}

    def run(hidden: torch.Tensor) -> torch.Tensor:
        if state["first"]:
            state["first"] = False
            return decoder_layer(hidden, **layer_kwargs)
        after = cache.layers[idx]
        cache.layers[idx] = copy.copy(before)
        try:
            return decoder_layer(hidden, **layer_kwargs)
        finally:
            cache.layers[idx] = after

    return checkpoint(run, hidden_states, use_reentrant=False)


class TTTLlamaForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` over `TTTLlamaModel`; `ttt_layers=[]` is the attention-only baseline (same code path)."""

    _is_stateful = True
    _can_compile_fullgraph = False

    def __init__(self, config: LlamaConfig):
        LlamaPreTrainedModel.__init__(self, config)  # not LlamaForCausalLM.__init__: it would build a plain Llama first
        self.model = TTTLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def new_cache(self) -> TTTCache:
        return TTTCache(self.config)

    def ttt_summary(self) -> dict[str, Any]:
        """Which layers are TTT, how many parameters the model and its TTT layers have."""
        modules = self.model.ttt_modules()
        return {
            "ttt_layers": [m.layer_idx for m in modules],
            "num_ttt_layers": len(modules),
            "num_layers": self.config.num_hidden_layers,
            "ttt_type": self.config.ttt_type,
            "ttt_mode": self.config.ttt_mode,
            "ttt_mini_batch_size": self.config.ttt_mini_batch_size,
            "ttt_base_lr": TTTConfig.from_model_config(self.config).inner_lr,
            "attention_window": self.config.attention_window,
            "parameters": sum(p.numel() for p in self.parameters()),
            "ttt_parameters": sum(p.numel() for m in modules for p in m.parameters()),
        }

    def enable_ttt_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each decoder layer in backward (our own `torch.utils.checkpoint`, the cache passed through)."""
        self.model.ttt_checkpointing = enabled

    def gradient_checkpointing_enable(self, *args, **kwargs) -> None:
        raise RuntimeError(
            "transformers' gradient checkpointing drops the cache in training and would silently cut the TTT state "
            "between exchanges; use model.enable_ttt_checkpointing() instead"
        )

    def generate(self, *args, **kwargs) -> Any:
        """transformers' `generate()`, refusing assisted generation up front: it rolls the cache back, which a
        TTT state cannot do (transformers releases differ in whether and where they check `_is_stateful`)."""
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens"):
            raise ValueError("assisted generation is not supported: the TTT model is stateful and its cache "
                             "cannot be rolled back (drop assistant_model / prompt_lookup_num_tokens)")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        inputs.pop("position_ids", None)  # attention positions come from the cache's real-token counters
        return inputs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        if model_kwargs.get(CACHE_ARG) is None and generation_config.use_cache is not False:
            model_kwargs[CACHE_ARG] = TTTCache(self.config)
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def check_finite_ttt_parameters(self) -> None:
        """Raise if a TTT parameter is NaN/inf (a missed initialisation after loading)."""
        for name, param in self.named_parameters():
            if ".self_attn." in name and param.device.type != "meta" and not torch.isfinite(param).all():
                raise ValueError(f"TTT parameter {name} is not finite after loading")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, plus two checks: the TTT parameters are finite, and in `gated` mode the attention
        kept beside TTT was in the checkpoint (a plain Llama checkpoint has it under another name: convert it with
        `convert_llama_to_ttt` instead of silently starting that attention from random weights)."""
        wants_info = kwargs.get("output_loading_info", False)
        model, info = super().from_pretrained(*args, **{**kwargs, "output_loading_info": True})
        lost = [key for key in info["missing_keys"] if ".self_attn.attention." in key]
        if lost:
            raise ValueError(
                f"the checkpoint has no weights for the attention kept in gated TTT layers ({lost[0]}, ...); "
                "load it as a LlamaForCausalLM and use convert_llama_to_ttt(model, ..., mode='gated')"
            )
        model.check_finite_ttt_parameters()
        return (model, info) if wants_info else model


def convert_llama_to_ttt(
    model: LlamaForCausalLM,
    ttt_layers: Sequence[int],
    mini_batch_size: int = 64,
    ttt_base_lr: float | None = None,
    ttt_type: str = "mlp",
    mode: str = "replace",
    attention_window: int | None = None,
) -> TTTLlamaForCausalLM:
    """A `TTTLlamaForCausalLM` sharing `model`'s weights (by reference), with TTT layers at `ttt_layers` whose
    q/k/v/o start from the attention they replace (in `gated` mode that attention is also kept, as is). Works on the
    meta device. Logs and checks the number of converted layers."""
    config = copy.deepcopy(model.config)
    config.ttt_layers = list(ttt_layers)
    config.ttt_type = ttt_type
    config.ttt_mode = mode
    config.ttt_mini_batch_size = mini_batch_size
    config.ttt_base_lr = ttt_base_lr
    config.attention_window = attention_window
    prepare_ttt_config(config)
    config.architectures = [TTTLlamaForCausalLM.__name__]

    source = model.state_dict()
    params = list(model.parameters())
    device = params[0].device
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    with torch.device("meta"):
        converted = TTTLlamaForCausalLM(config)
    target = dict(source)
    if mode == "gated":
        for i in config.ttt_layers:
            prefix = f"model.layers.{i}.self_attn."
            for key, value in source.items():
                if key.startswith(prefix):
                    target[prefix + "attention." + key[len(prefix):]] = value
    result = converted.load_state_dict(target, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"conversion left weights unused: {result.unexpected_keys[:5]}")
    converted.model.rotary_emb = model.model.rotary_emb  # non-persistent inv_freq buffers are not in the state dict
    for module in converted.model.ttt_modules():
        _materialise(module, device, dtype)
        if device.type != "meta":
            with torch.no_grad():
                module.reset_ttt_parameters()
    if config.tie_word_embeddings:
        converted.tie_weights()
    missing = [k for k in result.missing_keys if ".self_attn." not in k and not k.endswith("lm_head.weight")]
    if missing:
        raise ValueError(f"conversion found no source weights for {missing[:5]}")

    summary = converted.ttt_summary()
    if summary["num_ttt_layers"] != len(config.ttt_layers):
        raise RuntimeError(f"converted {summary['num_ttt_layers']} TTT layers, expected {len(config.ttt_layers)}")
    logger.info(
        "converted %d of %d layers to TTT-%s (%s): %s; %.1fM parameters, %.1fM in TTT layers",
        summary["num_ttt_layers"], summary["num_layers"], ttt_type, mode, summary["ttt_layers"],
        summary["parameters"] / 1e6, summary["ttt_parameters"] / 1e6,
    )
    return converted.train(model.training)


def _materialise(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give the TTT parameters the conversion did not load real storage (float32 for the inner state)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not param.is_meta or device.type == "meta":
                continue
            # FP32_PARAMS (4) in ttt_layer.py: the inner state is float32 whatever the source model's dtype
            target_dtype = torch.float32 if name in FP32_PARAMS and sub is module else dtype
            sub._parameters[name] = nn.Parameter(torch.empty(param.shape, dtype=target_dtype, device=device),
                                                 requires_grad=param.requires_grad)
