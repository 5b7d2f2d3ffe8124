"""The audio loader: decode, downmix, resample to 16 kHz, clip and count; refuse empty, non-finite and
truncated files with a reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import soxr
from fake_corpora import tone

from omnittt.data.audio import AudioError, load_audio, prepare_waveform, wav_truncation


def test_24k_pcm16_is_resampled_to_16k_float32(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.5, rate=24_000), 24_000, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert len(audio.samples) == 24_000  # 1.5 s at 16 kHz
    assert audio.source_rate == 24_000 and audio.converted and audio.clipped == 0
    decoded, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(audio.samples, soxr.resample(decoded, 24_000, 16_000), atol=1e-6)
    # the 220 Hz tone survives: its spectrum peaks at 220 Hz
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio.samples) - 220) < 2


def test_stereo_44k_is_downmixed(tmp_path):
    path = tmp_path / "s.wav"
    stereo = tone(1.0, rate=44_100, channels=2)
    sf.write(path, stereo, 44_100, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.source_channels == 2 and audio.converted
    np.testing.assert_allclose(audio.samples, soxr.resample(stereo.mean(axis=1), 44_100, 16_000), atol=1e-6)


def test_16k_mono_flac_is_unchanged(tmp_path):
    path = tmp_path / "x.flac"
    data = tone(0.5, rate=16_000)
    sf.write(path, data, 16_000, subtype="PCM_16")
    audio = load_audio(path)
    assert not audio.converted
    np.testing.assert_allclose(audio.samples, data, atol=1 / 32768 + 1e-7)


def test_clipping_is_counted(tmp_path):
    path = tmp_path / "loud.wav"
    data = tone(0.5, rate=16_000, amp=1.5)
    sf.write(path, data, 16_000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.clipped == int(np.count_nonzero(np.abs(data) > 1.0)) > 0
    assert float(np.abs(audio.samples).max()) == 1.0


def test_truncated_wav_is_refused_although_libsndfile_reads_it(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(1.0), 24_000, subtype="PCM_16")
    os.truncate(path, path.stat().st_size - 1000)
    data, _ = sf.read(path)  # libsndfile returns what is there, silently
    assert len(data) == 24_000 - 500
    assert "header says 48000 data bytes" in wav_truncation(path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.reason == "truncated_audio" and info.value.path == str(path)


@pytest.mark.parametrize("case,reason", [
    ("zero_bytes", "empty_audio"), ("no_frames", "empty_audio"), ("missing", "missing_audio"),
    ("garbage", "unreadable_audio"), ("nan", "nonfinite_audio"), ("header_only", "truncated_audio"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, case, reason):
    path = tmp_path / f"{case}.wav"
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "no_frames":
        sf.write(path, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")
    elif case == "garbage":
        path.write_bytes(b"this is not audio at all" * 10)
    elif case == "nan":
        data = tone(0.2, rate=16_000)
        data[100] = np.nan
        sf.write(path, data, 16_000, subtype="FLOAT")
    elif case == "header_only":
        sf.write(path, tone(0.2, rate=16_000), 16_000, subtype="PCM_16")
        os.truncate(path, 44)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.reason == reason


def test_prepare_waveform_for_microphone_input():
    samples, clipped = prepare_waveform(np.full((480, 2), 0.5, dtype=np.float64), 48_000)
    assert samples.dtype == np.float32 and len(samples) == 160 and clipped == 0
    with pytest.raises(ValueError, match="non-finite"):
        prepare_waveform(np.array([0.0, np.inf]), 16_000)
