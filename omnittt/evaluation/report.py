"""The report of `omnittt eval`: per run the overall and per-position-bucket loss with bootstrap intervals
(`omnittt.evaluation.statistics`), paired differences against the first run on the same tokens, the recall probe,
and ln(vocab), the uniform-guess loss, beside every figure. A bucket with fewer than `min_tokens` tokens is
reported without a number; a non-finite figure is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from omnittt.errors import UserError
from omnittt.evaluation.scoring import NonFiniteEvalError, RunSpec
from omnittt.evaluation.statistics import CI_METHOD, StatOptions, TokenScores, summarize

# Bucket edges in positions: 0-1k, 1k-2k, 2k-4k, ..., 32k-64k, then 64k+ (only when data reaches it).
BUCKET_EDGES: tuple[int, ...] = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
UNIFORM_TOLERANCE = 0.1  # a loss within 10% of ln(vocab) is at the uniform-guess level


def bucket_edges(max_position: int) -> list[tuple[int, int | None]]:
    """[(start, end)] of the position buckets up to the largest position seen (end None: open-ended)."""
    edges = list(BUCKET_EDGES)
    spans: list[tuple[int, int | None]] = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if a <= max_position]
    if max_position >= edges[-1]:
        spans.append((edges[-1], None))
    return spans


def bucket_label(start: int, end: int | None) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}k" if n else "0"
    return f"{k(start)}+" if end is None else f"{k(start)}-{k(end)}"


def bucket_table(scores: TokenScores, options: StatOptions, spans: Sequence[tuple[int, int | None]],
                 other: TokenScores | None = None) -> list[dict[str, Any]]:
    rows = []
    for start, end in spans:
        select = (scores.position >= start) & ((scores.position < end) if end is not None else True)
        rows.append({"bucket": bucket_label(start, end), "start": start, "end": end,
                     **summarize(np.asarray(select), scores, options, other)})
    return rows


def uniform_verdict(loss: float | None, vocab_size: int) -> str:
    """How a loss compares with guessing uniformly over the vocabulary (ln V)."""
    uniform = math.log(vocab_size)
    if loss is None:
        return "no figure"
    if loss > uniform * (1 + UNIFORM_TOLERANCE):
        return f"worse than a uniform guess (ln {vocab_size} = {uniform:.3f}): the evaluation or the model is broken"
    if loss >= uniform * (1 - UNIFORM_TOLERANCE):
        return (f"at the uniform-guess level (ln {vocab_size} = {uniform:.3f}): the model predicts nothing "
                "(random weights, or a broken evaluation)")
    return f"below the uniform guess (ln {vocab_size} = {uniform:.3f}) by {uniform - loss:.3f} nats"


def build_report(runs: Sequence[RunSpec], scores: Sequence[TokenScores], vocab_size: int,
                 options: StatOptions, recall: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready report: per run the overall and per-bucket loss; paired differences of every other run
    against the first (same tokens); recall probe; ln(vocab)."""
    max_position = max((int(s.position.max()) for s in scores if s.tokens), default=0)
    spans = bucket_edges(max_position)
    uniform = math.log(vocab_size)
    report: dict[str, Any] = {
        **(meta or {}),
        "vocab_size": vocab_size,
        "uniform_loss": uniform,
        "statistics": {"interval": CI_METHOD, "confidence": options.confidence, "bootstrap": options.bootstrap,
                       "min_tokens": options.min_tokens, "seed": options.seed},
        "buckets": [bucket_label(a, b) for a, b in spans],
        "runs": [],
        "comparisons": [],
    }
    for run, score in zip(runs, scores, strict=True):
        overall = summarize(np.ones(score.tokens, dtype=bool), score, options)
        report["runs"].append({
            "name": run.name, "source": run.source, "ttt_reset": run.ttt_reset, "speech": run.speech,
            "ttt_layers": list(getattr(run.model.config.text_config, "ttt_layers", None) or []),
            "tokens": score.tokens, "conversations": int(len(np.unique(score.conv))),
            "overall": overall, "verdict": uniform_verdict(overall["loss"], vocab_size),
            "buckets": bucket_table(score, options, spans),
        })
    for run, score in zip(runs[1:], scores[1:], strict=True):
        if not scores[0].same_tokens(score):
            raise UserError(f"{run.name} and {runs[0].name} scored different tokens; they cannot be compared",
                            fix="evaluate both on the same --data and --stage")
        report["comparisons"].append({
            "name": f"{run.name} - {runs[0].name}", "a": runs[0].name, "b": run.name,
            "meaning": f"loss of {run.name} minus loss of {runs[0].name} on the same tokens (> 0: {runs[0].name} "
                       "is better)",
            "overall": summarize(np.ones(score.tokens, dtype=bool), scores[0], options, other=score),
            "buckets": bucket_table(scores[0], options, spans, other=score),
        })
    if recall is not None:
        report["recall"] = recall
    return report


def check_report_finite(report: Any, where: str = "report") -> None:
    """Every number in the report is finite (a NaN/Inf figure is a bug, never output)."""
    if isinstance(report, dict):
        for key, value in report.items():
            check_report_finite(value, f"{where}.{key}")
    elif isinstance(report, list | tuple):
        for i, value in enumerate(report):
            check_report_finite(value, f"{where}[{i}]")
    elif isinstance(report, float) and not math.isfinite(report):
        raise NonFiniteEvalError(f"{where} is {report}", fix="report this as a bug with the command line")
