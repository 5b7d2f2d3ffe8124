"""Scoring for `omnittt eval`: teacher-forced loss of every assistant token, with its position (real tokens since
the conversation/session start), for several runs (a model, the same model with its TTT state reset every turn, a
baseline) in lockstep.

Conversations are fed exactly as in training: exchange after exchange in stored order (never shuffled), alignment
padding through the model, the cache carried (`omnittt.core.exchange_stream.ExchangeStream`, as the trainer
does), `cache.reset(row)` at turn 0, all under `torch.no_grad()`. The runs are scored on the same exchange steps,
so every run sees the same tokens and the features are computed once.

Reset ablation (`every-turn`): before each exchange after the first, every TTT layer's state goes back to the
learned init for that row; attention keeps its context. The difference to `never` is what the carried TTT state
contributes, not what attention contributes.

Speech-swap control (`speech="swapped"`): every speech segment is replaced by a segment of another conversation
(of the same batch and exchange step, else of the step before), keeping the segment's length so positions and
alignment are unchanged. The difference to the model with its own speech is what it takes from what was said.

A non-finite per-token loss is an error (`NonFiniteEvalError`), never a figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.exchange_stream import ExchangeStream, model_inputs
from omnittt.errors import UserError
from omnittt.evaluation.statistics import TokenScores

RESET_MODES = ("never", "every-turn")
SPEECH_MODES = ("own", "swapped")
SWAPPED_NAME = "model, speech swapped"


class NonFiniteEvalError(UserError):
    """A per-token loss was NaN/Inf: never reported as a figure."""


@dataclass
class RunSpec:
    """One thing to score: a model and its TTT reset rule, under a display name."""

    name: str
    model: torch.nn.Module
    ttt_reset: str = "never"
    source: str = ""
    speech: str = "own"  # or "swapped": another conversation's speech in every segment (the control)

    def __post_init__(self) -> None:
        if self.ttt_reset not in RESET_MODES:
            raise UserError(f"unknown --ttt-reset {self.ttt_reset!r}", fix=f"use one of {', '.join(RESET_MODES)}")
        if self.speech not in SPEECH_MODES:
            raise ValueError(f"speech must be one of {SPEECH_MODES}, got {self.speech!r}")


class _Collector:
    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                                    ("conv", "exchange", "ordinal", "position", "loss", "correct")}
        self.exchange_starts: dict[tuple[int, int], int] = {}

    def add(self, **arrays: np.ndarray) -> None:
        for key, value in arrays.items():
            self.parts[key].append(value)

    def finish(self, conversation_ids: list[str]) -> TokenScores:
        dtypes = {"conv": np.int32, "exchange": np.int32, "ordinal": np.int32, "position": np.int64,
                  "loss": np.float64, "correct": bool}
        arrays = {k: np.concatenate(v).astype(dtypes[k]) if v else np.zeros(0, dtypes[k])
                  for k, v in self.parts.items()}
        return TokenScores(conversation_ids, exchange_starts=self.exchange_starts, **arrays)


def exchange_steps(runs: Sequence[RunSpec], loader: Any, progress: Any = None
                   ) -> Iterator[tuple[Any, int, torch.Tensor, list[ExchangeStream]]]:
    """Every exchange step of every batch of `loader` (shuffle off, from its start), in order, as `(batch, k, rows,
    streams)`: `rows` the batch's indices into the dataset's conversations, `streams` one `ExchangeStream` per run,
    new for each batch. The models are put in eval mode; the progress task advances once per step."""
    dataset = loader.dataset
    index_of = {conv.conversation_id: i for i, conv in enumerate(dataset.conversations)}
    for model in {id(run.model): run.model for run in runs}.values():
        model.eval()
    loader.next_batch = 0
    plan = loader.batch_plan(loader.epoch)
    total_steps = sum(max(dataset[i].num_exchanges for i in batch) for batch in plan)
    task = progress.add_task("eval", total=total_steps) if progress is not None else None
    for batch in loader:
        rows = torch.tensor([index_of[cid] for cid in batch.conversation_ids], dtype=torch.long)
        streams = [ExchangeStream(run.model, run.ttt_reset) for run in runs]
        for k in range(len(batch)):
            yield batch, k, rows, streams
            if task is not None:
                progress.advance(task)


@torch.no_grad()
def score_runs(runs: Sequence[RunSpec], loader: Any, device: torch.device | str = "cpu",
               progress: Any = None) -> list[TokenScores]:
    """Score every run on every batch of `loader` (a `ConversationLoader` with shuffle off), in lockstep."""
    device = torch.device(device)
    collectors = [_Collector() for _ in runs]
    donors = _SpeechDonors()
    offset = torch.zeros(0, dtype=torch.long)  # real positions fed so far, per row of the batch
    for batch, k, rows, streams in exchange_steps(runs, loader, progress):
        step = batch[k]
        turn = step["turn_number"]
        offset = torch.where(turn == 0, 0, offset) if k else torch.zeros(len(rows), dtype=torch.long)
        inputs = model_inputs(step, device)
        spliced: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        swapped = donors.swap(inputs, batch.conversation_ids) if any(r.speech == "swapped" for r in runs) \
            else inputs
        for r, (run, stream) in enumerate(zip(runs, streams, strict=True)):
            key = (id(run.model), run.speech)
            if key not in spliced:  # speech encoded once per model, shared by its runs
                spliced[key] = stream.embed(swapped if run.speech == "swapped" else inputs)
            embeds, mask, labels = spliced[key]
            stream.start_exchange(turn)
            out = stream.feed(embeds, mask)
            _collect(collectors[r], run, out.logits, mask, labels, offset, rows, k, turn, batch)
        offset = offset + next(iter(spliced.values()))[1].long().sum(1).cpu()
    conversation_ids = [conv.conversation_id for conv in loader.dataset.conversations]
    return [c.finish(conversation_ids) for c in collectors]


class _SpeechDonors:
    """Another conversation's speech for each segment: a segment of another row of this exchange step, else the
    last segment seen of another conversation (kept here, a few), so a batch of one conversation gets a donor."""

    KEPT = 8

    def __init__(self) -> None:
        self.recent: dict[str, torch.Tensor] = {}  # conversation -> its last segment's features

    def swap(self, inputs: dict[str, Any], conversation_ids: list[str]) -> dict[str, Any]:
        features = inputs.get("input_features")
        if features is None or not features.shape[0]:
            return inputs
        per_row = (inputs["input_ids"] == SPEECH_TOKEN_INDEX).sum(1).tolist()
        owners = [cid for cid, n in zip(conversation_ids, per_row, strict=True) for _ in range(int(n))]
        kept = [(owner, row) for owner, row in self.recent.items() if owner not in owners]
        pool = torch.cat([features, *(row[None].to(features.device) for _, row in kept)])
        chosen = [_donor(i, owner, owners + [owner for owner, _ in kept]) for i, owner in enumerate(owners)]
        for owner, row in zip(owners, features, strict=True):
            self.recent.pop(owner, None)
            self.recent[owner] = row
        for owner in list(self.recent)[: max(0, len(self.recent) - self.KEPT)]:
            del self.recent[owner]
        return {**inputs, "input_features": pool[torch.tensor(chosen, device=features.device)]}


def _donor(i: int, owner: str, owners: list[str]) -> int:
    """The first segment after `i` (cyclically) of another conversation."""
    for step in range(1, len(owners)):
        j = (i + step) % len(owners)
        if owners[j] != owner:
            return j
    raise UserError(f"the speech-swap control needs speech of two conversations; {owner} is alone",
                    fix="evaluate more than one conversation with speech, or pass --no-speech-swap")


def _collect(collector: _Collector, run: RunSpec, logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             offset: torch.Tensor, rows: torch.Tensor, k: int, turn: torch.Tensor, batch: Any) -> None:
    mask, labels = mask.cpu(), labels.cpu()
    for b in (turn >= 0).nonzero().flatten().tolist():
        collector.exchange_starts[(int(rows[b]), k)] = int(offset[b])
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    if not bool(valid.any()):
        return
    shifted = logits[:, :-1].float().cpu()[valid]
    wanted = targets[valid]
    loss = F.cross_entropy(shifted, wanted, reduction="none")
    if not bool(torch.isfinite(loss).all()):
        bad = int((~torch.isfinite(loss)).nonzero()[0, 0])
        row = int(valid.nonzero()[bad, 0])
        raise NonFiniteEvalError(
            f"{run.name}: non-finite loss on conversation {batch.conversation_ids[row]}, exchange {k} "
            f"(model {run.source or run.name}); no figure is reported",
            fix="check the checkpoint with `omnittt monitor` / the run's ttt_state.jsonl (NaN weights or TTT state)")
    positions = offset[:, None] + mask.long().cumsum(1) - 1  # real positions of every input token
    where = valid.nonzero()
    collector.add(
        conv=rows[where[:, 0]].numpy(),
        exchange=np.full(len(where), k),
        ordinal=(valid.long().cumsum(1) - 1)[valid].numpy(),
        position=positions[:, 1:][valid].numpy(),
        loss=loss.double().numpy(),
        correct=(shifted.argmax(-1) == wanted).numpy(),
    )


def runs_for(model: torch.nn.Module, source: str, ttt_reset: Iterable[str], baseline: torch.nn.Module | None,
             baseline_source: str = "", speech_swap: bool = False) -> list[RunSpec]:
    """The model under each requested reset rule (the reset ablation only if it has TTT layers), the model with
    swapped speech (`speech_swap`), then the baseline (carried state)."""
    has_ttt = bool(getattr(model.config.text_config, "ttt_layers", None))
    runs = []
    for mode in ttt_reset:
        if mode == "every-turn" and not has_ttt:
            continue
        name = "model" if mode == "never" else "model, TTT reset every turn"
        runs.append(RunSpec(name, model, mode, source))
    if speech_swap:
        runs.append(RunSpec(SWAPPED_NAME, model, "never", source, speech="swapped"))
    if baseline is not None:
        runs.append(RunSpec("baseline", baseline, "never", baseline_source))
    return runs
