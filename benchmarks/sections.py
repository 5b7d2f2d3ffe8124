"""The one way a benchmark script writes its figures into BENCHMARKS.md: its `## ...` section replaced in place (or
appended when the file has none yet), every other section kept as it is."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, marker: str, text: str) -> None:
    """Replace the section that starts with the heading `marker` (up to the next `## ` heading) by `text`."""
    body = path.read_text() if path.exists() else ""
    if marker in body:
        head, _, rest = body.partition(marker)
        tail = rest.split("\n## ", 1)
        body = head + text + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + text
    path.write_text(body)
