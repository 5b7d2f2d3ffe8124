"""Log-mel features for the speech encoder: one function used by the data collator, chat and eval.

Each speech segment (<= 30 s at 16 kHz, see `omnittt.core.speech`) becomes one row of Whisper log-mel
features over the full 30 s window (zero-padded audio, as `whisper.pad_or_trim` + `log_mel_spectrogram` in
LLaMA-Omni), because the Whisper encoder only accepts exactly 3000 frames. The true length travels alongside
in samples, the unit of the speech arithmetic, so the model keeps only the positions that hold speech.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from omnittt.core.speech import SAMPLE_RATE, SEGMENT_SAMPLES

N_FRAMES = 3000  # Whisper's 30 s window at 100 frames/s
LARGE_V3_MELS = 128
_HOP = 160  # samples per mel frame
_TAIL_SAMPLES = 600  # zeros behind the speech so the last extracted frame's STFT window (400) is all zeros


def build_feature_extractor(n_mels: int = LARGE_V3_MELS) -> Any:
    """An offline `WhisperFeatureExtractor` (mel filters are computed locally; no hub access)."""
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)


def _as_float32(segment: np.ndarray | torch.Tensor, index: int) -> np.ndarray:
    array = segment.detach().cpu().numpy() if isinstance(segment, torch.Tensor) else np.asarray(segment)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"speech segment {index}: expected a 1-D waveform, got shape {tuple(array.shape)}")
    if not 0 < array.shape[0] <= SEGMENT_SAMPLES:
        raise ValueError(
            f"speech segment {index}: {array.shape[0]} samples; a segment holds 1..{SEGMENT_SAMPLES} "
            "(split long turns with omnittt.core.speech.split_segments)"
        )
    return array


def log_mel(
    segments: Sequence[np.ndarray | torch.Tensor], feature_extractor: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features of speech segments (16 kHz mono float waveforms, one per placeholder).

    Returns `input_features [S, n_mels, 3000]` float32 and `feature_lengths [S]` long (samples per segment).
    """
    arrays = [_as_float32(segment, i) for i, segment in enumerate(segments)]
    n_mels = int(feature_extractor.feature_size)
    if not arrays:
        return torch.zeros(0, n_mels, N_FRAMES), torch.zeros(0, dtype=torch.long)
    features = np.stack([_window_features(a, feature_extractor) for a in arrays])
    lengths = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
    return torch.from_numpy(features), lengths


def _window_features(audio: np.ndarray, feature_extractor: Any) -> np.ndarray:
    """The segment's features over the 30 s window, equal to extracting the zero-padded window, at the cost of
    the speech only: frames whose STFT window (n_fft 400) lies wholly in the zero padding all hold the same
    value (the clamp floor of Whisper's normalisation), so the audio is extracted with enough zeros behind it to
    end on such a frame, and that frame's value fills the rest of the window."""
    padded = min(SEGMENT_SAMPLES, -(-(audio.shape[0] + _TAIL_SAMPLES) // _HOP) * _HOP)
    head = feature_extractor(
        [audio], sampling_rate=SAMPLE_RATE, padding="max_length", max_length=padded,
        truncation=True, return_tensors="np", return_attention_mask=False,
    )["input_features"][0].astype(np.float32)
    window = np.empty((head.shape[0], N_FRAMES), dtype=np.float32)
    window[:, : head.shape[1]] = head
    window[:, head.shape[1]:] = head[:, -1:]
    return window
