"""Registers the `omnittt` model type with transformers' Auto classes, so that after `import omnittt` an exported
model loads the way any model does: `AutoConfig` / `AutoModelForCausalLM.from_pretrained(export_dir)`.

Why a hook instead of a plain import: `import omnittt` (and so `import omnittt.cli`) must import neither torch nor
transformers (CLI start-up; a test checks it), while registering needs both (`OmniTTTConfig` and
`OmniTTTForCausalLM` live in `omnittt.core.modeling_omnittt`). So registration waits until transformers' Auto
classes are imported, which every `Auto*.from_pretrained` does (a plain `import transformers` does not, and does not
import torch, so it stays cheap):

- `transformers.models.auto` already imported when omnittt is: register at once;
- otherwise a `sys.meta_path` finder wraps the loaders of transformers' and omnittt's own modules, and registers
  when `transformers.models.auto` is loaded and the outermost of those imports has finished. Not earlier:
  transformers' Auto classes are often first imported from inside a half-done import, of an omnittt module
  (`modeling_omnittt` itself, the CLI commands) or of transformers (`from transformers import LlamaConfig`), and
  registering then would need that half-initialised module. Once registered, the finder steps aside (finds
  nothing, wraps nothing); it stays on `sys.meta_path`, as taking it off could make an import in progress skip
  another finder.

Registering twice is harmless (`exist_ok=True`, and a flag). A failure warns rather than breaking the import that
triggered it.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

AUTO_MODULE = "transformers.models.auto"
_WATCHED = ("transformers", "omnittt")  # these packages' imports are counted; registration waits for the outermost

_lock = threading.RLock()
_local = threading.local()  # .depth: wrapped imports in progress in this thread; .finding: names being looked up
_registered = False
_warned = False


def is_registered() -> bool:
    return _registered


def register() -> None:
    """Register now (imports torch and transformers). Idempotent."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True  # the imports below come back through the finder; they must not register again
        try:
            from transformers import AutoConfig, AutoModelForCausalLM

            from omnittt.core.modeling_omnittt import OmniTTTConfig, OmniTTTForCausalLM

            # the text config is a plain `LlamaConfig` (model_type "llama") and the speech config a
            # `WhisperConfig`: transformers knows both, only the outer type is ours
            AutoConfig.register(OmniTTTConfig.model_type, OmniTTTConfig, exist_ok=True)
            AutoModelForCausalLM.register(OmniTTTConfig, OmniTTTForCausalLM, exist_ok=True)
        except BaseException:
            _registered = False
            raise


def install() -> None:
    """Called by `import omnittt`: register now if transformers' Auto classes are loaded, else install the hook."""
    if AUTO_MODULE in sys.modules:
        _register_or_warn()
    elif not any(getattr(finder, "_omnittt_registration", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _register_or_warn() -> None:
    global _warned
    if not _lock.acquire(blocking=False):
        return  # another thread is registering (waiting here could deadlock against its import locks)
    try:
        register()
    except Exception as error:  # never break the import that triggered us
        if not _warned:
            _warned = True
            warnings.warn(f"omnittt could not register its model type with transformers' Auto classes: {error!r}; "
                          "load exports with omnittt.core.modeling_omnittt.OmniTTTForCausalLM.from_pretrained",
                          stacklevel=2)
    finally:
        _lock.release()


def _after_import() -> None:
    if not _registered and AUTO_MODULE in sys.modules:
        _register_or_warn()


class _Finder:
    """Finds nothing itself: takes the spec the other finders give and wraps its loader."""

    _omnittt_registration = True

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if _registered or name.partition(".")[0] not in _WATCHED:
            return None
        finding = _local.__dict__.setdefault("finding", set())
        if name in finding:  # a finder below us asked the import system again
            return None
        finding.add(name)
        try:
            for finder in list(sys.meta_path):
                if finder is self or getattr(finder, "_omnittt_registration", False):
                    continue
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    break
            else:
                return None
        finally:
            finding.discard(name)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader:
    """Runs the real loader, puts it back on the module, then registers if this was the outermost wrapped import."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            self.loader.exec_module(module)
        finally:
            _local.depth -= 1
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self.loader
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self.loader
        if _local.depth == 0:
            _after_import()
