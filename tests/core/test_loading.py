"""Loading: our own checkpoints (save/load identical), and the released LLaMA-Omni layout written at tiny shapes
with the published key names (HF Llama + `model.speech_projector.*` + `speech_generator.*`, and openai-whisper's
`{"dims", "model_state_dict"}` encoder), checked against an independent re-implementation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from omnittt.core.constants import SPEECH_TOKEN_INDEX
from omnittt.core.features import build_feature_extractor, log_mel
from omnittt.core.loading import detect_layout, load_model
from omnittt.core.modeling_omnittt import TTT_STATE_PARAMS, OmniTTTForCausalLM
from omnittt.core.presets import build_model, model_summary
from omnittt.errors import UserError

N_MELS, D, HEADS, ENC_LAYERS = 16, 40, 2, 2  # whisper encoder (tiny)
HIDDEN, LAYERS, VOCAB, PROJ = 64, 4, 300, 48  # llama (tiny), projector hidden


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """openai-whisper's positional embedding."""
    log_timescale_increment = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def openai_whisper_checkpoint(seed: int = 0) -> dict:
    """What `whisper.load_model` saves: dims + model_state_dict with openai-whisper's names (decoder too)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "encoder.conv1.weight": r(D, N_MELS, 3), "encoder.conv1.bias": r(D),
        "encoder.conv2.weight": r(D, D, 3), "encoder.conv2.bias": r(D),
        "encoder.positional_embedding": sinusoids(1500, D),
        "encoder.ln_post.weight": 1 + r(D), "encoder.ln_post.bias": r(D),
        "decoder.token_embedding.weight": r(51866, 8),
    }
    for i in range(ENC_LAYERS):
        p = f"encoder.blocks.{i}."
        sd.update({
            p + "attn.query.weight": r(D, D), p + "attn.query.bias": r(D),
            p + "attn.key.weight": r(D, D),
            p + "attn.value.weight": r(D, D), p + "attn.value.bias": r(D),
            p + "attn.out.weight": r(D, D), p + "attn.out.bias": r(D),
            p + "attn_ln.weight": 1 + r(D), p + "attn_ln.bias": r(D),
            p + "mlp.0.weight": r(4 * D, D), p + "mlp.0.bias": r(4 * D),
            p + "mlp.2.weight": r(D, 4 * D), p + "mlp.2.bias": r(D),
            p + "mlp_ln.weight": 1 + r(D), p + "mlp_ln.bias": r(D),
        })
    dims = {"n_mels": N_MELS, "n_audio_ctx": 1500, "n_audio_state": D, "n_audio_head": HEADS,
            "n_audio_layer": ENC_LAYERS, "n_vocab": 51866, "n_text_ctx": 448, "n_text_state": 8,
            "n_text_head": 2, "n_text_layer": 1}
    return {"dims": dims, "model_state_dict": sd}


def reference_speech(sd: dict, mel: torch.Tensor, proj: dict, k: int = 5) -> torch.Tensor:
    """Independent re-implementation: openai-whisper AudioEncoder + LLaMA-Omni EncoderProjectorConcat."""
    x = F.gelu(F.conv1d(mel, sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1))
    x = x.permute(0, 2, 1) + sd["encoder.positional_embedding"]
    for i in range(ENC_LAYERS):
        p = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"])
        q = F.linear(h, sd[p + "attn.query.weight"], sd[p + "attn.query.bias"])
        kk = F.linear(h, sd[p + "attn.key.weight"])
        v = F.linear(h, sd[p + "attn.value.weight"], sd[p + "attn.value.bias"])
        split = lambda t: t.view(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)  # noqa: E731
        a = torch.softmax(split(q) @ split(kk).transpose(-1, -2) / math.sqrt(D // HEADS), -1) @ split(v)
        x = x + F.linear(a.transpose(1, 2).reshape(x.shape), sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        h = F.layer_norm(x, (D,), sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"])
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                         sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    x = F.layer_norm(x, (D,), sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"])
    x = x.reshape(x.shape[0], x.shape[1] // k, D * k)
    return F.linear(F.relu(F.linear(x, proj["linear1.weight"], proj["linear1.bias"])),
                    proj["linear2.weight"], proj["linear2.bias"])


def llama_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       tie_word_embeddings=False)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A LLaMA-Omni download at tiny shapes: Llama-3.1-8B-Omni/ (config.json with the released keys,
    model.safetensors) and models/speech_encoder/large-v3.pt next to it, as the released config names it."""
    root = tmp_path_factory.mktemp("llama_omni")
    torch.manual_seed(0)
    reference = LlamaForCausalLM(llama_config()).eval()
    g = torch.Generator().manual_seed(1)
    projector = {
        "linear1.weight": torch.randn(PROJ, 5 * D, generator=g) * 0.1,
        "linear1.bias": torch.randn(PROJ, generator=g) * 0.1,
        "linear2.weight": torch.randn(HIDDEN, PROJ, generator=g) * 0.1,
        "linear2.bias": torch.randn(HIDDEN, generator=g) * 0.1,
    }
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    state.update({"model.speech_projector." + k: v for k, v in projector.items()})
    state.update({
        "speech_generator.input_proj.weight": torch.randn(8, HIDDEN, generator=g),
        "speech_generator.output_proj.weight": torch.randn(1001, 8, generator=g),
    })
    llm_dir = root / "Llama-3.1-8B-Omni"
    llm_dir.mkdir()
    save_file(state, str(llm_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["OmniSpeech2SLlamaForCausalLM"], "model_type": "omni_speech2s_llama",
        "hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096,
        "rope_theta": 500000.0, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 3,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "speech_encoder": "models/speech_encoder/large-v3.pt", "speech_encoder_type": "whisper",
        "speech_encoder_ds_rate": 5, "speech_encoder_hidden_size": D, "speech_projector_type": "linear",
        "speech_normalize": False, "speech_generator_type": "ctc", "ctc_decoder_config": "(2,4096,32,11008)",
        "ctc_upsample_factor": 25, "ctc_loss_weight": 1.0, "unit_vocab_size": 1000,
        "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "torch_dtype": "float32",
        "transformers_version": "4.43.4", "use_cache": True,
    }
    (llm_dir / "config.json").write_text(json.dumps(config))
    whisper = openai_whisper_checkpoint()
    (root / "models" / "speech_encoder").mkdir(parents=True)
    torch.save(whisper, root / "models" / "speech_encoder" / "large-v3.pt")
    return {"dir": llm_dir, "reference": reference, "projector": projector, "whisper": whisper, "root": root}


def speech_input(seconds: float = 1.2, freq: float = 330.0):
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return log_mel([audio], build_feature_extractor(N_MELS))


def test_released_layout_matches_an_independent_implementation(released):
    with pytest.warns(UserWarning, match="tokenizer_model_max_length=2048 ignored"):
        result = load_model(released["dir"], ttt_layers=[], speech_positions="trim")
    model, report = result.model.eval(), result.report
    assert detect_layout(released["dir"]) == "llama-omni" and report.layout == "llama-omni"
    assert sorted(report.ignored) == ["speech_generator.input_proj.weight", "speech_generator.output_proj.weight"]
    assert report.initialised == [] and report.speech_encoder.endswith("large-v3.pt")
    features, lengths = speech_input()
    ids = torch.tensor([[1, 7, 8, SPEECH_TOKEN_INDEX, 9, 10, 11]])
    with torch.no_grad():
        ours = model(input_ids=ids, input_features=features, feature_lengths=lengths).logits
        speech = reference_speech(released["whisper"]["model_state_dict"], features, released["projector"])
        n = math.ceil(lengths.item() / 1600)
        ref_model = released["reference"]
        embed = ref_model.get_input_embeddings()
        spliced = torch.cat([embed(ids[:, :3]), speech[:, :n], embed(ids[:, 4:])], dim=1)
        expected = ref_model(inputs_embeds=spliced).logits
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() <= 1e-4


def test_released_layout_converts_the_top_layers_to_ttt(released):
    with pytest.warns(UserWarning):
        result = load_model(released["dir"])  # defaults: TTT in the top quarter, full 300 positions
    model, report = result.model, result.report
    assert report.summary["ttt_layers"] == [3] and model.config.speech_positions == "full"
    layer = model.language_model.model.layers[3].self_attn
    reference = released["reference"].model.layers[3].self_attn
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):  # TTT q/k/v/o start from the attention they replace
        assert torch.equal(getattr(layer, proj).weight, getattr(reference, proj).weight)
    assert report.initialised
    assert all(k.startswith("language_model.model.layers.3.self_attn.") for k in report.initialised)
    assert {k.rsplit(".", 1)[-1] for k in report.initialised} >= {"W1", "b1", "W2", "b2"}
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


def test_hf_whisper_directory_gives_the_same_encoder(released, tmp_path):
    from transformers import WhisperConfig

    from omnittt.core.loading import openai_whisper_encoder_state, whisper_config_from_dims

    whisper = released["whisper"]
    hf_dir = tmp_path / "whisper-hf"
    hf_dir.mkdir()
    config: WhisperConfig = whisper_config_from_dims(whisper["dims"])
    config.save_pretrained(hf_dir)
    encoder = openai_whisper_encoder_state(whisper["model_state_dict"])
    state = {"model.encoder." + k: v.contiguous() for k, v in encoder.items()}
    save_file(state, str(hf_dir / "model.safetensors"))
    with pytest.warns(UserWarning):
        a = load_model(released["dir"], ttt_layers=[]).model
        b = load_model(released["dir"], ttt_layers=[], speech_encoder=hf_dir).model
    features, lengths = speech_input()
    with torch.no_grad():
        assert torch.equal(a.encode_speech(features, lengths)[0], b.encode_speech(features, lengths)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_keep_ttt_state_float32(released, dtype, tmp_path):
    with pytest.warns(UserWarning):
        model = load_model(released["dir"], dtype=dtype).model
    own = tmp_path / "own"
    build_model("tiny").save_pretrained(own)
    mine = load_model(own, dtype=dtype).model
    for m in (model, mine):
        for name, param in m.named_parameters():
            if name.rsplit(".", 1)[-1] in TTT_STATE_PARAMS and ".self_attn." in name:
                assert param.dtype == torch.float32, name
        assert m.get_input_embeddings().weight.dtype == dtype


def test_save_load_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", ttt_mini_batch_size=16).eval()
    with torch.no_grad():  # make the TTT init non-trivial so a load that re-initialises would show
        for name, param in model.named_parameters():
            if name.endswith((".W1", ".b2")):
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(tmp_path / "ckpt")
    assert detect_layout(tmp_path / "ckpt") == "omnittt"
    loaded = load_model(tmp_path / "ckpt").model.eval()
    t = np.arange(32000) / 16000
    fe = build_feature_extractor(model.config.speech_config.num_mel_bins)
    features, lengths = log_mel([(0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)], fe)
    ids = torch.tensor([[1, 5, 6, SPEECH_TOKEN_INDEX, 7, 8, 9, 10]])
    with torch.no_grad():
        a = model(input_ids=ids, input_features=features, feature_lengths=lengths).logits
        b = loaded(input_ids=ids, input_features=features, feature_lengths=lengths).logits
    assert torch.equal(a, b)
    assert loaded.config.text_config.ttt_mini_batch_size == 16


def test_clear_errors_for_bad_directories(tmp_path, released):
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="not an OmniTTT, LLaMA-Omni or Llama"):
        load_model(tmp_path)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "config.json").write_text((released["dir"] / "config.json").read_text())
    with pytest.raises(UserError, match="speech encoder not found"):
        load_model(lonely)
    evil = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "x": object()}, evil)  # needs pickle execution
    with pytest.raises(UserError, match="not a loadable openai-whisper checkpoint"):
        load_model(released["dir"], speech_encoder=evil)


def test_the_published_config_converts_to_the_8b_shapes():
    """ICTNLP/Llama-3.1-8B-Omni's config.json (as published) + large-v3's dims, without weights."""
    from omnittt.core.loading import _released_config, whisper_config_from_dims

    published = {
        "architectures": ["OmniSpeech2SLlamaForCausalLM"], "model_type": "omni_speech2s_llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": False,
        "vocab_size": 128256, "speech_encoder": "models/speech_encoder/large-v3.pt", "speech_encoder_type": "whisper",
        "speech_encoder_ds_rate": 5, "speech_encoder_hidden_size": 1280, "speech_projector_type": "linear",
        "ctc_upsample_factor": 25, "tokenizer_model_max_length": 2048, "torch_dtype": "float16",
    }
    large_v3 = {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32,
                "n_vocab": 51866, "n_text_ctx": 448, "n_text_state": 1280, "n_text_head": 20, "n_text_layer": 32}
    speech = whisper_config_from_dims(large_v3)
    projector = {"speech_projector.linear1.weight": torch.empty(2048, 6400, device="meta")}
    config = _released_config(published, speech, projector, {})
    text = config.text_config
    assert text.ttt_layers == list(range(24, 32)) and config.speech_positions == "full"
    assert (text.num_key_value_heads, text.rope_parameters["rope_type"], text.rope_parameters["rope_theta"]) == (
        8, "llama3", 500000.0)
    assert config.speech_ds_rate == 5 and config.speech_projector_dim == 2048
    assert (speech.d_model, speech.encoder_layers, speech.encoder_ffn_dim, speech.num_mel_bins) == (1280, 32, 5120, 128)
    with torch.device("meta"):
        model = OmniTTTForCausalLM(config)
    params = model_summary(model)["parameters"]
    assert 7.9e9 < params["llm_total"] < 8.1e9 and 0.62e9 < params["encoder"] < 0.66e9
