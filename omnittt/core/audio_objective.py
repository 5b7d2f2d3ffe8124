"""The audio-only objective: autoregressive predictive coding (APC, Chung et al. 2019) on untranscribed speech.

A small head on the LLM's last hidden state at a speech position regresses the projector's output (the speech
embedding the LLM was fed) `shift` positions later in the same segment, with an L1 loss; the target is detached.
It is causal (the hidden state at t has seen positions <= t only, and the TTT state everything fed before), costs
one linear layer, and needs no negatives. Contrastive objectives (CPC / InfoNCE) were not chosen: they need
negative samples drawn per position (a batch of other utterances or far-away frames), whose choice changes what
is learned and which a batch of one long recording does not have, and their loss does not say how far a
prediction is from its target, which is what eval's carried-vs-reset gap compares.

The head exists only in a model whose config has `audio_head_shift` (`add_audio_head` puts it there): older
checkpoints load unchanged, and a checkpoint with the head rebuilds it from its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from omnittt.core.constants import SPEECH_TOKEN_INDEX

AUDIO_HEAD = "audio_head"  # the module's name on the model (its parameters: audio_head.*)
SHIFT_KEY = "audio_head_shift"  # the model config's key: positions ahead the head predicts


class AudioHead(torch.nn.Module):
    """Hidden state -> predicted speech embedding `shift` positions ahead (one linear layer, as in APC's
    regression output)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def audio_shift(model: torch.nn.Module) -> int | None:
    """The shift of the model's audio head, or None when it has none."""
    shift = getattr(model.config, SHIFT_KEY, None)
    return int(shift) if shift else None


def build_audio_head(model: torch.nn.Module) -> None:
    """Called by the model's constructor: the head when the config asks for one (float32, zero bias)."""
    if audio_shift(model) is not None:
        head = AudioHead(model.config.text_config.hidden_size)
        torch.nn.init.zeros_(head.proj.bias)
        model.add_module(AUDIO_HEAD, head)


def add_audio_head(model: torch.nn.Module, shift: int) -> bool:
    """Give `model` an audio head predicting `shift` positions ahead (recorded in its config, so checkpoints
    rebuild it). A model that already has one keeps it; another shift is an error. Returns whether one was made."""
    if shift < 1:
        raise ValueError(f"the audio head predicts at least one position ahead, got shift {shift}")
    have = audio_shift(model)
    if have is not None:
        if have != shift:
            raise ValueError(f"the model's audio head predicts {have} positions ahead, not {shift}")
        return False
    setattr(model.config, SHIFT_KEY, int(shift))
    build_audio_head(model)
    param = next(model.parameters())
    getattr(model, AUDIO_HEAD).to(device=param.device)
    return True


def apc_losses(hidden: torch.Tensor, targets: torch.Tensor, speech: torch.Tensor, head: torch.nn.Module,
               shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position L1 (mean over the embedding) of the head's prediction at t against `targets` at t + shift,
    where both are speech: `(losses [B, T - shift], valid [B, T - shift])`, invalid positions 0."""
    if hidden.shape[1] <= shift:
        empty = hidden.new_zeros((hidden.shape[0], 0))
        return empty.float(), empty.bool()
    predicted = head(hidden[:, :-shift].to(head.proj.weight.dtype)).float()
    target = targets[:, shift:].detach().float()
    valid = speech[:, :-shift].bool() & speech[:, shift:].bool()
    losses = (predicted - target).abs().mean(-1) * valid
    return losses, valid


@dataclass
class AudioStep:
    """One exchange of speech through the stream: the per-position losses, where they are valid, and the
    spliced attention mask (the real positions fed)."""

    losses: torch.Tensor  # [B, T - shift]
    valid: torch.Tensor  # [B, T - shift]
    mask: torch.Tensor  # [B, T]

    @property
    def count(self) -> int:
        return int(self.valid.sum())

    @property
    def total(self) -> torch.Tensor:
        return self.losses.sum()


def audio_exchange(stream: Any, inputs: dict[str, Any], turn_number: torch.Tensor, **kwargs: Any) -> AudioStep:
    """Feed one speech-only exchange (placeholders and padding, no text) through an `ExchangeStream` and score
    the model's audio head on it. The stream keeps its role: it resets rows at turn 0, splices, feeds, guards."""
    model = stream.model
    shift = audio_shift(model)
    if shift is None:
        raise ValueError("the model has no audio head (add_audio_head)")
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    if bool((real & (ids != SPEECH_TOKEN_INDEX)).any()):
        raise ValueError("the audio objective takes speech-only exchanges (text tokens found)")
    stream.start_exchange(turn_number)
    embeds, spliced_mask, _ = stream.embed(inputs)
    captured: list[torch.Tensor] = []
    # the LLM's last hidden state is the output of its final norm (the decoder returns no hidden states): a hook
    # takes it during the stream's own guarded forward; no logits beyond one position are computed
    hook = model.language_model.model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        stream.feed(embeds, spliced_mask, logits_to_keep=1, **kwargs)
    finally:
        hook.remove()
    losses, valid = apc_losses(captured[-1], embeds, spliced_mask, getattr(model, AUDIO_HEAD), shift)
    return AudioStep(losses, valid, spliced_mask)
