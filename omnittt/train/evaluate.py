"""`omnittt eval`: the long-context number. Teacher-forced loss on assistant tokens bucketed by position (real
tokens since the conversation/session start), for a model, the same model with its TTT state reset every turn,
and a baseline, with bootstrap confidence intervals; plus the recall probe (`omnittt.train.recall`).

Conversations are fed exactly as in training (`omnittt.train.loop`): exchange after exchange in stored order
(never shuffled), alignment padding through the model, the cache carried, `cache.reset(row)` at turn 0, all
under `torch.no_grad()`. Several runs (model, reset ablation, baseline) are scored in lockstep on the same
exchange steps, so every run sees the same tokens and the features are computed once.

Reset ablation (`every-turn`): before each exchange after the first, every TTT layer's state goes back to the
learned init for that row; attention keeps its context. The difference to `never` is what the carried TTT state
contributes, not what attention contributes.

Intervals: percentile bootstrap over conversations (sessions): resample conversations with replacement and
recompute the token-weighted mean (for a difference of two runs: the paired difference on the same tokens).
Guards: a bucket with fewer than `min_tokens` tokens is reported without a number; a non-finite per-token loss is
an error (`NonFiniteEvalError`); ln(vocab), the uniform-guess loss, is reported beside every figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omnittt.core.constants import IGNORE_INDEX
from omnittt.core.exchange_stream import ExchangeStream
from omnittt.errors import UserError
from omnittt.train.loop import model_inputs

RESET_MODES = ("never", "every-turn")
# Bucket edges in positions: 0-1k, 1k-2k, 2k-4k, ..., 32k-64k, then 64k+ (only when data reaches it).
BUCKET_EDGES: tuple[int, ...] = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
CI_METHOD = "percentile bootstrap over conversations (sessions), token-weighted mean"
UNIFORM_TOLERANCE = 0.1  # a loss within 10% of ln(vocab) is at the uniform-guess level


class NonFiniteEvalError(UserError):
    """A per-token loss was NaN/Inf: never reported as a figure."""


# -- scoring ---------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One thing to score: a model and its TTT reset rule, under a display name."""

    name: str
    model: torch.nn.Module
    ttt_reset: str = "never"
    source: str = ""

    def __post_init__(self) -> None:
        if self.ttt_reset not in RESET_MODES:
            raise UserError(f"unknown --ttt-reset {self.ttt_reset!r}", fix=f"use one of {', '.join(RESET_MODES)}")


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


@torch.no_grad()
def score_runs(runs: Sequence[RunSpec], loader: Any, device: torch.device | str = "cpu",
               progress: Any = None) -> list[TokenScores]:
    """Score every run on every batch of `loader` (a `ConversationLoader` with shuffle off), in lockstep."""
    device = torch.device(device)
    dataset = loader.dataset
    index_of = {conv.conversation_id: i for i, conv in enumerate(dataset.conversations)}
    conversation_ids = [conv.conversation_id for conv in dataset.conversations]
    collectors = [_Collector() for _ in runs]
    models = {id(run.model): run.model for run in runs}
    for model in models.values():
        model.eval()
    loader.next_batch = 0
    plan = loader.batch_plan(loader.epoch)
    total_steps = sum(max(dataset[i].num_exchanges for i in batch) for batch in plan)
    task = progress.add_task("eval", total=total_steps) if progress is not None else None
    for batch in loader:
        rows = torch.tensor([index_of[cid] for cid in batch.conversation_ids], dtype=torch.long)
        streams = [ExchangeStream(run.model, run.ttt_reset) for run in runs]
        offset = torch.zeros(len(rows), dtype=torch.long)  # real positions fed so far, per row
        for k in range(len(batch)):
            step = batch[k]
            turn = step["turn_number"]
            offset = torch.where(turn == 0, 0, offset)
            inputs = model_inputs(step, device)
            spliced: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            for r, (run, stream) in enumerate(zip(runs, streams, strict=True)):
                key = id(run.model)
                if key not in spliced:  # speech encoded once per model, shared by its runs
                    spliced[key] = stream.embed(inputs)
                embeds, mask, labels = spliced[key]
                stream.start_exchange(turn)
                out = stream.feed(embeds, mask)
                _collect(collectors[r], run, out.logits, mask, labels, offset, rows, k, turn, batch)
            offset = offset + spliced[id(runs[0].model)][1].long().sum(1).cpu()
            if task is not None:
                progress.advance(task)
    return [c.finish(conversation_ids) for c in collectors]


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


# -- statistics ------------------------------------------------------------------------------------------------
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


@dataclass
class StatOptions:
    min_tokens: int = 100  # a bucket with fewer tokens gets no number
    min_dialogues: int = 3  # a recall-probe row over fewer dialogues gets no number
    bootstrap: int = 1000  # bootstrap resamples
    confidence: float = 0.95
    seed: int = 0


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


# -- the report ------------------------------------------------------------------------------------------------
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
            "name": run.name, "source": run.source, "ttt_reset": run.ttt_reset,
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


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend, or the one-line error (checked before a long evaluation)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed",
                        fix="pip install matplotlib, or leave out --plot (the terminal chart is always printed)"
                        ) from None
    return plt


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Loss vs position bucket per run (with intervals) and ln(vocab), written to `path` with matplotlib."""
    from omnittt.atomic import atomic_write

    plt = require_matplotlib()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = report["buckets"]
    for run in report["runs"]:
        xs, ys, lo, hi = [], [], [], []
        for i, row in enumerate(run["buckets"]):
            if row["loss"] is None:
                continue
            xs.append(i)
            ys.append(row["loss"])
            low, high = row["ci"] or (row["loss"], row["loss"])
            lo.append(row["loss"] - low)
            hi.append(high - row["loss"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=run["name"])
    ax.axhline(report["uniform_loss"], color="grey", linestyle="--", label=f"uniform guess ln {report['vocab_size']}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("position (real tokens since the conversation start)")
    ax.set_ylabel("loss (nats / assistant token)")
    ax.set_title("loss vs position")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def runs_for(model: torch.nn.Module, source: str, ttt_reset: Iterable[str], baseline: torch.nn.Module | None,
             baseline_source: str = "") -> list[RunSpec]:
    """The model under each requested reset rule (the reset ablation only if it has TTT layers), then the
    baseline (carried state)."""
    has_ttt = bool(getattr(model.config.text_config, "ttt_layers", None))
    runs = []
    for mode in ttt_reset:
        if mode == "every-turn" and not has_ttt:
            continue
        name = "model" if mode == "never" else "model, TTT reset every turn"
        runs.append(RunSpec(name, model, mode, source))
    if baseline is not None:
        runs.append(RunSpec("baseline", baseline, "never", baseline_source))
    return runs


# -- from paths to a report ------------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    """What `omnittt eval` evaluates (None data/stage: the run's own, else processed_data and 8k)."""

    run: str | None = None  # a run directory or a checkpoint in it
    model: str | None = None  # a model directory (export, checkpoint, LLaMA-Omni)
    preset: str | None = None  # random weights of a preset: the uniform-guess sanity check
    data: str | None = None
    stage: str | None = None  # a curriculum stage, or "none" (whole conversations)
    baseline: str | None = None  # a run / checkpoint / model directory
    ttt_reset: tuple[str, ...] = RESET_MODES  # the model under each rule; the first is the reference
    batch_size: int = 4  # conversations evaluated together
    max_conversations: int | None = None
    recall: bool = True
    stats: StatOptions = field(default_factory=StatOptions)
    device: str = "cpu"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    source: str  # the checkpoint / directory / preset it came from
    tokenizer: Any = None  # the tokenizer saved beside it (None: unknown)
    run_settings: dict[str, Any] = field(default_factory=dict)  # the training settings of its run, if any
    step: int | None = None


def load_for_eval(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A run directory (its latest checkpoint), a checkpoint folder, or a model directory."""
    from omnittt.core.loading import load_model
    from omnittt.core.tokenizer import load_tokenizer
    from omnittt.train.checkpoint import read_trainer_state
    from omnittt.train.run_dir import TRAINER_STATE_FILE, find_run_dir, resolve_checkpoint

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run, checkpoint or model directory", fix="check the path")
    settings: dict[str, Any] = {}
    step = None
    is_run = (path / "config.yaml").is_file() or (path / TRAINER_STATE_FILE).is_file()
    if is_run:
        path = resolve_checkpoint(path)
        step = read_trainer_state(path).get("step")
        try:
            settings = find_run_dir(path).read_config().get("settings", {})
        except UserError:
            settings = {}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the eval progress bar is ours; a load is one line in the header
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the sub-config type notice of from_pretrained is noise here
    try:
        model = load_model(path, device=device).model
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = load_tokenizer(path) if (path / "tokenizer_config.json").is_file() else None
    return LoadedModel(model, str(path), tokenizer, settings, step)


def _open_data(options: EvalOptions, recorded: dict[str, Any]) -> tuple[Any, str, str]:
    from omnittt.data.dataset import ConversationDataset
    from omnittt.train.setup import NO_STAGE

    data = options.data or recorded.get("data") or "processed_data"
    stage = options.stage or recorded.get("stage") or "8k"
    if not Path(data).exists():
        raise UserError(f"{data}: no such processed dataset" + (" (recorded in the run's config)" if not options.data
                                                                else ""),
                        fix="pass --data DIR (a folder written by omnittt preprocess)")
    dataset = ConversationDataset(data, stage=None if stage == NO_STAGE else stage)
    if options.max_conversations is not None:
        dataset.conversations = dataset.conversations[: options.max_conversations]
    return dataset, str(data), stage


def evaluate(options: EvalOptions, progress: Any = None) -> dict[str, Any]:
    """Load the model (and baseline), score them on the data, build the report (not written anywhere)."""
    import time

    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import build_model
    from omnittt.core.tokenizer import build_default_tokenizer, load_tokenizer
    from omnittt.data.dataset import ConversationLoader
    from omnittt.train.recall import find_recall_items, recall_probe
    from omnittt.train.setup import check_dataset_matches_model

    given = [name for name in ("run", "model", "preset") if getattr(options, name)]
    if len(given) != 1:
        raise UserError("give exactly one of --run RUN, --model DIR, --preset NAME"
                        + (f" (got {', '.join('--' + g for g in given)})" if given else ""),
                        fix="e.g. omnittt eval --run runs/tiny --data processed_data")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}", fix="use 1 or more")
    for mode in options.ttt_reset:
        if mode not in RESET_MODES:
            raise UserError(f"unknown --ttt-reset {mode!r}", fix=f"use one of {', '.join(RESET_MODES)} or both")
    started = time.perf_counter()
    if options.preset:
        main = None
    else:
        main = load_for_eval(options.run or options.model, options.device)
    dataset, data, stage = _open_data(options, main.run_settings if main else {})
    if main is None:  # random weights, aligned to the data's mini-batch size
        model = build_model(options.preset, device=options.device, ttt_mini_batch_size=dataset.mini_batch_size)
        main = LoadedModel(model, f"preset:{options.preset} (random weights)",
                           build_default_tokenizer() if options.preset == "tiny" else None)
    check_dataset_matches_model(dict(dataset.store.settings), main.model, main.tokenizer, data)
    baseline = None
    if options.baseline:
        baseline = load_for_eval(options.baseline, options.device)
        check_dataset_matches_model(dict(dataset.store.settings), baseline.model, baseline.tokenizer, data)
        if baseline.model.config.speech_config.num_mel_bins != main.model.config.speech_config.num_mel_bins:
            raise UserError(f"{options.baseline}: its speech encoder takes another number of mel bins than the "
                            "model's", fix="compare models with the same speech encoder")
        if baseline.model.config.text_config.vocab_size != main.model.config.text_config.vocab_size:
            raise UserError(f"{options.baseline}: vocabulary {baseline.model.config.text_config.vocab_size}, the "
                            f"model's {main.model.config.text_config.vocab_size}: the losses are not comparable",
                            fix="compare models trained with the same tokenizer")
    runs = runs_for(main.model, main.source, options.ttt_reset, baseline.model if baseline else None,
                    baseline.source if baseline else "")
    loader = ConversationLoader(dataset, batch_size=options.batch_size, shuffle=False,
                                feature_extractor=build_feature_extractor(main.model.config.speech_config.num_mel_bins))
    scores = score_runs(runs, loader, options.device, progress=progress)
    elapsed = time.perf_counter() - started
    recall = None
    if options.recall:
        items = find_recall_items(dataset, load_tokenizer(dataset.store.tokenizer_dir))
        carried = [i for i, run in enumerate(runs) if run.ttt_reset == "never" and run.model is main.model]
        reset = [i for i, run in enumerate(runs) if run.ttt_reset == "every-turn"]
        pairs = [(carried[0], reset[0])] if carried and reset else []
        pairs += [(0, i) for i, run in enumerate(runs) if run.name == "baseline"]
        recall = recall_probe(items, [run.name for run in runs], scores, options.stats, pairs)
    vocab = int(main.model.config.text_config.vocab_size)
    positions = sum(conv.num_positions for conv in dataset.conversations)
    meta = {
        "data": data, "stage": stage, "conversations": len(dataset), "positions": positions,
        "exchanges": sum(conv.num_exchanges for conv in dataset.conversations),
        "model": main.source, "step": main.step, "baseline": baseline.source if baseline else None,
        "baseline_step": baseline.step if baseline else None, "batch_size": options.batch_size,
        "elapsed_sec": round(elapsed, 2), "positions_per_sec": round(positions * len(runs) / max(elapsed, 1e-9), 1),
    }
    report = build_report(runs, scores, vocab, options.stats, recall, meta)
    check_report_finite(report)
    return report
