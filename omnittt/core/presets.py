"""Model presets, the model summary checked at every load, and which group each parameter belongs to.

`tiny`: random init, CPU-sized; it keeps Whisper's shapes (3000 mel frames -> 1500 frames -> 300 positions per
30 s), so the speech arithmetic is the same for every preset, but its encoder runs on each turn's speech only
(`speech_encoder_window="speech"`), since no pretrained weights expect the padded 30 s window.
`llama-omni-8b`: the published shapes of LLaMA-Omni (Llama-3.1-8B-Instruct with GQA, Whisper-large-v3 encoder,
projector 6400 -> 2048 -> 4096) with TTT layers 24-31 and `speech_positions="full"`, what the released weights
were trained with.
"""

from __future__ import annotations

import functools
import re
from contextlib import nullcontext
from typing import Any

import torch
from transformers import LlamaConfig, WhisperConfig

from omnittt.core.modeling_omnittt import (
    OmniTTTConfig,
    OmniTTTForCausalLM,
    is_ttt_state_param,
    ttt_modules,
)
from omnittt.core.tokenizer import build_default_tokenizer, chat_tokens
from omnittt.core.ttt_config import TTTConfig
from omnittt.errors import UserError

PRESETS = ("tiny", "llama-omni-8b")

TOP_LEVEL_KEYS = ("speech_positions", "speech_projector_dim", "speech_ds_rate", "speech_encoder_window")

# Llama-3.1-8B-Instruct as released in ICTNLP/Llama-3.1-8B-Omni's config.json.
LLAMA_31_8B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    },
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "pad_token_id": 128004,  # <|finetune_right_pad_id|>
    "tie_word_embeddings": False,
}
# Whisper-large-v3's encoder (openai-whisper dims: n_mels 128, n_audio_state 1280, 32 layers, 20 heads).
WHISPER_LARGE_V3: dict[str, Any] = {
    "num_mel_bins": 128,
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "decoder_layers": 1,  # the decoder is never built; keep its config small
    "decoder_attention_heads": 20,
    "vocab_size": 51866,
}
TINY_WHISPER: dict[str, Any] = {
    "num_mel_bins": 80,
    "d_model": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "max_source_positions": 1500,  # the 30 s window, as every preset
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    # With Whisper's default 0.02 init a random encoder's output is dominated by its positional embedding (two
    # different sounds differ by ~1%); at 0.1 (cosine ~0.97) a model on the frozen encoder still did not learn
    # to tell two sounds apart in 200 steps; at 0.2 it does in ~70 (tests/core/test_speech_model.py, slow).
    "init_std": 0.2,
}
# A further gain on the tiny encoder's two convs at build time: with init_std alone the trained model still ignored
# the speech content on the synthetic corpus (swapped - true validation loss at noise level after 600 steps);
# with the convs x7 the same training reaches +0.0046 nats at 150 steps (tests/train/test_learning.py, slow).
TINY_CONV_GAIN = 7.0


@functools.lru_cache(maxsize=1)
def _default_tokenizer_ids() -> dict[str, Any]:
    tok = build_default_tokenizer()
    ids = chat_tokens(tok)
    return {"vocab_size": len(tok), "bos_token_id": ids.bos, "eos_token_id": ids.eot, "pad_token_id": ids.pad}


def _tiny_text() -> dict[str, Any]:
    return {
        **_default_tokenizer_ids(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # GQA, as the real model
        "max_position_embeddings": 65536,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False,
    }


def preset_config(preset: str, **overrides: Any) -> OmniTTTConfig:
    """The `OmniTTTConfig` of a preset with overrides: TTT keys and any `LlamaConfig` attribute go to the
    text config, `speech_positions`/`speech_projector_dim`/`speech_ds_rate` to the top, `speech_config` (a
    dict) updates the Whisper config."""
    if preset == "tiny":
        text, speech, top = _tiny_text(), dict(TINY_WHISPER), {"speech_projector_dim": 128}
        text.update(TTTConfig(ttt_layers=[2, 3]).to_dict())
        top["speech_positions"] = "trim"
    elif preset == "llama-omni-8b":
        text, speech, top = dict(LLAMA_31_8B), dict(WHISPER_LARGE_V3), {"speech_projector_dim": 2048}
        text.update(TTTConfig(ttt_layers=list(range(24, 32))).to_dict())
        top["speech_positions"] = "full"
    else:
        raise UserError(f"unknown preset {preset!r}", fix=f"choose one of: {', '.join(PRESETS)}")
    preset_ttt_layers = list(text["ttt_layers"])
    known_text = set(LlamaConfig().to_dict()) | set(TTTConfig.keys())
    for key, value in overrides.items():
        if key in TOP_LEVEL_KEYS:
            top[key] = value
        elif key == "speech_config":
            speech.update(value)
        elif key in known_text:
            text[key] = value
        else:
            raise UserError(
                f"unknown model setting {key!r}",
                fix="use a TTT key (ttt_layers, ttt_type, ...), a LlamaConfig attribute, speech_positions, "
                "or speech_config={...}",
            )
    if preset == "tiny" and top["speech_positions"] == "trim":
        # from scratch, no pretrained weights expect the 30 s window: the encoder sees each turn's speech only
        top.setdefault("speech_encoder_window", "speech")
    text["ttt_layers"] = sorted(int(i) for i in text["ttt_layers"])
    check_ttt_layers(text["ttt_layers"], text["num_hidden_layers"])
    if not text["ttt_layers"]:
        # the attention-only baseline: its attention in the layers the preset makes TTT is what it is compared on
        text.setdefault(BASELINE_LAYERS_KEY, preset_ttt_layers)
    return OmniTTTConfig(text_config=LlamaConfig(**text), speech_config=WhisperConfig(**speech), **top)


def check_ttt_layers(layers: list[int], n_layers: int) -> None:
    """`TTTConfig.validate`'s layer check as a `UserError`, a layer listed twice refused too (before a model is
    built, which would drop the repeat)."""
    try:
        TTTConfig(ttt_layers=list(layers)).validate(n_layers, distinct=True)
    except ValueError:
        raise UserError(
            f"ttt_layers {layers} do not fit a model of {n_layers} layers",
            fix=f"pick distinct indices in 0..{n_layers - 1}",
        ) from None


def build_model(
    preset: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, **overrides: Any
) -> OmniTTTForCausalLM:
    """Build a preset (random init). `device="meta"` builds the shapes without memory. The speech encoder
    starts frozen (LLaMA-Omni practice). The model summary is checked before returning."""
    config = preset_config(preset, **overrides)
    with torch.device(device) if str(device) != "cpu" else nullcontext():
        model = OmniTTTForCausalLM(config)
    if preset == "tiny" and str(device) != "meta":
        with torch.no_grad():
            model.speech_encoder.conv1.weight.mul_(TINY_CONV_GAIN)
            model.speech_encoder.conv2.weight.mul_(TINY_CONV_GAIN)
    if dtype is not None:
        model = model.to(dtype)  # the TTT inner state stays float32 (ttt_layer.FP32_PARAMS)
    for name, param in model.named_parameters():  # everything trains but the speech encoder
        param.requires_grad_(parameter_group(model, name) != "encoder")
    model_summary(model)
    return model


# -- parameter groups (trainable subsets and optimiser groups: omnittt.train.trainable) -----------------------
GROUPS = ("ttt_init", "ttt", "projector", "llm", "encoder")
# Text-config attribute of an attention-only model: the layers where the preset puts TTT layers. Their attention
# joins the "ttt" group, so `--train ttt,...` trains in the baseline what it trains in the TTT model it stands
# beside.
BASELINE_LAYERS_KEY = "attention_baseline_layers"
_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.self_attn\.")


def parameter_group(model: OmniTTTForCausalLM, name: str) -> str:
    """Which optimiser group a parameter belongs to."""
    if name.startswith("speech_encoder."):
        return "encoder"
    if name.startswith("speech_projector."):
        return "projector"
    owner = name.rsplit(".", 1)[0]
    if owner in _ttt_module_names(model):
        return "ttt_init" if is_ttt_state_param(name) else "ttt"
    if any(owner.startswith(prefix + ".") for prefix in _ttt_module_names(model)):
        return "ttt"
    layer = _LAYER.match(name)
    if layer and int(layer.group(1)) in (getattr(model.config.text_config, BASELINE_LAYERS_KEY, None) or ()):
        return "ttt"
    return "llm"


def _ttt_module_names(model: torch.nn.Module) -> frozenset[str]:
    return frozenset(name for name, _ in ttt_modules(model))


# -- summary ---------------------------------------------------------------------------------------------
def model_summary(model: OmniTTTForCausalLM) -> dict[str, Any]:
    """TTT layers, parameter counts and dtypes by group; raises if the model does not match its config
    (TTT layers missing or extra, TTT inner state not float32, non-finite TTT parameters)."""
    text = model.config.text_config
    expected = list(getattr(text, "ttt_layers", []) or [])
    found = sorted(_layer_index(name) for name, _ in ttt_modules(model))
    if found != expected:
        raise ValueError(f"model has TTT layers {found} but its config says {expected}")
    counts = dict.fromkeys(GROUPS, 0)
    trainable = dict.fromkeys(GROUPS, 0)
    dtypes: dict[str, set[str]] = {g: set() for g in GROUPS}
    for name, param in model.named_parameters():
        group = parameter_group(model, name)
        counts[group] += param.numel()
        trainable[group] += param.numel() if param.requires_grad else 0
        dtypes[group].add(str(param.dtype).replace("torch.", ""))
        if group == "ttt_init" and is_ttt_state_param(name):
            if param.dtype != torch.float32:
                raise ValueError(f"TTT inner-state parameter {name} is {param.dtype}, must stay float32")
            if param.device.type != "meta" and not bool(torch.isfinite(param).all()):
                raise ValueError(f"TTT parameter {name} holds non-finite values (uninitialised load?)")
    llm = counts["llm"] + counts["ttt"] + counts["ttt_init"]
    return {
        "ttt_layers": found,
        "num_ttt_layers": len(found),
        "num_layers": text.num_hidden_layers,
        "ttt_type": getattr(text, "ttt_type", None),
        "ttt_mode": getattr(text, "ttt_mode", None),
        "ttt_mini_batch_size": getattr(text, "ttt_mini_batch_size", None),
        "attention_window": getattr(text, "attention_window", None),
        "speech_positions": model.config.speech_positions,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        "n_mels": model.config.speech_config.num_mel_bins,
        "parameters": {
            **counts,
            "llm_total": llm,
            "total": sum(counts.values()),
        },
        "trainable": {**trainable, "total": sum(trainable.values())},
        "dtypes": {g: sorted(d) for g, d in dtypes.items()},
        "device": str(next(model.parameters()).device),
    }


def _layer_index(module_name: str) -> int:
    parts = module_name.split(".")
    return int(parts[parts.index("layers") + 1])
