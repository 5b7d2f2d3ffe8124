"""`omnittt chat`: a spoken conversation with a trained model whose TTT state persists across turns. A peer of
train, not part of it: of train it uses only what reads a run (`run_dir`, `checkpoint.read_trainer_state`) and
`setup`'s dataset-vs-model check, inside `open_chat`.

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
