"""`omnittt eval` on long-form audio: the audio objective (omnittt/core/audio_objective.py) on held-out recordings,
the TTT state carried through each whole recording vs reset to the learned init before every segment, and the
gap between the two by position into the recording.

Scoring feeds the recordings exactly as training does (one `ExchangeStream` per run, segment after segment, alignment
padding included, under `torch.no_grad()`). Every speech position with a target `shift` positions ahead in its
segment is one scored item: its L1 loss and its position (real positions fed since the recording's start). The
figures are position-weighted means with percentile-bootstrap intervals over recordings
(`omnittt.evaluation.statistics`); the gap is the paired difference reset - carried on the same positions, so > 0
means the carried state predicts the audio better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from omnittt.core.audio_objective import audio_exchange, audio_shift
from omnittt.core.exchange_stream import model_inputs
from omnittt.errors import UserError
from omnittt.evaluation.scoring import NonFiniteEvalError, RunSpec, exchange_steps
from omnittt.evaluation.statistics import CI_METHOD, StatOptions, TokenScores, summarize

GAP_MEANING = ("audio-objective loss with the TTT state reset every segment minus with it carried through the "
               "recording, on the same positions (> 0: the carried state predicts the audio better)")


def check_audio_model(model: torch.nn.Module, source: str) -> int:
    """The model's audio-head shift; a model without the head cannot be scored on audio."""
    shift = audio_shift(model)
    if shift is None:
        raise UserError(f"{source} has no audio head: it was not trained with the audio objective",
                        fix="evaluate a run pre-trained with `omnittt train --objective audio`, or pass --data a "
                            "dataset of dialogues")
    return shift


@torch.no_grad()
def score_audio(runs: Sequence[RunSpec], loader: Any, device: torch.device | str = "cpu",
                progress: Any = None) -> list[TokenScores]:
    """Per scored speech position of every recording of `loader` (shuffle off): loss and position, per run."""
    device = torch.device(device)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in runs]
    offset = torch.zeros(0, dtype=torch.long)  # real positions fed so far, per row of the batch
    for batch, k, rows, streams in exchange_steps(runs, loader, progress):
        if k == 0:
            offset = torch.zeros(len(rows), dtype=torch.long)
        step = batch[k]
        inputs = model_inputs(step, device)
        for r, (run, stream) in enumerate(zip(runs, streams, strict=True)):
            scored = audio_exchange(stream, inputs, step["turn_number"])
            parts[r].append(_items(run, scored, offset, rows, k, batch))
        offset = offset + scored.mask.long().sum(1).cpu()
    ids = [conv.conversation_id for conv in loader.dataset.conversations]
    return [_scores(ids, p) for p in parts]


def _items(run: RunSpec, scored: Any, offset: torch.Tensor, rows: torch.Tensor, k: int, batch: Any
           ) -> dict[str, np.ndarray]:
    valid = scored.valid.cpu()
    losses = scored.losses.float().cpu()
    if not bool(torch.isfinite(losses[valid]).all()):
        raise NonFiniteEvalError(f"{run.name}: non-finite audio loss in exchange {k} of "
                                 f"{', '.join(batch.conversation_ids)}; no figure is reported",
                                 fix="check the checkpoint (NaN weights or TTT state)")
    where = valid.nonzero()
    positions = offset[:, None] + scored.mask.long().cpu()[:, : valid.shape[1]].cumsum(1) - 1
    return {"conv": rows[where[:, 0]].numpy(), "exchange": np.full(len(where), k),
            "ordinal": where[:, 1].numpy(), "position": positions[valid].numpy(),
            "loss": losses[valid].double().numpy(), "correct": np.zeros(len(where), dtype=bool)}


def _scores(conversation_ids: list[str], parts: list[dict[str, np.ndarray]]) -> TokenScores:
    keys = ("conv", "exchange", "ordinal", "position", "loss", "correct")
    dtypes = (np.int32, np.int32, np.int32, np.int64, np.float64, bool)
    arrays = {key: (np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)).astype(dtype)
              for key, dtype in zip(keys, dtypes, strict=True)}
    return TokenScores(conversation_ids, **arrays)


def position_bins(max_position: int, count: int) -> list[tuple[int, int]]:
    """`count` equal bins [start, end) of positions into the recording covering 0..max_position."""
    width = max(1, -(-(max_position + 1) // count))
    return [(i * width, (i + 1) * width) for i in range(count) if i * width <= max_position]


def _table(scores: TokenScores, options: StatOptions, bins: Sequence[tuple[int, int]],
           other: TokenScores | None = None) -> list[dict[str, Any]]:
    return [{"bin": f"{a}-{b}", "start": a, "end": b,
             **summarize((scores.position >= a) & (scores.position < b), scores, options, other)} for a, b in bins]


def audio_report(runs: Sequence[RunSpec], scores: Sequence[TokenScores], options: StatOptions, bins: int,
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Per run the overall and per-position-bin loss; the gap reset - carried overall and per bin."""
    max_position = max((int(s.position.max()) for s in scores if s.tokens), default=0)
    spans = position_bins(max_position, bins)
    report: dict[str, Any] = {
        **meta, "objective": "audio", "loss": "L1 of the audio head's prediction (mean over the embedding)",
        "statistics": {"interval": CI_METHOD.replace("conversations (sessions)", "recordings").replace(
            "token-weighted", "position-weighted"), "confidence": options.confidence,
            "bootstrap": options.bootstrap, "min_positions": options.min_tokens, "seed": options.seed},
        "bins": [f"{a}-{b}" for a, b in spans], "runs": [], "gap": None,
    }
    for run, score in zip(runs, scores, strict=True):
        report["runs"].append({"name": run.name, "ttt_reset": run.ttt_reset, "positions": score.tokens,
                               "overall": summarize(np.ones(score.tokens, dtype=bool), score, options),
                               "bins": _table(score, options, spans)})
    carried = [i for i, run in enumerate(runs) if run.ttt_reset == "never"]
    reset = [i for i, run in enumerate(runs) if run.ttt_reset == "every-turn"]
    if carried and reset:
        a, b = scores[carried[0]], scores[reset[0]]
        report["gap"] = {"name": "reset - carried", "meaning": GAP_MEANING,
                         "overall": summarize(np.ones(a.tokens, dtype=bool), a, options, other=b),
                         "bins": _table(a, options, spans, other=b)}
    return report
