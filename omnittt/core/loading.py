"""Loading models from local directories (never the hub).

Two layouts:
- our own checkpoints (`save_pretrained` of `OmniTTTForCausalLM`: config.json with `model_type: omnittt`);
- the released LLaMA-Omni layout: an HF Llama checkpoint (config.json with `speech_projector_type` /
  `model_type: omni_speech*_llama`) whose state dict also holds `model.speech_projector.linear1/linear2`, plus
  the Whisper encoder, which LLaMA-Omni keeps outside the checkpoint: an HF Whisper directory or
  openai-whisper's `large-v3.pt` (`{"dims", "model_state_dict"}`, read with `weights_only=True`). A plain
  HF Llama directory loads the same way with a freshly initialised projector.
The attention of the chosen TTT layers initialises their q/k/v/o (same parameter names); the TTT-only
parameters are initialised as new. `speech_generator.*` (LLaMA-Omni's CTC speech head) is reported as
ignored; `tokenizer_model_max_length` is reported and ignored (no silent truncation here).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, WhisperConfig

from omnittt.core.modeling_omnittt import OmniTTTConfig, OmniTTTForCausalLM
from omnittt.core.presets import check_ttt_layers, model_summary
from omnittt.core.ttt_config import TTTConfig
from omnittt.errors import UserError

OMNI_MODEL_TYPES = ("omni_speech_llama", "omni_speech2s_llama")
IGNORED_PREFIXES = ("speech_generator.",)

# openai-whisper AudioEncoder names -> transformers WhisperEncoder names.
_OPENAI_WHISPER_RENAMES = [
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
]


@dataclass
class LoadReport:
    """What a load did beyond copying weights: the layout, keys ignored on purpose, parameters that were
    initialised fresh (TTT-only parameters, a projector missing from a plain Llama), and warnings."""

    layout: str
    source: str
    speech_encoder: str | None = None
    ignored: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    model: OmniTTTForCausalLM
    report: LoadReport


def detect_layout(path: str | os.PathLike) -> str:
    """"omnittt" (our checkpoint), "llama-omni" (released layout) or "llama" (plain HF Llama)."""
    config = _read_config(Path(path))
    model_type = config.get("model_type")
    if model_type == OmniTTTConfig.model_type:
        return "omnittt"
    if model_type in OMNI_MODEL_TYPES or "speech_projector_type" in config:
        return "llama-omni"
    if model_type == "llama":
        return "llama"
    raise UserError(
        f"{path}: config.json has model_type {model_type!r}, not an OmniTTT, LLaMA-Omni or Llama checkpoint",
        fix="point at a local checkpoint directory (a run's checkpoints/step_N, or a LLaMA-Omni download)",
    )


def load_model(
    path: str | os.PathLike,
    *,
    speech_encoder: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> LoadResult:
    """Load a local checkpoint of either layout. `dtype=None` keeps the checkpoint's stored dtype; TTT inner
    state stays float32 whatever the dtype. `overrides` (TTT keys, `speech_positions`) apply to released
    layouts, where they choose the conversion; our own checkpoints carry their configuration."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "omnittt":
        if overrides:
            raise UserError(
                f"{path}: an OmniTTT checkpoint carries its own configuration; cannot override "
                f"{', '.join(sorted(overrides))}",
                fix="drop the model overrides, or convert from the base LLaMA-Omni checkpoint instead",
            )
        model = OmniTTTForCausalLM.from_pretrained(
            str(path), dtype=_torch_dtype(dtype) or "auto", local_files_only=True
        )
        report = LoadReport(layout=layout, source=str(path))
    else:
        model, report = _load_released(path, layout, speech_encoder, _torch_dtype(dtype), overrides)
    model.to(device)
    report.summary = model_summary(model)
    for message in report.warnings:
        warnings.warn(message, stacklevel=2)
    return LoadResult(model=model, report=report)


# -- released LLaMA-Omni / plain Llama ---------------------------------------------------------------------
def _load_released(
    path: Path, layout: str, speech_encoder: str | os.PathLike | None, dtype: torch.dtype | None,
    overrides: dict[str, Any],
) -> tuple[OmniTTTForCausalLM, LoadReport]:
    raw = _read_config(path)
    report = LoadReport(layout=layout, source=str(path))
    if raw.get("tokenizer_model_max_length") is not None:
        report.warnings.append(
            f"{path}: tokenizer_model_max_length={raw['tokenizer_model_max_length']} ignored (LLaMA-Omni "
            "truncated inputs there; OmniTTT never truncates a conversation)"
        )
    encoder_path = _resolve_speech_encoder(path, raw, speech_encoder)
    report.speech_encoder = str(encoder_path)
    speech_config, encoder_state = load_whisper_encoder_state(encoder_path)

    llm_state = _read_state_dict(path)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in llm_state.items():
        if key.startswith(IGNORED_PREFIXES):
            report.ignored.append(key)
        elif key.startswith("model.speech_projector."):
            state["speech_projector." + key.removeprefix("model.speech_projector.")] = tensor
        elif key.startswith("model.speech_encoder."):
            report.ignored.append(key)  # the encoder comes from the Whisper file, as upstream
        elif key.startswith(("model.", "lm_head.")):
            state["language_model." + key] = tensor
        else:
            report.ignored.append(key)
    state.update({"speech_encoder." + k: v for k, v in encoder_state.items()})

    config = _released_config(raw, speech_config, state, overrides)
    if dtype is None:
        dtype = _stored_dtype(raw, llm_state)
    model, info = OmniTTTForCausalLM.from_pretrained(
        None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    report.initialised = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = info.get("mismatched_keys", [])
    if unexpected or mismatched:
        raise UserError(
            f"{path}: checkpoint does not fit the model (unexpected {unexpected[:5]}, mismatched "
            f"{list(mismatched)[:5]})",
            fix="check that the speech encoder and the LLM belong together (LLaMA-Omni uses Whisper large-v3)",
        )
    _check_initialised(report.initialised, model, path)
    return model, report


def _released_config(
    raw: dict[str, Any], speech_config: WhisperConfig, state: dict[str, torch.Tensor], overrides: dict[str, Any]
) -> OmniTTTConfig:
    overrides = dict(overrides)
    known = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version"}
    text_kwargs = {k: v for k, v in raw.items() if k in known or k in ("rope_theta", "rope_scaling")}
    text_kwargs.pop("dtype", None)
    n_layers = int(raw["num_hidden_layers"])
    ttt = dict(TTTConfig.defaults(), ttt_layers=list(range(n_layers - n_layers // 4, n_layers)))
    for key in list(overrides):
        if key in TTTConfig.keys():
            ttt[key] = overrides.pop(key)
    ttt["ttt_layers"] = sorted(int(i) for i in ttt["ttt_layers"])
    check_ttt_layers(ttt["ttt_layers"], n_layers)
    speech_positions = overrides.pop("speech_positions", "full")
    if overrides:
        raise UserError(
            f"unknown model override(s) for a LLaMA-Omni load: {', '.join(sorted(overrides))}",
            fix=f"use TTT keys ({', '.join(TTTConfig.keys())}) or speech_positions",
        )
    text_config = LlamaConfig(**text_kwargs, **ttt)
    top: dict[str, Any] = {"speech_positions": speech_positions}
    linear1 = state.get("speech_projector.linear1.weight")
    if linear1 is not None:
        top["speech_projector_dim"] = int(linear1.shape[0])
        k, rest = divmod(int(linear1.shape[1]), speech_config.d_model)
        declared = raw.get("speech_encoder_ds_rate", k)
        if rest or k != declared:
            raise UserError(
                f"speech projector input {linear1.shape[1]} is not speech_encoder_ds_rate={declared} x the "
                f"encoder's {speech_config.d_model}",
                fix="use the Whisper encoder the checkpoint was trained with (large-v3 for LLaMA-Omni)",
            )
        top["speech_ds_rate"] = k
    else:
        top["speech_ds_rate"] = int(raw.get("speech_encoder_ds_rate", 5))
        top["speech_projector_dim"] = 2048
    return OmniTTTConfig(text_config=text_config, speech_config=speech_config, **top)


def _check_initialised(initialised: list[str], model: OmniTTTForCausalLM, path: Path) -> None:
    """Only TTT-only parameters (and a projector absent from a plain Llama) may be new; anything else
    missing means the checkpoint is incomplete."""
    ttt_owners = {name for name, m in model.named_modules() if getattr(m, "is_ttt_layer", False)}
    converted = {f"{owner}.{proj}.weight" for owner in ttt_owners for proj in ("q_proj", "k_proj", "v_proj", "o_proj")}
    bad = []
    for key in initialised:
        if key.startswith("speech_projector."):
            continue
        owner_is_ttt = any(key.startswith(owner + ".") for owner in ttt_owners)
        if not owner_is_ttt or key in converted:
            bad.append(key)
    if bad:
        raise UserError(
            f"{path}: checkpoint lacks {len(bad)} weight(s) the model needs, e.g. {bad[:3]}",
            fix="check that every shard listed in the index is present",
        )


# -- Whisper encoder ----------------------------------------------------------------------------------------
def load_whisper_encoder_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """`(WhisperConfig, encoder state dict in transformers' WhisperEncoder names)` from openai-whisper's
    `*.pt` (`{"dims", "model_state_dict"}`) or an HF Whisper directory."""
    path = Path(path)
    if path.is_dir():
        config = WhisperConfig.from_pretrained(str(path), local_files_only=True)
        state = _read_state_dict(path)
        encoder = {}
        for key, tensor in state.items():
            for prefix in ("model.encoder.", "encoder."):
                if key.startswith(prefix):
                    encoder[key.removeprefix(prefix)] = tensor
        if not encoder:
            raise UserError(f"{path}: no Whisper encoder weights (model.encoder.* / encoder.*)",
                            fix="point at a Whisper checkpoint directory")
        return config, encoder
    if not path.is_file():
        raise UserError(f"{path}: no such speech encoder file or directory",
                        fix="pass the openai-whisper large-v3.pt or an HF Whisper directory")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle-level failures surface as many exception types
        raise UserError(f"{path}: not a loadable openai-whisper checkpoint ({exc.__class__.__name__})",
                        fix="pass the openai-whisper large-v3.pt or an HF Whisper directory") from None
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise UserError(f"{path}: expected openai-whisper's {{'dims', 'model_state_dict'}}",
                        fix="pass the openai-whisper large-v3.pt or an HF Whisper directory")
    return whisper_config_from_dims(checkpoint["dims"]), openai_whisper_encoder_state(checkpoint["model_state_dict"])


def whisper_config_from_dims(dims: dict[str, int]) -> WhisperConfig:
    state = int(dims["n_audio_state"])
    return WhisperConfig(
        num_mel_bins=int(dims["n_mels"]),
        d_model=state,
        encoder_layers=int(dims["n_audio_layer"]),
        encoder_attention_heads=int(dims["n_audio_head"]),
        encoder_ffn_dim=4 * state,  # openai-whisper's MLP is always 4x
        max_source_positions=int(dims["n_audio_ctx"]),
        vocab_size=int(dims.get("n_vocab", 51866)),
        decoder_layers=1,  # never built
        decoder_attention_heads=int(dims["n_audio_head"]),
    )


def openai_whisper_encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openai-whisper `encoder.*` keys renamed to transformers' WhisperEncoder (decoder keys dropped).
    openai-whisper's key projection has no bias; transformers' k_proj has none either."""
    result = {}
    for key, tensor in model_state.items():
        if not key.startswith("encoder."):
            continue
        name = key.removeprefix("encoder.")
        for pattern, replacement in _OPENAI_WHISPER_RENAMES:
            name, hits = re.subn(pattern, replacement, name)
            if hits:
                break
        result[name] = tensor
    return result


def _resolve_speech_encoder(path: Path, raw: dict[str, Any], given: str | os.PathLike | None) -> Path:
    if given is not None:
        return Path(given)
    declared = raw.get("speech_encoder")
    candidates = []
    if declared:
        declared_path = Path(declared)
        candidates = [declared_path] if declared_path.is_absolute() else [
            path / declared_path, path / declared_path.name, path.parent / declared_path,
            path.parent / declared_path.name, Path.cwd() / declared_path,
        ]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "nothing (config.json names no speech_encoder)"
    raise UserError(
        f"{path}: speech encoder not found (tried {tried})",
        fix="pass --speech-encoder /path/to/large-v3.pt (openai-whisper) or an HF Whisper directory",
    )


# -- files ---------------------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: no config.json", fix="point at a local checkpoint directory")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc.msg})", fix="re-download the checkpoint") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors (single or sharded) or pytorch_model*.bin read
    with `weights_only=True`."""
    files = sorted(path.glob("*.safetensors"))
    loader = load_file
    if not files:
        files = sorted(path.glob("pytorch_model*.bin"))

        def loader(f: str) -> dict[str, torch.Tensor]:
            return torch.load(f, map_location="cpu", weights_only=True)

    if not files:
        raise UserError(f"{path}: no *.safetensors or pytorch_model*.bin weights", fix="re-download the checkpoint")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(loader(str(file)))
        except Exception as exc:  # corrupt files raise library-specific errors
            raise UserError(f"{file}: cannot read weights ({exc.__class__.__name__}: {exc})",
                            fix="re-download the file") from None
    return state


def _stored_dtype(raw: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.dtype:
    name = raw.get("dtype") or raw.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return floats[0] if floats else torch.float32


def _torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}", fix="use float32, bfloat16 or float16")
    return value
