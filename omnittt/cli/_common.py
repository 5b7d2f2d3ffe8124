"""What every command shares: the error convention (one red line + the fix, exit 2; tracebacks with
--verbose). Commands import torch/transformers inside their bodies."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from omnittt.console import err_console
from omnittt.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

state = {"verbose": False}

DEFAULT_DATA = Path("processed_data")


def data_option() -> Any:
    """`--data DIR`, the processed dataset of every command that reads one."""
    return typer.Option(None, "--data", help=f"The processed dataset directory (default: {DEFAULT_DATA}).")


def data_argument() -> Any:
    """The positional DATA that `validate` and `curriculum` also accept (the same as --data)."""
    return typer.Argument(None, metavar="DATA", show_default=False, help="Same as --data DIR.")


def dataset_dir(option: Path | None, positional: Path | None) -> Path:
    """The processed dataset from --data or the positional DATA (one of them, or both naming the same folder)."""
    if option is not None and positional is not None and option != positional:
        raise UserError(f"two datasets given: --data {option} and {positional}",
                        fix="give the dataset once: --data DIR")
    return option or positional or DEFAULT_DATA


def report_user_error(exc: UserError) -> None:
    fix = f" [dim]Fix:[/dim] {exc.fix}" if exc.fix else ""
    err_console.print(f"[bold red]error:[/bold red] {exc.message}{fix}", soft_wrap=True, markup=True)


def handle_errors(func: F) -> F:
    """Turn a `UserError` into one red line and exit code 2 (a traceback only with --verbose)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            if state["verbose"]:
                raise
            report_user_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
