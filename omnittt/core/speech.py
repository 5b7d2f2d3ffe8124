"""Speech arithmetic: how a turn's audio becomes `<speech>` segments and LLM positions.

One definition used by data, model, validate and eval (docs/data_format.md "What an exchange becomes"):
audio at 16 kHz is split greedily into segments of at most 30 s; each segment is one placeholder and
occupies ceil(n / 1600) positions in `trim` mode (Whisper: 100 mel frames/s, encoder stride 2,
projector k=5 -> 10 positions/s) or 300 in `full` mode (what released LLaMA-Omni weights saw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

SAMPLE_RATE = 16_000
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SAMPLE_RATE * SEGMENT_SECONDS  # 480,000: Whisper's fixed window
SAMPLES_PER_POSITION = 1_600  # 160 samples/mel frame * 2 (encoder stride) * 5 (projector k)
FULL_POSITIONS = SEGMENT_SAMPLES // SAMPLES_PER_POSITION  # 300

SpeechPositions = Literal["trim", "full"]
SPEECH_POSITION_MODES = ("trim", "full")


def split_segments(n_samples: int) -> list[int]:
    """Greedy split of a turn into segment lengths (samples) of at most 30 s."""
    if n_samples <= 0:
        raise ValueError(f"a speech turn needs at least one sample, got {n_samples}")
    full, rest = divmod(n_samples, SEGMENT_SAMPLES)
    return [SEGMENT_SAMPLES] * full + ([rest] if rest else [])


def segment_positions(n_samples: int, mode: SpeechPositions = "trim") -> int:
    """LLM positions one segment of `n_samples` (<= 30 s) occupies."""
    if not 0 < n_samples <= SEGMENT_SAMPLES:
        raise ValueError(f"a segment holds 1..{SEGMENT_SAMPLES} samples, got {n_samples}")
    if mode == "trim":
        return math.ceil(n_samples / SAMPLES_PER_POSITION)
    if mode == "full":
        return FULL_POSITIONS
    raise ValueError(f"speech_positions must be one of {SPEECH_POSITION_MODES}, got {mode!r}")


def speech_positions(segment_lengths: Sequence[int], mode: SpeechPositions = "trim") -> int:
    return sum(segment_positions(int(n), mode) for n in segment_lengths)


def sample_positions(n_tokens: int, segment_lengths: Sequence[int], mode: SpeechPositions = "trim") -> int:
    """Positions the LLM sees for a sample whose `input_ids` has `n_tokens` entries, one placeholder per
    segment: `len(input_ids) - n_placeholders + sum(segment positions)`."""
    if n_tokens < len(segment_lengths):
        raise ValueError("fewer input ids than speech placeholders")
    return n_tokens - len(segment_lengths) + speech_positions(segment_lengths, mode)


def padding_for(positions: int, multiple: int) -> int:
    """Pad positions needed so that `positions` becomes a multiple of `multiple` (the TTT mini-batch b)."""
    if multiple <= 0:
        raise ValueError(f"mini-batch size must be positive, got {multiple}")
    return -positions % multiple


def padded_positions(positions: int, multiple: int) -> int:
    return positions + padding_for(positions, multiple)
