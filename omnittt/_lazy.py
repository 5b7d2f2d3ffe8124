"""Lazy package exports: `from omnittt.core import TTTMLP` imports `omnittt.core.ttt_layer` only when asked, so
importing a package stays cheap (the CLI must not import torch up front)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> tuple[
        list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`exports` maps a public name to the submodule (relative to `package`) defining it. Returns the package's
    `__all__`, `__getattr__` and `__dir__`; a resolved name is cached in the package `namespace`."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    names = sorted(exports)
    return names, __getattr__, lambda: names
