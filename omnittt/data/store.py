"""The processed dataset on disk: the writer the preprocessor uses and the one reader everything else uses.

Layout (docs/data_format.md "The processed dataset"):

    index.json                one entry per sample (sample_id, conversation_id, turn_number, num_tokens,
                              original_length, audio_duration_sec, speaker_id, file_path)
    manifest.jsonl            one line per conversation
    preprocessing_stats.json  counts, skips by reason, durations, settings
    errors.jsonl              one line per skipped input
    tokenizer/                the tokenizer the samples were made with
    samples/<shard:05d>/<sample_id:08d>.pt     --format pt
    arrow/                    --format arrow (a `datasets` save_to_disk folder, row = sample_id)

Sample ids are 0..N-1 in input order, so an arrow row is its sample id.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, Features, Sequence, Value, load_from_disk
from datasets.arrow_writer import ArrowWriter
from datasets.utils.logging import disable_progress_bar, enable_progress_bar

from omnittt.atomic import atomic_write
from omnittt.errors import UserError

SHARD_SIZE = 1000
FORMATS = ("pt", "arrow")
INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.jsonl"
STATS_FILE = "preprocessing_stats.json"
ERRORS_FILE = "errors.jsonl"
TOKENIZER_DIR = "tokenizer"
SAMPLES_DIR = "samples"
ARROW_DIR = "arrow"

# The sample dict (docs/data_format.md "The processed dataset"): tensor keys and their dtypes, then the scalar keys.
TENSOR_KEYS = ("speech", "speech_lengths", "input_ids", "labels", "attention_mask")
SCALAR_KEYS = ("conversation_id", "turn_number", "speaker_id", "original_length", "prefix_len")
SAMPLE_KEYS = TENSOR_KEYS + SCALAR_KEYS


def sample_relpath(sample_id: int) -> str:
    """`samples/<shard:05d>/<sample_id:08d>.pt`, relative to the dataset directory."""
    return f"{SAMPLES_DIR}/{sample_id // SHARD_SIZE:05d}/{sample_id:08d}.pt"


def save_sample(data_dir: str | os.PathLike, sample_id: int, sample: dict[str, Any],
                before_rename: Any = None) -> str:
    """Write one sample atomically (temp name, then rename); returns its relative path. `before_rename` is
    called between the temp write and the rename (the crash tests inject faults there)."""
    rel = sample_relpath(sample_id)

    def write(tmp: Path) -> None:
        torch.save(sample, tmp)
        if before_rename is not None:
            before_rename()

    atomic_write(Path(data_dir) / rel, write)
    return rel


def to_sample(speech: Any, speech_lengths: list[int], input_ids: list[int], labels: list[int],
              attention_mask: list[int], conversation_id: str, turn_number: int, speaker_id: str,
              original_length: int, prefix_len: int) -> dict[str, Any]:
    """The sample dict with the contract's dtypes and shapes (`speech` float32 `[n, 1]`)."""
    speech_t = torch.from_numpy(np.ascontiguousarray(speech, dtype=np.float32)).reshape(-1, 1)
    return {
        "speech": speech_t,
        "speech_lengths": torch.tensor(speech_lengths, dtype=torch.long),
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        "conversation_id": conversation_id,
        "turn_number": int(turn_number),
        "speaker_id": speaker_id,
        "original_length": int(original_length),
        "prefix_len": int(prefix_len),
    }


def _arrow_features() -> Any:
    return Features({
        "speech": Sequence(Value("float32")),
        "speech_lengths": Sequence(Value("int64")),
        "input_ids": Sequence(Value("int64")),
        "labels": Sequence(Value("int64")),
        "attention_mask": Sequence(Value("int64")),
        "conversation_id": Value("string"),
        "turn_number": Value("int64"),
        "speaker_id": Value("string"),
        "original_length": Value("int64"),
        "prefix_len": Value("int64"),
    })


ARROW_BATCH_VALUES = 1 << 26  # speech values per record batch (int32 list offsets must stay < 2**31)


def _arrow_batches(paths: list[str], features: Any) -> Iterator[Any]:
    """Record batches of samples, built column-wise from numpy (per-row conversion is ~10x slower)."""
    def flush(rows: list[dict[str, Any]]) -> Any:
        columns = {}
        for key in TENSOR_KEYS:
            arrays = [row[key] for row in rows]
            offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
            columns[key] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays)))
        for key in SCALAR_KEYS:
            columns[key] = pa.array([row[key] for row in rows])
        return pa.Table.from_pydict(columns).cast(features.arrow_schema)

    rows: list[dict[str, Any]] = []
    values = 0
    for path in paths:
        sample = torch.load(path, weights_only=True)
        rows.append({key: sample[key].reshape(-1).numpy() for key in TENSOR_KEYS}
                    | {key: sample[key] for key in SCALAR_KEYS})
        values += len(rows[-1]["speech"])
        if values >= ARROW_BATCH_VALUES or len(rows) >= 1024:
            yield flush(rows)
            rows, values = [], 0
    if rows:
        yield flush(rows)


def write_arrow(data_dir: str | os.PathLike, sample_paths: list[str], target: str | os.PathLike) -> None:
    """Write the given `.pt` samples, in order, as a `datasets` folder at `target` (row i = sample i):
    record batches streamed into one memory-mapped arrow file, then `save_to_disk` shards it."""
    features = _arrow_features()
    scratch = Path(tempfile.mkdtemp(prefix=".arrow_cache.", dir=data_dir))
    disable_progress_bar()  # our own progress bar reports; datasets' tqdm would interleave with it
    try:
        with ArrowWriter(features=features, path=str(scratch / "samples.arrow")) as writer:
            for table in _arrow_batches([str(p) for p in sample_paths], features):
                writer.write_table(table)
            if not sample_paths:  # datasets cannot open an arrow file without a batch
                writer.write_table(features.arrow_schema.empty_table())
            writer.finalize()
        ds = Dataset.from_file(str(scratch / "samples.arrow"))
        ds.save_to_disk(str(target))
        del ds
    finally:
        enable_progress_bar()
        shutil.rmtree(scratch, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class SampleStore:
    """Read access to a processed dataset, the same for both formats."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        index_path = self.data_dir / INDEX_FILE
        if not index_path.exists():
            if (self.data_dir / "audio_index.jsonl").exists():
                raise UserError(f"{self.data_dir}: an audio index (librilight, for pre-training), not a dataset "
                                "of samples", fix="point at the output of `omnittt preprocess` for a corpus with "
                                "transcripts or dialogues")
            if (self.data_dir / ".preprocess").exists():
                raise UserError(f"{self.data_dir}: preprocessing has not finished (no {INDEX_FILE} yet)",
                                fix="rerun the same `omnittt preprocess` command: it resumes")
            raise UserError(f"{self.data_dir}: not a processed dataset (no {INDEX_FILE})",
                            fix="run `omnittt preprocess SOURCE INPUT --output DIR` first")
        try:
            self.index: list[dict[str, Any]] = json.loads(index_path.read_text(encoding="utf-8"))
            stats_path = self.data_dir / STATS_FILE
            self.stats: dict[str, Any] = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            self.manifest: list[dict[str, Any]] = read_jsonl(self.data_dir / MANIFEST_FILE)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.data_dir}: damaged dataset index ({exc.__class__.__name__}: {exc})",
                            fix="rerun `omnittt preprocess` into a fresh --output") from None
        self.settings: dict[str, Any] = self.stats.get("settings", {})
        self.format: str = self.settings.get("format") or ("arrow" if (self.data_dir / ARROW_DIR).exists()
                                                           else "pt")
        self._by_id = {int(entry["sample_id"]): entry for entry in self.index}
        self._arrow: Any = None

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for entry in self.index:
            yield self.load(entry)

    @property
    def tokenizer_dir(self) -> Path:
        return self.data_dir / TOKENIZER_DIR

    def entry(self, entry_or_sample_id: dict[str, Any] | int) -> dict[str, Any]:
        if isinstance(entry_or_sample_id, dict):
            return entry_or_sample_id
        try:
            return self._by_id[int(entry_or_sample_id)]
        except KeyError:
            raise UserError(f"{self.data_dir}: no sample {entry_or_sample_id}",
                            fix=f"sample ids are 0..{len(self.index) - 1}") from None

    def load(self, entry_or_sample_id: dict[str, Any] | int) -> dict[str, Any]:
        """The sample dict of docs/data_format.md (tensors as torch tensors, `speech` float32 `[n, 1]`)."""
        entry = self.entry(entry_or_sample_id)
        if self.format == "arrow":
            return self._load_arrow(int(entry["sample_id"]))

        path = self.data_dir / entry["file_path"]
        try:
            return torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{path}: sample file missing", fix="rerun `omnittt preprocess` (it resumes)") from None
        except Exception as exc:  # a damaged file: name it
            raise UserError(f"{path}: cannot load sample ({exc.__class__.__name__})",
                            fix="delete it and rerun `omnittt preprocess`") from None

    def _load_arrow(self, row: int) -> dict[str, Any]:
        if self._arrow is None:
            self._arrow = load_from_disk(str(self.data_dir / ARROW_DIR)).with_format("numpy")
        data = self._arrow[row]
        sample: dict[str, Any] = {
            "speech": torch.as_tensor(data["speech"], dtype=torch.float32).reshape(-1, 1),
            **{key: torch.as_tensor(data[key], dtype=torch.long).reshape(-1)
               for key in TENSOR_KEYS if key != "speech"},
        }
        for key in SCALAR_KEYS:
            value = data[key]
            sample[key] = value.item() if hasattr(value, "item") else value
            if isinstance(sample[key], bytes):
                sample[key] = sample[key].decode()
        sample["conversation_id"] = str(sample["conversation_id"])
        sample["speaker_id"] = str(sample["speaker_id"])
        return sample


def open_dataset(data_dir: str | os.PathLike) -> SampleStore:
    """Open a processed dataset (either format) for reading."""
    return SampleStore(data_dir)
