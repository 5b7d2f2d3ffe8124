"""The `omnittt` command line: every command listed, lazy imports, the error convention."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from typer.testing import CliRunner

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands() -> list[str]:
    """The commands of the command table, in order (so a new command is checked without editing this file)."""
    from omnittt.cli.commands import COMMANDS

    return [command.name for command in COMMANDS]


def test_the_app_registers_the_command_table():
    import typer.main

    from omnittt.cli import app
    from omnittt.cli.commands import COMMANDS

    registered = typer.main.get_command(app).commands
    assert list(registered) == _commands()
    assert [registered[c.name].short_help for c in COMMANDS] == [c.short_help for c in COMMANDS]


def test_commands_are_the_readme_table():
    commands = _commands()
    assert {"download", "train", "eval", "export", "quickstart"} <= set(commands), commands
    table = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^\| `omnittt (\w+)` \|", table, re.M)) == sorted(commands)


def test_console_script_is_omnittt_cli_main():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("omnittt") == "omnittt.cli:main"


def test_help_lists_every_command_with_a_line_of_help():
    # `python -m omnittt` with this interpreter: the test does not depend on the shell's PATH
    out = subprocess.run([sys.executable, "-m", "omnittt", "--help"], capture_output=True, text=True, check=True,
                         env={"COLUMNS": "200", "NO_COLOR": "1"}).stdout
    from omnittt.cli.commands import COMMANDS

    for command in COMMANDS:
        line = next((ln for ln in out.splitlines() if ln.strip("│ ").startswith(command.name + " ")), None)
        assert line is not None, f"{command.name} missing from --help"
        assert len(line.strip("│ ").split()) > 2, f"{command.name} has no help line"
        assert line.strip("│ ").split()[1] == command.short_help.split()[0], f"{command.name}: not the table's help"


def _example_lines(help_text: str) -> list[str]:
    """The lines of a command's help text under its "Example:"/"Examples:" heading (or on the heading's line),
    up to the options box. The Usage line, which always holds "omnittt CMD", is left out."""
    examples: list[str] = []
    in_examples = False
    for raw in help_text.splitlines():
        line = raw.strip().strip("│").strip()
        if line.startswith("Usage:"):
            continue
        if line.startswith(("╭", "╰")):
            in_examples = False
            continue
        heading = re.match(r"Examples?:\s*(.*)$", line)
        if heading:
            in_examples = True
            line = heading.group(1)
        if in_examples and line:
            examples.append(line)
    return examples


def test_every_command_help_has_an_example():
    from omnittt.cli import app

    runner = CliRunner()
    for command in _commands():
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert result.exit_code == 0, (command, result.output)
        examples = _example_lines(result.output)
        assert any(re.match(rf"omnittt {command}(\s|$)", line) for line in examples), (
            f"`omnittt {command} --help` has no example line (Example: omnittt {command} ...): {examples}")


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
