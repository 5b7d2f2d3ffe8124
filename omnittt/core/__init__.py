"""Pure model code: TTT ops, layers and cache, TTT Llama, the speech model, presets, tokenizer, prompt
builder and speech arithmetic. No file I/O beyond from_pretrained/save_pretrained-style loading, no CLI,
no printing.

Names are imported lazily so that `import omnittt.core` stays cheap for the parts that need no torch.
"""

from __future__ import annotations

from omnittt._lazy import lazy_exports

# public name -> module (relative to omnittt.core) that defines it
_EXPORTS: dict[str, str] = {
    # constants
    "SPEECH_TOKEN_INDEX": "constants",
    "IGNORE_INDEX": "constants",
    "DEFAULT_SPEECH_TOKEN": "constants",
    "SYSTEM_PROMPT": "constants",
    # speech arithmetic
    "SAMPLE_RATE": "speech",
    "SEGMENT_SAMPLES": "speech",
    "split_segments": "speech",
    "segment_positions": "speech",
    "speech_positions": "speech",
    "sample_positions": "speech",
    "padding_for": "speech",
    "padded_positions": "speech",
    # tokenizer
    "build_default_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "tokenizer_fingerprint": "tokenizer",
    "tokenizer_settings": "tokenizer",
    "chat_tokens": "tokenizer",
    # prompt builder
    "Exchange": "prompt",
    "PromptBuilder": "prompt",
    "PromptSample": "prompt",
    "pair_turns": "prompt",
    "concatenate": "prompt",
    "decode_with_speech": "prompt",
    "render_conversation": "prompt",
    # TTT op (dual form over full mini-batches, primal form for partial ones)
    "ttt_mlp": "ttt_ops",
    "ttt_linear": "ttt_ops",
    "ttt_mlp_partial": "ttt_ops",
    "ttt_linear_partial": "ttt_ops",
    "ttt_commit": "ttt_ops",
    "inner_loss": "ttt_ops",
    # TTT settings (pure Python), layers and cache
    "TTTConfig": "ttt_config",
    "DEFAULT_TTT_BASE_LR": "ttt_config",
    "TTTMLP": "ttt_layer",
    "TTTLinear": "ttt_layer",
    "build_ttt_layer": "ttt_layer",
    "TTTCache": "ttt_cache",
    "TTTCacheLayer": "ttt_cache",
    # TTT Llama
    "TTTLlamaModel": "ttt_llama",
    "TTTLlamaForCausalLM": "ttt_llama",
    "convert_llama_to_ttt": "ttt_llama",
    "prepare_ttt_config": "ttt_llama",
    # speech features, encoder + projector, the OmniTTT model, presets, loading
    "build_feature_extractor": "features",
    "log_mel": "features",
    "SpeechProjector": "speech_encoder",
    "encode_segments": "speech_encoder",
    "splice_speech": "speech_encoder",
    "OmniTTTConfig": "modeling_omnittt",
    "OmniTTTForCausalLM": "modeling_omnittt",
    "PRESETS": "presets",
    "build_model": "presets",
    "preset_config": "presets",
    "model_summary": "presets",
    "parameter_group": "presets",
    "load_model": "loading",
    "detect_layout": "loading",
    "LoadResult": "loading",
    "LoadReport": "loading",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
