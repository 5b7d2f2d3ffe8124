"""Speech side of the model: Whisper encoder -> LLaMA-Omni's concat projector -> per-segment LLM embeddings,
and the splice that puts those embeddings where the `<speech>` placeholders are.

Arithmetic (one segment): 3000 mel frames -> encoder (stride 2) -> 1500 frames of `d_model` -> concatenate
k=5 consecutive frames -> 300 vectors of 5*d_model -> Linear-ReLU-Linear -> 300 LLM embeddings, 10 per second.
`speech_positions="trim"` keeps the first ceil(n/1600) of them (the ones that hold speech), `"full"` all 300
(what the released LLaMA-Omni weights saw). `omnittt.core.speech.segment_positions` is the one definition.

The encoder window: pretrained Whisper was trained on the full 30 s window (speech + padding) and must see it
(`speech_encoder_window="full"`); an encoder trained from scratch need not, so `"speech"` runs it on the frames
behind the kept positions only, each segment attending to its own frames (the output of a segment does not depend
on what else is in the batch). For a 2 s turn that is 200 of 3000 mel frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.speech import SpeechPositions, segment_positions

SPEECH_ENCODER_WINDOWS = ("full", "speech")


class SpeechProjector(nn.Module):
    """LLaMA-Omni's `EncoderProjectorConcat`: concatenate k consecutive encoder frames, Linear-ReLU-Linear.
    Parameter names `linear1`/`linear2` match the released checkpoint (`model.speech_projector.*`)."""

    def __init__(self, encoder_dim: int, hidden_size: int, k: int = 5, projector_dim: int = 2048) -> None:
        super().__init__()
        self.k = k
        self.linear1 = nn.Linear(encoder_dim * k, projector_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(projector_dim, hidden_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`frames [S, T, d]` -> `[S, T // k, hidden]` (trailing `T % k` frames dropped, as upstream)."""
        segments, length, dim = frames.shape
        length -= length % self.k
        stacked = frames[:, :length].reshape(segments, length // self.k, dim * self.k)
        return self.linear2(self.relu(self.linear1(stacked)))


def positions_per_segment(feature_lengths: torch.Tensor | Sequence[int], mode: SpeechPositions) -> list[int]:
    return [segment_positions(int(n), mode) for n in feature_lengths]


def encode_segments(
    encoder: nn.Module,
    projector: SpeechProjector,
    input_features: torch.Tensor,
    feature_lengths: torch.Tensor | Sequence[int],
    mode: SpeechPositions,
    out_dtype: torch.dtype | None = None,
    window: str = "full",
) -> list[torch.Tensor]:
    """One `[positions, hidden]` tensor per segment (placeholder order). The encoder sees the full 30 s window
    (`window="full"`) or only each segment's own frames (`"speech"`); only the frames behind kept positions go
    through the projector."""
    if input_features.shape[0] != len(feature_lengths):
        raise ValueError(
            f"{input_features.shape[0]} feature rows but {len(feature_lengths)} feature lengths"
        )
    if input_features.shape[0] == 0:
        return []
    positions = positions_per_segment(feature_lengths, mode)
    features = input_features.to(next(encoder.parameters()).dtype)
    frozen = not any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        if window == "speech":
            frames = encode_speech_frames(encoder, features, [p * projector.k for p in positions])
        else:
            frames = encoder(features).last_hidden_state[:, : max(positions) * projector.k]
    projector_dtype = projector.linear1.weight.dtype
    embeds = projector(frames.to(projector_dtype))
    if out_dtype is not None:
        embeds = embeds.to(out_dtype)
    return [embeds[i, :p] for i, p in enumerate(positions)]


def encode_speech_frames(encoder: nn.Module, features: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """Whisper's encoder forward (convs, positions, layers, final norm) on the first `2 * max(frames)` mel frames
    instead of the 30 s window; segment i's keys are masked beyond its own `frames[i]` encoder frames.
    Returns `[S, max(frames), d_model]`."""
    length = max(frames)
    ends = torch.tensor(frames, device=features.device)[:, None]
    # Zero what lies past a segment's end before each conv, so its edge frames see the same padding alone or
    # batched with longer segments.
    mel_own = (torch.arange(2 * length, device=features.device)[None, :] < 2 * ends)[:, None, :]
    hidden = F.gelu(encoder.conv1(features[..., : 2 * length] * mel_own)) * mel_own
    hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[:length]
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
    own = torch.arange(length, device=hidden.device)[None, :] < ends
    mask = torch.zeros(len(frames), 1, 1, length, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(~own[:, None, None, :], torch.finfo(hidden.dtype).min).expand(-1, 1, length, length)
    for layer in encoder.layers:
        hidden = layer(hidden, mask)
    return encoder.layer_norm(hidden)


def splice_speech(
    input_ids: torch.Tensor,
    speech_embeds: Sequence[torch.Tensor],
    embed_tokens: nn.Module,
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_positions: torch.Tensor | Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace every placeholder (-200) by its segment's embeddings, in row-major order across the batch.

    Returns `(inputs_embeds [B, T, H], attention_mask [B, T], labels [B, T] | None)`: speech positions are real
    (mask 1, label -100); every other position keeps its token's mask and label; rows are right-padded with the
    pad token's embedding (mask 0, label -100) to the longest row. Every pre-splice token is kept (alignment
    pads are fed to the TTT layers like any position) unless `num_positions [B]` gives a row's length after
    splicing: then the row is cut there, which drops the batch padding a collator added before splicing
    (it must be mask 0), so that rows of different speech length keep their own mini-batch alignment.
    """
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    is_speech = input_ids == SPEECH_TOKEN_INDEX
    n_placeholders = int(is_speech.sum())
    if n_placeholders != len(speech_embeds):
        raise ValueError(
            f"input_ids hold {n_placeholders} speech placeholders but {len(speech_embeds)} speech segments "
            "were given (one input_features row per placeholder, in order)"
        )
    seg_positions = torch.tensor([e.shape[0] for e in speech_embeds], dtype=torch.long, device=input_ids.device)
    starts, row_lengths = _spliced_starts(is_speech, seg_positions, attention_mask, num_positions)
    new_ids, new_mask, new_labels = _place_tokens(
        input_ids, attention_mask, labels, ~is_speech & (starts < row_lengths[:, None]), starts,
        int(row_lengths.max()) if batch else 0, pad_token_id,
    )
    inputs_embeds = embed_tokens(new_ids)
    if n_placeholders:
        inputs_embeds = _place_speech(inputs_embeds, new_mask, speech_embeds, is_speech, starts, seg_positions)
    return inputs_embeds, new_mask, new_labels


def _spliced_starts(is_speech: torch.Tensor, seg_positions: torch.Tensor, attention_mask: torch.Tensor,
                    num_positions: torch.Tensor | Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pre-splice token starts after splicing `[B, T]`, and each row's spliced length `[B]` (cut to
    `num_positions` when given, which must keep all real content)."""
    batch, length = is_speech.shape
    # Width of each pre-splice token after splicing: 1 for text, the segment's positions for a placeholder.
    widths = torch.ones(batch, length, dtype=torch.long, device=is_speech.device)
    if seg_positions.numel():
        widths[is_speech] = seg_positions
    ends = widths.cumsum(dim=1)
    starts = ends - widths
    row_lengths = ends[:, -1]
    if num_positions is None:
        return starts, row_lengths
    wanted = torch.as_tensor(num_positions, dtype=torch.long, device=is_speech.device).reshape(batch)
    last_real = torch.where(attention_mask.bool() | is_speech, ends, torch.zeros_like(ends)).amax(dim=1)
    if bool((wanted < last_real).any()) or bool((wanted > row_lengths).any()):
        raise ValueError(
            f"num_positions {wanted.tolist()} do not fit the rows (real content ends at "
            f"{last_real.tolist()}, spliced lengths {row_lengths.tolist()})"
        )
    return starts, wanted


def _place_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                  keep: torch.Tensor, starts: torch.Tensor, total: int, pad_token_id: int,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The kept text tokens' ids, mask and labels at their spliced positions `[B, total]`; every other position
    holds the pad token, mask 0, label -100."""
    batch, device = input_ids.shape[0], input_ids.device
    rows, cols = keep.nonzero(as_tuple=True)
    dest = starts[rows, cols]
    new_ids = torch.full((batch, total), pad_token_id, dtype=input_ids.dtype, device=device)
    new_ids[rows, dest] = input_ids[rows, cols]
    new_mask = torch.zeros(batch, total, dtype=attention_mask.dtype, device=device)
    new_mask[rows, dest] = attention_mask[rows, cols]
    new_labels = None
    if labels is not None:
        new_labels = torch.full((batch, total), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[rows, dest] = labels[rows, cols]
    return new_ids, new_mask, new_labels


def _place_speech(inputs_embeds: torch.Tensor, new_mask: torch.Tensor, speech_embeds: Sequence[torch.Tensor],
                  is_speech: torch.Tensor, starts: torch.Tensor, seg_positions: torch.Tensor) -> torch.Tensor:
    """`inputs_embeds` with each segment's embeddings at its placeholder's span; marks the spans real in
    `new_mask` (in place)."""
    device = inputs_embeds.device
    speech_rows, speech_cols = is_speech.nonzero(as_tuple=True)  # row-major = placeholder order
    span_rows = torch.repeat_interleave(speech_rows, seg_positions)
    span_offsets = torch.cat([torch.arange(int(p), device=device) for p in seg_positions.tolist()])
    span_cols = torch.repeat_interleave(starts[speech_rows, speech_cols], seg_positions) + span_offsets
    new_mask[span_rows, span_cols] = 1
    return inputs_embeds.index_put((span_rows, span_cols), torch.cat(list(speech_embeds)).to(inputs_embeds.dtype))

