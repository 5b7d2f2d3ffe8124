"""The one audio loader (preprocess, chat, eval): soundfile decode, downmix to mono, soxr resample to 16 kHz,
float32, clipped to [-1, 1] with the clipped samples counted.

Refused with a reason code (`AudioError.reason`, what errors.jsonl records): `missing_audio`, `empty_audio`
(zero bytes or zero frames), `truncated_audio`, `unreadable_audio`, `nonfinite_audio`. libsndfile silently
returns the frames present in a truncated WAV, so for RIFF/WAVE files the `data` chunk size in the header is
compared with the bytes actually in the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from omnittt.core.speech import SAMPLE_RATE


class AudioError(Exception):
    """A file that cannot be used as speech, with a reason code."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{f' ({detail})' if detail else ''}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


@dataclass
class Audio:
    """Decoded speech: 16 kHz mono float32 in [-1, 1], plus what was done to get there."""

    samples: np.ndarray
    source_rate: int
    source_channels: int
    clipped: int  # samples outside [-1, 1] after resampling, clipped

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def converted(self) -> bool:
        return self.source_rate != SAMPLE_RATE or self.source_channels != 1


def wav_truncation(path: str | os.PathLike) -> str | None:
    """For a RIFF/WAVE file: a description of the truncation if the header's `data` chunk claims more bytes
    than the file holds, else None (not a WAV, streamed sizes, or complete)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        file_size = os.fstat(handle.fileno()).st_size
        offset = 12
        while offset + 8 <= file_size:
            handle.seek(offset)
            chunk_id, size = struct.unpack(endian + "4sI", handle.read(8))
            if chunk_id == b"data":
                if size in (0, 0xFFFFFFFF):  # unknown size (streamed writer): libsndfile reads to the end
                    return None
                available = file_size - offset - 8
                if size > available:
                    return f"header says {size} data bytes, file holds {available}"
                return None
            offset += 8 + size + (size & 1)
        return "no data chunk before the end of the file"


def prepare_waveform(data: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """`[frames]` or `[frames, channels]` at `rate` -> (16 kHz mono float32 in [-1, 1], clipped count).
    Chat's microphone input goes through here too. Raises ValueError on non-finite input."""
    data = np.asarray(data, dtype=np.float32)
    mono = data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data
    if not np.isfinite(mono).all():
        raise ValueError("non-finite samples (NaN or inf)")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32, copy=False)
    over = np.abs(mono) > 1.0
    clipped = int(np.count_nonzero(over))
    if clipped:
        mono = np.clip(mono, -1.0, 1.0)
    return np.ascontiguousarray(mono, dtype=np.float32), clipped


def load_audio(path: str | os.PathLike) -> Audio:
    """Decode a speech file to 16 kHz mono float32; raise `AudioError` with a reason for unusable files."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(path, "missing_audio") from None
    except OSError as exc:
        raise AudioError(path, "unreadable_audio", exc.__class__.__name__) from None
    if size == 0:
        raise AudioError(path, "empty_audio", "zero-length file")
    try:
        truncated = wav_truncation(path)
    except OSError as exc:
        raise AudioError(path, "unreadable_audio", exc.__class__.__name__) from None
    if truncated:
        raise AudioError(path, "truncated_audio", truncated)
    try:
        with sf.SoundFile(str(path)) as handle:
            rate, channels, frames = handle.samplerate, handle.channels, handle.frames
            data = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(path, "unreadable_audio", str(exc).splitlines()[0][:120]) from None
    if len(data) == 0:
        raise AudioError(path, "empty_audio", "no audio frames")
    if frames > 0 and len(data) < frames:
        raise AudioError(path, "truncated_audio", f"header says {frames} frames, decoded {len(data)}")
    try:
        samples, clipped = prepare_waveform(data, rate)
    except ValueError as exc:
        raise AudioError(path, "nonfinite_audio", str(exc)) from None
    if len(samples) == 0:
        raise AudioError(path, "empty_audio", "nothing left after resampling")
    return Audio(samples=samples, source_rate=rate, source_channels=channels, clipped=clipped)


def audio_info(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(frames, rate, channels) from the header, or None if unreadable (for size estimates)."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return int(info.frames), int(info.samplerate), int(info.channels)
