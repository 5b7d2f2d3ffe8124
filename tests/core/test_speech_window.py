"""The tiny preset's encoder window: the encoder runs on each segment's own speech frames (not Whisper's padded
30 s window), a segment's output does not depend on what else is in the batch, and the fast log-mel equals
extracting the whole zero-padded window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnittt.core.features import build_feature_extractor, log_mel
from omnittt.core.presets import build_model
from omnittt.core.speech import SEGMENT_SAMPLES


def test_log_mel_equals_the_padded_30s_window():
    fe = build_feature_extractor(80)
    rng = np.random.default_rng(0)
    lengths = (1, 1599, 1600, 32000, 123457, SEGMENT_SAMPLES - 1000, SEGMENT_SAMPLES)
    segments = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths] + [np.zeros(8000, np.float32)]
    fast, got_lengths = log_mel(segments, fe)
    full = fe(segments, sampling_rate=16000, padding="max_length", max_length=SEGMENT_SAMPLES, truncation=True,
              return_tensors="np")["input_features"]
    assert got_lengths.tolist() == [len(s) for s in segments]
    np.testing.assert_allclose(fast.numpy(), full, atol=1e-6, rtol=0)


def test_speech_window_is_batch_independent_and_cheaper():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    assert model.config.speech_encoder_window == "speech"
    features = torch.randn(3, 80, 3000)
    lengths = [16000, 40000, 8000]
    with torch.no_grad():
        together = model.encode_speech(features, lengths)
        alone = [model.encode_speech(features[i:i + 1], lengths[i:i + 1])[0] for i in range(3)]
        model.config.speech_encoder_window = "full"
        whole_window = model.encode_speech(features, lengths)
    assert [t.shape[0] for t in together] == [10, 25, 5]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the full window lets speech attend to the padding: other outputs, so the setting really switches
    assert not torch.allclose(together[2], whole_window[2], atol=1e-3)


def test_speech_window_trains_the_encoder_and_is_checked():
    model = build_model("tiny")
    for p in model.speech_encoder.parameters():
        p.requires_grad_(True)
    out = model.encode_speech(torch.randn(2, 80, 3000), [16000, 3200])
    torch.cat(out).sum().backward()
    assert model.speech_encoder.conv1.weight.grad.abs().sum() > 0
    assert model.speech_encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="speech_encoder_window"):
        build_model("tiny", speech_positions="full", speech_encoder_window="speech")
    assert build_model("tiny", speech_positions="full").config.speech_encoder_window == "full"
    assert build_model("llama-omni-8b", device="meta").config.speech_encoder_window == "full"
