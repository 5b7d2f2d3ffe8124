"""One function opens a run, and chat, eval, resume and export use it (issue #20): `omnittt.runs.open_run` is
called by each of them, none of them chooses or verifies a checkpoint or reads its trainer state on its own, and
the run owner imports none of cli, evaluation or chat."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import omnittt

ROOT = Path(omnittt.__file__).parent
CALLERS = ["chat/loading.py", "evaluation/evaluate.py", "train/setup.py", "train/export.py", "cli/resume.py"]
# what opening a run consists of: only omnittt/runs.py does it
OPENING = {"resolve_checkpoint", "verify_checkpoint", "read_trainer_state"}


def called_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
    return names


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("caller", CALLERS)
def test_every_caller_opens_runs_with_open_run(caller):
    called = called_names(ROOT / caller)
    assert "open_run" in called
    assert not called & OPENING, caller


def test_the_run_owner_imports_no_cli_evaluation_or_chat():
    imported = imported_modules(ROOT / "runs.py")
    assert not [m for m in imported if m.split(".")[:2] in (["omnittt", "cli"], ["omnittt", "evaluation"],
                                                            ["omnittt", "chat"])]
