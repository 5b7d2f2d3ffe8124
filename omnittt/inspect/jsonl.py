"""Append-only JSONL files that another process reads while they grow.

The writer appends whole lines (one `write` per line, flushed), repairs a half-written last line left by a killed
process before appending, and writes non-finite floats as `null`. The reader (`JsonlTail`) polls: it remembers
its byte offset, holds back a trailing line until its newline arrives, waits for a file that does not exist yet,
and starts over when the file is truncated or replaced. Polling needs no inotify and works on network filesystems.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnittt.atomic import atomic_write_text


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def dumps_line(record: dict[str, Any]) -> str:
    """One strict-JSON line (NaN/Inf become null) ending in a newline."""
    return json.dumps(_finite_or_none(record), ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """A dict for a well-formed JSON object line, None for anything else (blank, garbage, a list)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


class JsonlWriter:
    """Appends records to `path`; safe to reopen after a crash (a torn last line is cut off first)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(dumps_line(record) for record in records)
        if not text:
            return
        # One write of whole lines: a reader sees either none or all of each line's bytes plus its newline.
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()

    def drop_where(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Remove the lines whose record matches `predicate` (rewritten atomically); returns how many."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            record = parse_line(line)
            if record is not None and predicate(record):
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            atomic_write_text(self.path, "".join(kept))
        return dropped


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a writer killed mid-line) so the next append starts a clean line."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # search backwards for the last newline in blocks
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            pos = start
        handle.truncate(0)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete, well-formed line of a file (a missing file is empty; an unterminated last line is
    still being written and is left out)."""
    tail = JsonlTail(path)
    return tail.poll().records


@dataclass
class TailBatch:
    records: list[dict[str, Any]] = field(default_factory=list)
    reset: bool = False  # the file was truncated or replaced: earlier records no longer describe it

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)


class JsonlTail:
    """Incremental reader of a growing JSONL file. `poll()` returns the lines completed since the last call."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._pos = 0
        self._pending = b""
        self._inode: tuple[int, int] | None = None
        self.bad_lines = 0  # complete lines that were not a JSON object (skipped, counted)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def poll(self, max_bytes: int | None = None) -> TailBatch:
        """Lines completed since the last call (reading at most `max_bytes` new bytes when given)."""
        batch = TailBatch()
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            if self._pos or self._pending:  # the file went away: whatever comes next is a new file
                self._restart(batch)
            return batch
        with handle:
            stat = os.fstat(handle.fileno())
            inode = (stat.st_dev, stat.st_ino)
            if self._inode is not None and (inode != self._inode or stat.st_size < self._pos):
                self._restart(batch)
            self._inode = inode
            handle.seek(self._pos)
            chunk = handle.read() if max_bytes is None else handle.read(max_bytes)
            self._pos += len(chunk)
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            record = parse_line(line)
            if record is None:
                self.bad_lines += 1
            else:
                batch.records.append(record)
        return batch

    def _restart(self, batch: TailBatch) -> None:
        self._pos, self._pending, self._inode = 0, b"", None
        batch.reset = True
