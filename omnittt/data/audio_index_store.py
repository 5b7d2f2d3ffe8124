"""Long recordings as loader conversations: the training and eval view of `omnittt preprocess librilight`'s audio
index (`audio_index.jsonl`, omnittt/data/sources/librilight.py), for the audio-only objective.

Nothing is re-preprocessed: `AudioIndexStore` reads the index and offers what `ConversationDataset` reads from a
processed dataset (`index`, `manifest`, `settings`, `load(sample_id)`), so the curriculum's session packing, the
loader, the collator, the trainer and eval take long-form audio as they take dialogues.

- A recording (the index lines of one (subset, speaker, book, recording), in segment order) is one conversation;
  its group is its (subset, speaker, book), so a stage packs a book's shorter recordings into one session.
- Each segment of <= `segment_sec` (at most 30 s, Whisper's window) is one exchange: the speech between VAD cut
  points of a raw file's `.json` (`vad_chunks`, consecutive voice-activity spans merged up to the limit), a
  VAD-cut file (already a segment; split further only past the limit), or fixed windows of a raw file without
  voice activity.
- An exchange is speech only: one `<speech>` placeholder, alignment padding to the TTT mini-batch, no labels.
  Its audio is read from the recording (`start`..`stop` frames) when loaded.

The index's `preprocessing_stats.json` holds `input` (the folder the index's paths are relative to) and, since
`omnittt preprocess librilight --mini-batch-size/--speech-positions/--segment-sec`, the settings the exchanges
are aligned with (an older index: the preprocess defaults).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.speech import SAMPLE_RATE, SEGMENT_SECONDS, padding_for, segment_positions
from omnittt.data.audio import prepare_waveform
from omnittt.data.sources.librilight import INDEX_FILE
from omnittt.data.store import STATS_FILE, read_jsonl
from omnittt.errors import UserError

# What an index made before it recorded its settings is aligned with: the preprocess defaults.
DEFAULT_SETTINGS = {"mini_batch_size": 64, "speech_positions": "trim", "segment_sec": float(SEGMENT_SECONDS)}
PAD_ID = 0  # the id under the alignment pads (masked: never read)


def is_audio_index(data: str | Path) -> bool:
    return (Path(data) / INDEX_FILE).is_file()


def vad_chunks(voice_activity: Sequence[Sequence[float]], max_sec: float) -> list[tuple[float, float]]:
    """Consecutive voice-activity spans `[start, end]` (seconds) merged greedily into chunks of at most
    `max_sec`, cut at the silences between spans (as LibriLight's cut_by_vad.py cuts); a span longer than
    `max_sec` alone is split into `max_sec` pieces."""
    chunks: list[tuple[float, float]] = []
    open_start: float | None = None
    open_end = 0.0
    for start, end in ((float(a), float(b)) for a, b in voice_activity if float(b) > float(a)):
        if open_start is not None and end - open_start <= max_sec:
            open_end = end
            continue
        if open_start is not None:
            chunks.append((open_start, open_end))
        while end - start > max_sec:
            chunks.append((start, start + max_sec))
            start += max_sec
        open_start, open_end = start, end
    if open_start is not None:
        chunks.append((open_start, open_end))
    return chunks


def _spans(line: dict[str, Any], max_sec: float) -> list[tuple[int, int]]:
    """(start, stop) frames of each exchange of one index line, at the file's own rate."""
    rate, frames = int(line["sample_rate"]), int(line["frames"])
    activity = (line.get("metadata") or {}).get("voice_activity")
    if line.get("layout") == "raw" and activity:
        spans = [(int(a * rate), min(frames, int(math.ceil(b * rate)))) for a, b in vad_chunks(activity, max_sec)]
    else:
        step = int(max_sec * rate)
        spans = [(s, min(frames, s + step)) for s in range(0, frames, step)]
    return [(a, b) for a, b in spans if b - a >= rate // 100]  # at least 10 ms: one mel frame


def _positions(frames: int, rate: int, mode: str, mini_batch: int) -> tuple[int, int]:
    """(positions of the speech, positions with alignment padding) of `frames` at `rate`."""
    samples = min(max(1, round(frames * SAMPLE_RATE / rate)), SAMPLE_RATE * SEGMENT_SECONDS)
    speech = segment_positions(samples, mode)  # type: ignore[arg-type]
    return speech, speech + padding_for(speech, mini_batch)


class AudioIndexStore:
    """Read access to an audio index as `ConversationDataset` reads a processed dataset (see the module doc)."""

    has_tokenizer = False  # audio only: the model's own tokenizer is saved with checkpoints

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        try:
            self.stats: dict[str, Any] = json.loads((self.data_dir / STATS_FILE).read_text(encoding="utf-8"))
            lines = read_jsonl(self.data_dir / INDEX_FILE)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.data_dir}: damaged audio index ({exc.__class__.__name__})",
                            fix="rerun `omnittt preprocess librilight INPUT --output DIR --overwrite`") from None
        self.root = Path(self.stats.get("input") or "")
        self.settings: dict[str, Any] = {**DEFAULT_SETTINGS, **(self.stats.get("settings") or {}),
                                         "prefix_len": 0, "pad_token_id": PAD_ID, "kind": "audio_index"}
        if not 0 < float(self.settings["segment_sec"]) <= SEGMENT_SECONDS:
            raise UserError(f"{self.data_dir}: segment_sec {self.settings['segment_sec']} is outside 0..30 s",
                            fix="rerun `omnittt preprocess librilight` with --segment-sec of at most 30")
        self.index: list[dict[str, Any]] = []
        self.manifest: list[dict[str, Any]] = []
        self._build(lines)

    def _build(self, lines: list[dict[str, Any]]) -> None:
        """One index entry per exchange, recordings in index order, exchanges in recording order."""
        mode, mbs = str(self.settings["speech_positions"]), int(self.settings["mini_batch_size"])
        max_sec = float(self.settings["segment_sec"])
        turns: dict[str, int] = {}
        for line in lines:
            cid = "/".join(str(line[key]) for key in ("subset", "speaker", "book", "recording"))
            if cid not in turns:
                turns[cid] = 0
                self.manifest.append({"conversation_id": cid, "group": cid.rsplit("/", 1)[0],
                                      "speaker": str(line["speaker"]), "book": str(line["book"])})
            rate = int(line["sample_rate"])
            for start, stop in _spans(line, max_sec):
                speech, padded = _positions(stop - start, rate, mode, mbs)
                self.index.append({"sample_id": len(self.index), "conversation_id": cid, "turn_number": turns[cid],
                                   "num_tokens": padded, "original_length": speech,
                                   "audio_duration_sec": (stop - start) / rate, "path": line["path"],
                                   "start": start, "stop": stop})
                turns[cid] += 1

    def __len__(self) -> int:
        return len(self.index)

    @property
    def tokenizer_dir(self) -> Path:
        raise UserError(f"{self.data_dir}: an audio index holds no tokenizer",
                        fix="the model's own tokenizer is used with audio-only data")

    def load(self, sample_id: int | dict[str, Any]) -> dict[str, Any]:
        """Exchange `sample_id` as a sample dict (docs/data_format.md): its audio read from the recording."""
        entry = sample_id if isinstance(sample_id, dict) else self.index[int(sample_id)]
        path = self.root / entry["path"]
        try:
            data, rate = sf.read(str(path), start=int(entry["start"]), stop=int(entry["stop"]), dtype="float32")
            audio, _ = prepare_waveform(data, rate)
        except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as exc:
            raise UserError(f"{path}: cannot read its audio ({exc.__class__.__name__}: {exc})",
                            fix="check the file, or rerun `omnittt preprocess librilight` on the folder") from None
        audio = audio[: SAMPLE_RATE * SEGMENT_SECONDS]
        speech = segment_positions(len(audio), self.settings["speech_positions"])
        pad = padding_for(speech, int(self.settings["mini_batch_size"]))
        ids = torch.tensor([SPEECH_TOKEN_INDEX] + [PAD_ID] * pad, dtype=torch.long)
        mask = torch.zeros(len(ids), dtype=torch.long)
        mask[0] = 1
        return {"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX), "attention_mask": mask,
                "speech": torch.from_numpy(audio).reshape(-1, 1), "speech_lengths": torch.tensor([len(audio)]),
                "prefix_len": 0, "original_length": speech, "conversation_id": entry["conversation_id"],
                "turn_number": int(entry["turn_number"])}
