"""`omnittt preprocess merge DIR... --output OUT`: processed datasets (typically the shards of one run, made on
several machines with `--num-shards N --shard-index I`) -> one dataset.

Sample ids are renumbered in input order: shards of one run are put in shard order whatever order they are
given in (and all N must be there), other datasets in the order given. So N shards merged equal one unsharded
run: the same ids, samples, index, manifest, errors and statistics. The settings that shape samples must
match (tokenizer, mini-batch size, speech positions, task, format, ...); conversation ids must not repeat.
Sample files are hard-linked where the file system allows (no copy of the audio), else copied; the output is
built in a temp folder and renamed, so a killed merge leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import concatenate_datasets, load_from_disk
from datasets.utils.logging import disable_progress_bar, enable_progress_bar

from omnittt.atomic import atomic_directory
from omnittt.data import store
from omnittt.data.preprocess import JOURNAL, STATE_DIR, Faults, Journal, dataset_stats, write_dataset_files
from omnittt.errors import UserError

# Settings every input must share (what the samples are made of and how they are read).
MUST_MATCH = ("mini_batch_size", "speech_positions", "tokenizer_fingerprint", "vocab_size", "pad_token_id",
              "prefix_len", "sample_rate", "task", "format")
SHARD_KEYS = ("num_shards", "shard_index")


@dataclass
class Part:
    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    stats: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return self.stats.get("settings", {})


@dataclass
class MergeSummary:
    output: Path
    stats: dict[str, Any]
    inputs: list[Path]
    shards: bool


def _open(path: Path) -> Part:
    path = path.resolve()
    if not (path / store.INDEX_FILE).exists():
        store.open_dataset(path)  # raises the one-line reason (unfinished run / not a dataset)
    header, records = Journal(path / STATE_DIR / JOURNAL, Faults("")).read(repair=False)
    if header is None:
        raise UserError(f"{path}: no {STATE_DIR}/{JOURNAL} (the per-dialogue record merge needs)",
                        fix="merge outputs of `omnittt preprocess` as written (keep the .preprocess folder)")
    stats = json.loads((path / store.STATS_FILE).read_text(encoding="utf-8"))
    index_len = len(json.loads((path / store.INDEX_FILE).read_text(encoding="utf-8")))
    if sum(len(r["index"]) for r in records) != index_len:
        raise UserError(f"{path}: its journal and index.json disagree", fix="rerun `omnittt preprocess` for it")
    return Part(path, header, records, stats)


def _order(parts: list[Part]) -> tuple[list[Part], bool]:
    """Shards of one run in shard order (all of them), anything else as given."""
    shard_counts = {p.settings.get("num_shards") for p in parts}
    if shard_counts == {None}:
        return parts, False
    # (the input path may differ: each machine mounts the corpus where it likes)
    if None in shard_counts or len(shard_counts) > 1:
        raise UserError("the inputs mix shards of different runs (or shards and whole datasets)",
                        fix="merge the shards of each run first, then merge the results")
    for key in ("skip", "max_dialogues"):
        if len({p.header.get(key) for p in parts}) > 1:
            raise UserError(f"the shards were made with different --{key.replace('_', '-')} values",
                            fix="rerun the odd shard with the same flags as the others")
    found = {p.stats.get("dialogues_found") for p in parts}
    if len(found) > 1:  # the blocks were cut from different lists: some dialogues would be lost or doubled
        raise UserError(f"the shards saw different inputs ({' vs '.join(map(str, sorted(found)))} dialogues found)",
                        fix="give every machine the same corpus, then rerun the shards that differ")
    n = shard_counts.pop()
    by_index: dict[int, Part] = {}
    for part in parts:
        i = part.settings["shard_index"]
        if i in by_index:
            raise UserError(f"{part.path} and {by_index[i].path} are both shard {i}", fix="pass each shard once")
        by_index[i] = part
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise UserError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {n} missing",
                        fix=f"pass all {n} shard folders (made with --num-shards {n} --shard-index 0..{n - 1})")
    return [by_index[i] for i in range(n)], True


def _check(parts: list[Part]) -> None:
    first = parts[0]
    for part in parts[1:]:
        differ = [k for k in MUST_MATCH if part.settings.get(k) != first.settings.get(k)]
        if differ:
            k = differ[0]
            raise UserError(f"{part.path}: {k} is {part.settings.get(k)!r} but {first.path} has "
                            f"{first.settings.get(k)!r}; datasets made with different settings cannot be merged",
                            fix="preprocess every part with the same flags and tokenizer")
    seen: dict[str, Path] = {}
    for part in parts:
        for record in part.records:
            for conv in record["manifest"]:
                cid = conv["conversation_id"]
                if cid in seen:
                    raise UserError(f"conversation {cid} is in both {seen[cid]} and {part.path}",
                                    fix="merge datasets of different conversations (e.g. shards of one run)")
                seen[cid] = part.path


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _merged_settings(parts: list[Part]) -> dict[str, Any]:
    settings = {k: v for k, v in parts[0].settings.items() if k not in SHARD_KEYS}
    for key in sorted({k for p in parts for k in p.settings} - set(SHARD_KEYS)):
        values = [p.settings.get(key) for p in parts]
        if any(v != values[0] for v in values):  # e.g. different sources: the distinct values, in order
            settings[key] = [v for i, v in enumerate(values) if v not in values[:i]]
    return settings


def merge_datasets(inputs: list[str | os.PathLike], output: str | os.PathLike, overwrite: bool = False,
                   progress: Any = None) -> MergeSummary:
    """Merge processed datasets into `output` (see the module docstring)."""
    if not inputs:
        raise UserError("nothing to merge", fix="omnittt preprocess merge shard0 shard1 shard2 --output merged")
    started = time.perf_counter()
    parts, shards = _order([_open(Path(p)) for p in inputs])
    _check(parts)
    out = Path(output).resolve()
    _clear_output(out, parts, overwrite)
    fmt = parts[0].settings.get("format", "pt")
    with atomic_directory(out) as tmp:
        shutil.copytree(parts[0].path / store.TOKENIZER_DIR, tmp / store.TOKENIZER_DIR)
        records = _renumber(parts, tmp, fmt, progress)
        if fmt == "arrow":
            _merge_arrow(parts, tmp)
        stats = _merged_stats(parts, records, shards)
        header = {**{k: v for k, v in parts[0].header.items() if k not in SHARD_KEYS},
                  "dialogues": len(records), "merged_from": stats["merged_from"]}
        (tmp / STATE_DIR).mkdir()
        store.write_jsonl(tmp / STATE_DIR / JOURNAL, [{"header": header}, *records])
        write_dataset_files(tmp, records, stats, fmt)
    stats["elapsed_sec_merge"] = round(time.perf_counter() - started, 3)
    return MergeSummary(out, stats, [p.path for p in parts], shards)


def _clear_output(out: Path, parts: list[Part], overwrite: bool) -> None:
    """Refuse an output that is an input, or that exists (unless --overwrite and it is a dataset or empty)."""
    if out in {p.path for p in parts}:
        raise UserError(f"{out}: the output is one of the inputs", fix="choose another --output")
    if out.exists():
        ours = (out / store.INDEX_FILE).exists() or not any(out.iterdir())
        if not (overwrite and ours):
            raise UserError(f"{out}: already exists", fix="add --overwrite, or pick another --output"
                            if ours else "pick another --output (it is not a dataset, so it is never replaced)")
        shutil.rmtree(out)


def _renumber(parts: list[Part], tmp: Path, fmt: str, progress: Any) -> list[dict[str, Any]]:
    """The parts' journal records with sample ids 0..N-1 in input order (pt samples linked or copied into `tmp`)."""
    total = sum(len(r["index"]) for p in parts for r in p.records)
    task = progress.add_task("merge", total=total) if progress is not None else None
    records: list[dict[str, Any]] = []
    next_id = 0
    for part in parts:
        for record in part.records:
            index = []
            for entry in record["index"]:
                rel = store.sample_relpath(next_id)
                if fmt == "pt":
                    _link_or_copy(part.path / entry["file_path"], tmp / rel)
                index.append({**entry, "sample_id": next_id, "file_path": rel})
                next_id += 1
                if task is not None:
                    progress.update(task, advance=1)
            first = index[0]["sample_id"] if index else next_id
            manifest = []
            for conv in record["manifest"]:
                manifest.append({**conv, "first_sample_id": first})
                first += conv["num_samples"]
            records.append({**record, "n": len(records), "index": index, "manifest": manifest})
    return records


def _merge_arrow(parts: list[Part], tmp: Path) -> None:
    disable_progress_bar()
    try:
        merged = concatenate_datasets([load_from_disk(str(p.path / store.ARROW_DIR)) for p in parts])
        merged.save_to_disk(str(tmp / store.ARROW_DIR))
        del merged
    finally:
        enable_progress_bar()


def _merged_stats(parts: list[Part], records: list[dict[str, Any]], shards: bool) -> dict[str, Any]:
    settings = _merged_settings(parts)
    elapsed = sum(float(p.stats.get("elapsed_sec") or 0.0) for p in parts)
    speech = sum(r["speech_sec"] for r in records)
    sources = settings["source"] if isinstance(settings.get("source"), list) else None
    stats = dataset_stats(records, source="+".join(sources) if sources else parts[0].stats.get("source", ""),
                          input_dir=parts[0].stats.get("input", "") if shards else "",
                          found=parts[0].stats.get("dialogues_found", 0) if shards
                          else sum(p.stats.get("dialogues_found", 0) for p in parts),
                          resumed_from=0, elapsed=elapsed, speech_this_run=speech, settings=settings)
    stats["merged_from"] = [str(p.path) for p in parts]
    return stats
