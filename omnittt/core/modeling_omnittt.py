"""OmniTTT: Whisper encoder -> k=5 concat projector -> TTT Llama, trained and run conversation by conversation.

One call processes one exchange (or several concatenated) of a batch of conversations: the speech segments'
log-mel features are encoded, projected and spliced where the `<speech>` placeholders (-200) are, and the TTT
Llama continues from the cache it is given, so TTT state and attention KV carry from exchange to exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, LlamaConfig, PreTrainedConfig, PreTrainedModel, WhisperConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omnittt.core.audio_objective import build_audio_head
from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.hf_compat import CACHE_ARG, CACHE_FIELD, output_cache, take_cache
from omnittt.core.speech import FULL_POSITIONS, SEGMENT_SAMPLES, SPEECH_POSITION_MODES
from omnittt.core.speech_encoder import (
    SPEECH_ENCODER_WINDOWS,
    SpeechProjector,
    encode_segments,
    splice_speech,
)
from omnittt.core.ttt_cache import TTTCache
from omnittt.core.ttt_layer import FP32_PARAMS
from omnittt.core.ttt_llama import TTTLlamaForCausalLM

# Whisper's 30 s window: 3000 mel frames -> 1500 encoder positions. The speech arithmetic assumes it.
WHISPER_SOURCE_POSITIONS = 1500
# TTT parameters that hold (the initial value of) the inner state: float32 whatever the model is cast to
# (how: `ttt_layer.FP32_PARAMS`).
TTT_STATE_PARAMS = FP32_PARAMS


class OmniTTTConfig(PreTrainedConfig):
    """`text_config`: a `LlamaConfig` carrying the TTT attributes (`ttt_layers`, `ttt_type`, `ttt_mode`,
    `ttt_mini_batch_size`, `ttt_base_lr`, `attention_window`); `speech_config`: a `WhisperConfig` (only its
    encoder part is built)."""

    model_type = "omnittt"
    sub_configs_defaults = {"text_config": LlamaConfig, "speech_config": WhisperConfig}

    text_config: dict | PreTrainedConfig | None = None
    speech_config: dict | PreTrainedConfig | None = None
    speech_projector_dim: int = 2048  # LLaMA-Omni's linear1 output
    speech_ds_rate: int = 5  # k: encoder frames concatenated per LLM position
    speech_positions: str = "trim"  # "trim": ceil(n/1600) positions per segment; "full": 300
    # "full": the encoder sees Whisper's 30 s window (pretrained weights need it); "speech": only each segment's
    # own frames (encoders trained from scratch; ~15x less encoder work for a 2 s turn)
    speech_encoder_window: str = "full"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.speech_positions not in SPEECH_POSITION_MODES:
            raise ValueError(
                f"speech_positions must be one of {SPEECH_POSITION_MODES}, got {self.speech_positions!r}"
            )
        if self.speech_encoder_window not in SPEECH_ENCODER_WINDOWS:
            raise ValueError(f"speech_encoder_window must be one of {SPEECH_ENCODER_WINDOWS}, "
                             f"got {self.speech_encoder_window!r}")
        if self.speech_encoder_window == "speech" and self.speech_positions != "trim":
            raise ValueError('speech_encoder_window="speech" needs speech_positions="trim" ("full" keeps 300 '
                             "positions per segment, which the whole window feeds)")
        source = self.speech_config.max_source_positions
        if source != WHISPER_SOURCE_POSITIONS or source // self.speech_ds_rate != FULL_POSITIONS:
            raise ValueError(
                f"the speech encoder must keep Whisper's 30 s window (max_source_positions="
                f"{WHISPER_SOURCE_POSITIONS}, speech_ds_rate=5 -> {FULL_POSITIONS} positions per "
                f"{SEGMENT_SAMPLES} samples), got max_source_positions={source}, "
                f"speech_ds_rate={self.speech_ds_rate}"
            )

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        return self.text_config

    @property
    def pad_token_id_for_splice(self) -> int:
        pad = self.text_config.pad_token_id
        return int(pad) if pad is not None else 0


def is_ttt_state_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in TTT_STATE_PARAMS


def ttt_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, "is_ttt_layer", False)]


class OmniTTTPreTrainedModel(PreTrainedModel):
    config_class = OmniTTTConfig
    base_model_prefix = "omnittt"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False  # our own checkpointing keeps the cache (docs/architecture.md)
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["LlamaDecoderLayer", "WhisperEncoderLayer"]
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, SpeechProjector):
            std = self.config.text_config.initializer_range
            for linear in (module.linear1, module.linear2):
                torch.nn.init.normal_(linear.weight, mean=0.0, std=std)
                torch.nn.init.zeros_(linear.bias)


class OmniTTTForCausalLM(OmniTTTPreTrainedModel, GenerationMixin):
    def __init__(self, config: OmniTTTConfig) -> None:
        super().__init__(config)
        self.speech_encoder = WhisperEncoder(config.speech_config)
        self.speech_projector = SpeechProjector(
            encoder_dim=config.speech_config.d_model,
            hidden_size=config.text_config.hidden_size,
            k=config.speech_ds_rate,
            projector_dim=config.speech_projector_dim,
        )
        self.language_model = TTTLlamaForCausalLM(config.text_config)
        build_audio_head(self)  # only a model configured for the audio objective has one (audio_objective.py)
        self.post_init()

    # -- embeddings -----------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def encode_speech(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor | Sequence[int]
    ) -> list[torch.Tensor]:
        """One `[positions, hidden]` embedding tensor per speech segment."""
        return encode_segments(
            self.speech_encoder, self.speech_projector, input_features, feature_lengths,
            self.config.speech_positions, out_dtype=self.get_input_embeddings().weight.dtype,
            window=self.config.speech_encoder_window,
        )

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_positions: torch.Tensor | Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Spliced `(inputs_embeds, attention_mask, labels)` for the TTT Llama (see `splice_speech`)."""
        if input_features is None:
            speech: list[torch.Tensor] = []
        else:
            if feature_lengths is None:
                raise ValueError("input_features need feature_lengths (samples per segment)")
            speech = self.encode_speech(input_features, feature_lengths)
        return splice_speech(
            input_ids, speech, self.get_input_embeddings(), self.config.pad_token_id_for_splice,
            attention_mask=attention_mask, labels=labels, num_positions=num_positions,
        )

    def enable_ttt_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each decoder layer in backward with the cache passed through (never transformers'
        `gradient_checkpointing_enable()`, which drops the cache and cuts the TTT state between exchanges)."""
        self.language_model.enable_ttt_checkpointing(enabled)

    def new_cache(self) -> Any:
        """An empty `TTTCache` for a new batch of conversations (exchange 0)."""
        return TTTCache(self.config.text_config)

    # -- forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        collect_ttt_stats: bool = False,
        num_positions: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Loss = mean cross-entropy over labels != -100 (shifted inside the chunk); logits; the cache that
        carries TTT state and attention KV into the next call (`cache=`; `past_key_values=` is its old name)."""
        cache = take_cache(cache, past_key_values, kwargs, "OmniTTT")
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids (with -200 speech placeholders) or inputs_embeds")
            inputs_embeds, attention_mask, labels = self.embed_inputs(
                input_ids, input_features, feature_lengths, attention_mask, labels, num_positions
            )
        elif attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if collect_ttt_stats:
            kwargs["collect_ttt_stats"] = True
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{CACHE_ARG: cache},
            **kwargs,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            loss = shifted_cross_entropy(logits, labels)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: output_cache(outputs)},
        )

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Generate the assistant reply after a prompt that ends with the assistant header, continuing
        `cache` (the conversation's `TTTCache`, updated in place; a new one when None). Takes the
        usual `generate()` keywords (greedy, sampling, beams, streamer, ...) and returns the new tokens only
        (or the output object with `.sequences` cut the same way). Rows of a batch must be left-padded.

        As in any `generate()`, the last generated token has not gone through the model: feed it (then
        `cache.end_turn()`) before the next exchange."""
        if attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("generation prompts must end with a real token in every row (left-pad the batch)")
        if bool((input_ids[:, -1] == SPEECH_TOKEN_INDEX).any()):
            raise ValueError("a generation prompt ends with the assistant header, not a speech placeholder")
        cache = take_cache(cache, past_key_values, generate_kwargs, "OmniTTT.generate")
        cache = cache if cache is not None else self.new_cache()
        # The prompt (with its speech) goes through our forward; generate() continues from its last token,
        # with dummy ids standing for the positions the cache already holds (generate() skips cached ones).
        if input_ids.shape[1] > 1:
            head_mask = attention_mask[:, :-1] if attention_mask is not None else None
            self(input_ids=input_ids[:, :-1], input_features=input_features, feature_lengths=feature_lengths,
                 attention_mask=head_mask, cache=cache, use_cache=True, logits_to_keep=1)
        elif input_features is not None:
            raise ValueError("speech features were given but the prompt has no room for a placeholder")
        seen = cache.get_seq_length()
        batch = input_ids.shape[0]
        pad = self.config.pad_token_id_for_splice
        ids = torch.cat([input_ids.new_full((batch, seen), pad), input_ids[:, -1:]], dim=1)
        generate_kwargs.setdefault("pad_token_id", pad)
        output = self.language_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), **{CACHE_ARG: cache}, **generate_kwargs
        )
        if isinstance(output, torch.Tensor):
            return output[:, seen + 1:]
        output.sequences = output.sequences[:, seen + 1:]
        return output


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over targets != -100 (0 with a graph when there are none, e.g. a batch
    of all-pad exchanges, instead of NaN)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (shift_labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1)
