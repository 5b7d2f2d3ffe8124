"""House rules that a change can silently break: the TTT cache's fields are touched only by core (its users call its
methods), nothing cites a document outside the repository, and no function outside the CLI's option declarations
is longer than a screen."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "omnittt"
CACHE_FIELDS = ("stream_position", "pending_eta", "reset_rows", "real_tokens", "attention_mask_history",
                "seen_positions", "positions_fed", "has_previous_state")
MAX_LINES = 60


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_core_touches_the_cache_fields():
    names = "|".join(CACHE_FIELDS)  # attribute access, plain or through getattr (report keys may share a name)
    pattern = re.compile(rf"\.({names})\b|getattr\([^,]+,\s*[\"']({names})[\"']")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in _sources(PACKAGE) if "core" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_nothing_cites_a_document_outside_the_repository():
    cited = re.compile(r"DESIGN\.md|CONTRACTS\.md|shared/research|\.\./shared")
    files = _sources(PACKAGE) + _sources(ROOT / "tests") + _sources(ROOT / "benchmarks") + sorted(
        (ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    found = [f"{path.relative_to(ROOT)}:{n}" for path in files if path != Path(__file__).resolve()
             for n, line in enumerate(path.read_text().splitlines(), 1) if cited.search(line)]
    assert found == []


def test_no_function_longer_than_a_screen_outside_the_cli_declarations():
    long = []
    for path in _sources(PACKAGE):
        if "cli" in path.parts:
            continue  # typer commands: mostly option declarations
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
