"""The transformers names that moved between the supported releases, in one place.

transformers 5.25 renamed the cache argument and output field of every model from `past_key_values` to `cache`
(the old name stays a deprecated alias until 5.40). We subclass transformers' Llama, so our layers receive the
cache under whichever name the installed release's `LlamaDecoderLayer` passes, and our outputs must carry it
under the field name that release's output classes declare. A model that silently ignores its cache argument
starts every exchange from the initial TTT state without a word, so every cache-like argument that the TTT model
does not consume is an error that names it (`take_cache`).
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

#: the keyword transformers' Llama layers and mask builders take the cache under ("cache" from 5.25 on)
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters else "past_key_values"
#: the field name of the cache in transformers' model outputs
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
#: names other models (and older or newer transformers releases) use for a cache; none of them is read here
FOREIGN_CACHE_NAMES = ("past_key_value", "cache_params", "layer_past", "kv_cache", "ttt_cache")


def take_cache(cache: Any, past_key_values: Any, kwargs: dict[str, Any], where: str) -> Any:
    """The cache given as `cache=` or under its deprecated name `past_key_values=` (not both), after checking
    that `kwargs` (what the callee would otherwise ignore) holds no other cache-like argument."""
    for name, value in kwargs.items():
        if value is not None and (name in FOREIGN_CACHE_NAMES or isinstance(value, Cache)):
            raise TypeError(
                f"{where} does not read the argument {name!r}, so the TTT state would not carry; "
                "pass the conversation's TTTCache as cache="
            )
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise TypeError(f"{where} got two different caches (cache= and past_key_values=); pass one, as cache=")
    return cache if cache is not None else past_key_values


def output_cache(output: Any) -> Any:
    """The cache a transformers model output carries, whatever the release calls the field."""
    return getattr(output, CACHE_FIELD)
