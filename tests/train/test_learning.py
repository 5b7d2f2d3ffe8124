"""The tiny preset on the synthetic corpus (slow tier): the validation loss falls by at least half, and whether the
model uses the speech: the validation loss with each exchange's speech swapped for another conversation's (same
positions, so only the content differs) against the true speech.

Measured (2026-11-22, 2-core CPU, batch 2, 4 exchanges per window, lr 3e-3, --train all, 108 training dialogues):
with the tiny preset as built, the loss falls 6.74 -> 0.48 in 600 steps but swapped - true stays at noise level
(+3.6e-5 at init, -1.2e-5 at 600 steps): it learns the text, not the speech content. The cause is the random tiny
Whisper encoder: its conv features (~0.11 per frame) drown in the sinusoidal position embeddings (5.66 per frame),
so two utterances differ by ~2% at its output. With the two conv weights scaled x7 at init (conv output ~x49), the
same run reaches swapped - true = +0.0072 at 150 steps and +0.0148 at 600 (loss 0.49): the trainer learns to use
speech once the encoder exposes it. The second test checks that (150 steps with the schedule ending there: loss
1.375, swapped 1.380, margin +0.0046 > 0.003); the xfail is the tiny preset as built."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_dataset, tiny_settings

from omnittt.train.setup import start_run

pytestmark = pytest.mark.slow


def test_validation_loss_falls_by_half(trained_run):
    _, losses = trained_run
    print(f"validation loss {losses['start']:.4f} -> {losses['end']:.4f}")
    assert losses["end"] <= 0.5 * losses["start"]


def test_training_learns_to_use_speech_when_the_encoder_exposes_it(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_use")
    data = make_dataset(root, dialogues=120, recall_exchanges=8)  # the measured corpus (`omnittt download`'s)
    trainer = start_run(tiny_settings(data, root / "run", max_steps=150, save_every=1000, batch_size=2,
                                      tbptt_turns=4, lr=3e-3, warmup_steps=10, train="all",
                                      val_conversations=12)).trainer
    encoder = trainer.accelerator.unwrap_model(trainer.model).speech_encoder
    with torch.no_grad():  # conv features comparable to the position embeddings (see the module docstring)
        encoder.conv1.weight.mul_(7.0)
        encoder.conv2.weight.mul_(7.0)
    trainer.fit()
    true, swapped = trainer.validate(), trainer.validate(swap_speech=True)
    print(f"validation loss {true:.4f}, with swapped speech {swapped:.4f} (margin {swapped - true:.4g})")
    assert swapped - true > 0.003


@pytest.mark.xfail(reason="the tiny preset's random encoder hides the speech content: swapped - true stays at "
                          "noise level (-1.2e-5 after 600 steps; see the module docstring)", strict=False)
def test_tiny_preset_relies_on_the_speech(trained_run):
    _, losses = trained_run
    margin = losses["end_swapped"] - losses["end"]
    print(f"swapped - true speech: {margin:.3g}")
    assert margin > 0.01
