"""The audio objective (APC): the optional head (absent in older models, rebuilt from a checkpoint's config), the
L1 to the detached speech embedding `shift` positions ahead inside speech only, and its use of the carried state
through the ExchangeStream."""

from __future__ import annotations

import pytest
import torch

from omnittt.core.audio_objective import AUDIO_HEAD, AudioHead, add_audio_head, apc_losses, audio_exchange, audio_shift
from omnittt.core.exchange_stream import ExchangeStream
from omnittt.core.modeling_omnittt import OmniTTTForCausalLM
from omnittt.core.presets import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", ttt_mini_batch_size=16)


def _speech_exchange(model, seconds: float, seed: int) -> dict:
    """One speech-only exchange (a placeholder, alignment pads) of noise-like audio, as the audio index makes."""
    from omnittt.core.features import build_feature_extractor, log_mel
    from omnittt.core.speech import padding_for, segment_positions

    generator = torch.Generator().manual_seed(seed)
    audio = (torch.randn(int(seconds * 16000), generator=generator) * 0.1).numpy()
    positions = segment_positions(len(audio))
    pad = padding_for(positions, 16)
    features, lengths = log_mel([audio], build_feature_extractor(model.config.speech_config.num_mel_bins))
    mask = torch.zeros(1, 1 + pad, dtype=torch.long)
    mask[0, 0] = 1
    return {"input_ids": torch.tensor([[-200] + [0] * pad]), "attention_mask": mask, "input_features": features,
            "feature_lengths": lengths, "num_positions": torch.tensor([positions + pad])}


def test_a_model_has_no_audio_head_unless_configured_and_a_checkpoint_rebuilds_it(model, tmp_path):
    assert audio_shift(model) is None and not hasattr(model, AUDIO_HEAD)
    model.save_pretrained(tmp_path / "plain")
    assert not hasattr(OmniTTTForCausalLM.from_pretrained(tmp_path / "plain"), AUDIO_HEAD)  # older checkpoints
    headed = build_model("tiny", ttt_mini_batch_size=16)
    assert add_audio_head(headed, 3) and not add_audio_head(headed, 3)
    with pytest.raises(ValueError, match="3 positions ahead"):
        add_audio_head(headed, 2)
    headed.save_pretrained(tmp_path / "headed")
    loaded = OmniTTTForCausalLM.from_pretrained(tmp_path / "headed")
    assert audio_shift(loaded) == 3
    assert torch.equal(loaded.audio_head.proj.weight, headed.audio_head.proj.weight)


def test_apc_loss_is_the_l1_to_the_target_shift_ahead_inside_speech_only():
    torch.manual_seed(1)
    hidden, targets = torch.randn(2, 10, 4), torch.randn(2, 10, 4, requires_grad=True)
    speech = torch.ones(2, 10, dtype=torch.long)
    speech[1, 7:] = 0  # row 1 ends in padding
    head = AudioHead(4)
    losses, valid = apc_losses(hidden, targets, speech, head, shift=2)
    expected = (head.proj(hidden[:, :8]) - targets[:, 2:]).abs().mean(-1)
    assert valid[0].all() and valid[1, :5].all() and not valid[1, 5:].any()
    torch.testing.assert_close(losses[valid], expected[valid])
    assert bool((losses[~valid] == 0).all())
    losses.sum().backward()
    assert targets.grad is None or bool((targets.grad == 0).all())  # the target is detached


def test_the_carried_state_changes_the_audio_loss_of_later_segments(model):
    add_audio_head(model, 2)
    model.eval()
    exchanges = [_speech_exchange(model, 2.5, seed) for seed in range(2)]
    with torch.no_grad():
        scored = {}
        for mode in ("never", "every-turn"):
            stream = ExchangeStream(model, mode)
            scored[mode] = [audio_exchange(stream, inputs, torch.tensor([k])) for k, inputs in enumerate(exchanges)]
    first, second = ([s[k].total for s in scored.values()] for k in range(2))
    assert scored["never"][0].count == 25 - 2 and torch.equal(first[0], first[1])  # same start: same loss
    assert not torch.equal(second[0], second[1])  # then the carried state is not the learned init


def test_the_audio_objective_refuses_text_tokens(model):
    add_audio_head(model, 2)
    inputs = _speech_exchange(model, 1.0, 0)
    inputs["attention_mask"][0, 1] = 1  # a real token that is not speech
    with pytest.raises(ValueError, match="speech-only"):
        audio_exchange(ExchangeStream(model), inputs, torch.tensor([0]))
