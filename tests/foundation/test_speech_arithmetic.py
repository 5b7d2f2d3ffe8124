"""Speech arithmetic: segments of <= 30 s, positions per segment in both modes, padding to b."""

from __future__ import annotations

import math

import pytest

from omnittt.core.speech import (
    padded_positions,
    padding_for,
    sample_positions,
    segment_positions,
    speech_positions,
    split_segments,
)

SR = 16_000


@pytest.mark.parametrize(
    "n_samples, segments",
    [
        (1, [1]),
        (SR // 2, [8_000]),
        (10 * SR, [160_000]),
        (30 * SR, [480_000]),
        (30 * SR + 1, [480_000, 1]),
        (95 * SR, [480_000, 480_000, 480_000, 5 * SR]),
    ],
)
def test_split_and_positions(n_samples, segments):
    assert split_segments(n_samples) == segments
    assert sum(segments) == n_samples
    # trim: 10 positions per second, rounded up per segment; full: 300 per segment
    assert speech_positions(segments, "trim") == sum(math.ceil(s * 10 / SR) for s in segments)
    assert speech_positions(segments, "full") == 300 * len(segments)


def test_trim_values_by_hand():
    assert segment_positions(1, "trim") == 1
    assert segment_positions(SR // 2, "trim") == 5
    assert segment_positions(10 * SR, "trim") == 100
    assert segment_positions(30 * SR, "trim") == 300
    assert segment_positions(1601, "trim") == 2


def test_zero_samples_is_an_error():
    with pytest.raises(ValueError):
        split_segments(0)
    with pytest.raises(ValueError):
        segment_positions(0)
    with pytest.raises(ValueError):
        segment_positions(30 * SR + 1)
    with pytest.raises(ValueError):
        segment_positions(100, "half")  # type: ignore[arg-type]


def test_sample_positions_replace_placeholders():
    # 40 ids of which 2 are placeholders for a 35 s turn (30 s + 5 s)
    segments = split_segments(35 * SR)
    assert sample_positions(40, segments, "trim") == 38 + 300 + 50
    assert sample_positions(40, segments, "full") == 38 + 600
    with pytest.raises(ValueError):
        sample_positions(1, segments)


@pytest.mark.parametrize("b", [16, 64])
@pytest.mark.parametrize("positions", [1, 15, 16, 17, 63, 64, 65, 388])
def test_padding_to_multiple(b, positions):
    pad = padding_for(positions, b)
    assert 0 <= pad < b
    assert (positions + pad) % b == 0
    assert padded_positions(positions, b) == positions + pad
    with pytest.raises(ValueError):
        padding_for(positions, 0)
