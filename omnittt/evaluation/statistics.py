"""The statistics of `omnittt eval`: per-token scores and their token-weighted means with bootstrap intervals.

A leaf (numpy only, nothing else of omnittt): scoring fills `TokenScores`, the report and the recall probe
summarize them with `summarize`.

Intervals: percentile bootstrap over groups (conversations / sessions, or recall dialogues): resample the groups
with replacement and recompute the token-weighted mean (for a difference of two runs: the paired difference on
the same tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CI_METHOD = "percentile bootstrap over conversations (sessions), token-weighted mean"
_TOKEN_ARRAYS = ("conv", "exchange", "ordinal", "position", "loss", "correct")


@dataclass
class TokenScores:
    """Per assistant target token of one run: which conversation (index into `conversation_ids`), exchange and
    target ordinal inside the exchange, its position (real tokens before it since the conversation start), the
    loss and whether the greedy (argmax) prediction was right. `exchange_starts[(conv, k)]` is the position
    of exchange k's first token."""

    conversation_ids: list[str]
    conv: np.ndarray
    exchange: np.ndarray
    ordinal: np.ndarray
    position: np.ndarray
    loss: np.ndarray
    correct: np.ndarray
    exchange_starts: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.loss.shape[0])

    def same_tokens(self, other: TokenScores) -> bool:
        return all(np.array_equal(getattr(self, key), getattr(other, key))
                   for key in ("conv", "exchange", "ordinal", "position"))

    def take(self, index: np.ndarray) -> TokenScores:
        """The scores of the tokens at `index` (in that order)."""
        return TokenScores(self.conversation_ids, **{key: getattr(self, key)[index] for key in _TOKEN_ARRAYS},
                           exchange_starts=self.exchange_starts)


@dataclass
class StatOptions:
    min_tokens: int = 100  # a bucket with fewer tokens gets no number
    min_dialogues: int = 3  # a recall-probe row over fewer dialogues gets no number
    bootstrap: int = 1000  # bootstrap resamples
    confidence: float = 0.95
    seed: int = 0


def _per_group(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, sum of values per key, count per key)."""
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=len(unique)), np.bincount(inverse,
                                                                                             minlength=len(unique))


def bootstrap_ratio(sums: np.ndarray, counts: np.ndarray, n_boot: int, confidence: float,
                    rng: np.random.Generator) -> tuple[float, float] | None:
    """Percentile interval of sum(sums)/sum(counts) under resampling groups with replacement (None with
    fewer than two groups)."""
    n = len(sums)
    if n < 2 or n_boot < 1:
        return None
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    stats = (weights @ sums) / np.maximum(weights @ counts, 1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(select: np.ndarray, scores: TokenScores, options: StatOptions, other: TokenScores | None = None,
              groups: np.ndarray | None = None) -> dict[str, Any]:
    """Loss (or, with `other`, the paired difference other - scores) over the selected tokens, with the
    bootstrap interval over `groups` (default: conversations), token count, accuracy and a note when no number
    is reported."""
    groups = scores.conv if groups is None else groups
    tokens = int(select.sum())
    keys = groups[select]
    out: dict[str, Any] = {"tokens": tokens, "conversations": int(len(np.unique(keys))), "loss": None, "ci": None}
    if tokens < options.min_tokens:
        out["note"] = f"too few tokens ({tokens} < {options.min_tokens})"
        return out
    values = scores.loss[select] if other is None else other.loss[select] - scores.loss[select]
    _, sums, counts = _per_group(keys, values)
    out["loss"] = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(options.seed)
    interval = bootstrap_ratio(sums, counts.astype(np.float64), options.bootstrap, options.confidence, rng)
    out["ci"] = list(interval) if interval is not None else None
    if interval is None:
        out["note"] = "one conversation: no interval"
    if other is None:
        out["accuracy"] = float(scores.correct[select].mean())
    return out
