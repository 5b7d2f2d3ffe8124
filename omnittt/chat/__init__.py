"""`omnittt chat`: a spoken conversation with a trained model whose TTT state persists across turns. A peer of
train, not part of it: `open_chat` opens the run or model folder with `omnittt.runs.open_run` (the one owner of
opening a run, with the dataset-vs-model check).

`session` (`ChatSession`: turns, the cache, save/load as safetensors), `generation` (`GenerationSettings`, the
settings saved with a model), `loading` (`open_chat` on a run or a model directory). Names are imported lazily:
`import omnittt.chat` imports neither torch nor transformers.
"""

from __future__ import annotations

from omnittt._lazy import lazy_exports

# public name -> module (relative to omnittt.chat) that defines it
_EXPORTS: dict[str, str] = {
    "ChatSession": "session",
    "ChatReply": "session",
    "GenerationSettings": "generation",
    "generation_defaults": "generation",
    "ChatSource": "loading",
    "open_chat": "loading",
    "set_attention_window": "loading",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
