"""The `omnittt` command line: every command listed, lazy imports, the error convention."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

COMMANDS = ["download", "preprocess", "validate", "curriculum", "train", "resume", "monitor", "chat", "eval",
            "quickstart"]


def test_help_lists_every_command_with_a_line_of_help():
    out = subprocess.run(["omnittt", "--help"], capture_output=True, text=True, check=True,
                         env={"COLUMNS": "200", "PATH": _path()}).stdout
    for command in COMMANDS:
        line = next((ln for ln in out.splitlines() if ln.strip("│ ").startswith(command + " ")), None)
        assert line is not None, f"{command} missing from --help"
        assert len(line.strip("│ ").split()) > 2, f"{command} has no help line"


def test_every_command_help_has_an_example():
    from omnittt.cli import app

    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)
        assert "omnittt " + command.split()[0] in result.output or "Example" in result.output, command


def test_version():
    from omnittt import __version__
    from omnittt.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_import_cli_does_not_import_torch_or_transformers():
    code = ("import sys, json, omnittt.cli; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_user_error_is_one_red_line_and_exit_2():
    import typer

    from omnittt.cli._common import handle_errors
    from omnittt.errors import UserError

    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise UserError("data/x.wav: truncated", fix="re-download it")

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data/x.wav: truncated" in lines[0] and "re-download it" in lines[0]
    assert "Traceback" not in result.output


def _path() -> str:
    import os

    return os.environ["PATH"]
