"""`omnittt eval`: the long-context number. From paths (a run, a checkpoint, a model directory or a preset, a
baseline, a processed dataset) to the report: loss on assistant tokens bucketed by position for the model, the
same model with its TTT state reset every turn, and a baseline (`omnittt.evaluation.scoring`), with bootstrap
confidence intervals (`omnittt.evaluation.statistics`), plus the recall probe (`omnittt.evaluation.recall`),
assembled by `omnittt.evaluation.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnittt.core.features import build_feature_extractor
from omnittt.core.presets import build_model
from omnittt.core.tokenizer import build_default_tokenizer, load_tokenizer
from omnittt.data.dataset import ConversationDataset, ConversationLoader
from omnittt.errors import UserError
from omnittt.evaluation.audio import audio_report, check_audio_model, score_audio
from omnittt.evaluation.recall import find_recall_items, recall_probe
from omnittt.evaluation.report import build_report, check_report_finite
from omnittt.evaluation.scoring import RESET_MODES, RunSpec, runs_for, score_runs
from omnittt.evaluation.statistics import StatOptions, TokenScores
from omnittt.runs import check_dataset_matches_model, open_run
from omnittt.train.setup import NO_STAGE


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
    held_out: bool = False  # score only conversations the run never trained on
    recall: bool = True
    speech_swap: bool = True  # also score the model with swapped speech (when the data has speech)
    position_bins: int = 4  # long-form audio: bins of positions into the recording the gap is reported by
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
    """A run directory (its latest checkpoint), a checkpoint folder, or a model directory (`omnittt.runs`)."""
    opened = open_run(path, accept="any", device=device)
    return LoadedModel(opened.model, str(opened.path), opened.tokenizer, opened.settings, opened.step)


def _open_data(options: EvalOptions, recorded: dict[str, Any]) -> tuple[Any, str, str]:
    data = options.data or recorded.get("data") or "processed_data"
    stage = options.stage or recorded.get("stage") or "8k"
    if not Path(data).exists():
        raise UserError(f"{data}: no such processed dataset" + (" (recorded in the run's config)" if not options.data
                                                                else ""),
                        fix="pass --data DIR (a folder written by omnittt preprocess)")
    dataset = ConversationDataset(data, stage=None if stage == NO_STAGE else stage)
    if options.held_out:
        dataset.conversations = _held_out(dataset.conversations, options, data)
    if options.max_conversations is not None:
        dataset.conversations = dataset.conversations[: options.max_conversations]
    return dataset, str(data), stage


def _held_out(conversations: list[Any], options: EvalOptions, data: str) -> list[Any]:
    """The conversations none of whose source dialogues the run trained on (`RunDir.record_split`)."""
    opened = open_run(options.run, accept="any", load=False) if options.run else None
    if opened is None or opened.run is None:
        raise UserError("--held-out needs a run directory (it records what the run trained on)",
                        fix="pass --run RUN, or drop --held-out")
    trained = opened.run.trained_conversations(data)
    kept = [conv for conv in conversations if not trained.intersection(conv.source_conversation_ids)]
    if not kept:
        raise UserError(f"{data}: every conversation here was trained on by {opened.run.path}",
                        fix="score a dataset the run never saw (e.g. a new corpus with another --seed)")
    return kept


def evaluate(options: EvalOptions, progress: Any = None) -> dict[str, Any]:
    """Load the model (and baseline), score them on the data, build the report (not written anywhere)."""
    _check_options(options)
    started = time.perf_counter()
    main, baseline, (dataset, data, stage) = _load_models(options)
    if dataset.store.settings.get("kind") == "audio_index":  # long recordings: the audio objective
        return _evaluate_audio(options, (main, baseline), dataset, (data, stage), started, progress)
    swap = options.speech_swap and any(float(e.get("audio_duration_sec") or 0) > 0 for e in dataset.store.index)
    runs = runs_for(main.model, main.source, options.ttt_reset, baseline.model if baseline else None,
                    baseline.source if baseline else "", speech_swap=swap)
    loader = ConversationLoader(dataset, batch_size=options.batch_size, shuffle=False,
                                feature_extractor=build_feature_extractor(main.model.config.speech_config.num_mel_bins))
    scores = score_runs(runs, loader, options.device, progress=progress)
    elapsed = time.perf_counter() - started
    recall = _recall(dataset, runs, main.model, scores, options.stats) if options.recall else None
    vocab = int(main.model.config.text_config.vocab_size)
    positions = sum(conv.num_positions for conv in dataset.conversations)
    meta = {
        "data": data, "stage": stage, "held_out": options.held_out, "conversations": len(dataset),
        "positions": positions,
        "exchanges": sum(conv.num_exchanges for conv in dataset.conversations),
        "model": main.source, "step": main.step, "baseline": baseline.source if baseline else None,
        "baseline_step": baseline.step if baseline else None, "batch_size": options.batch_size,
        "elapsed_sec": round(elapsed, 2), "positions_per_sec": round(positions * len(runs) / max(elapsed, 1e-9), 1),
    }
    report = build_report(runs, scores, vocab, options.stats, recall, meta)
    check_report_finite(report)
    return report


def _evaluate_audio(options: EvalOptions, models: tuple[LoadedModel, LoadedModel | None], dataset: Any,
                    where: tuple[str, str], started: float, progress: Any) -> dict[str, Any]:
    """The audio objective on the recordings of an audio index: carried vs reset by position (evaluation/audio.py)."""
    main, baseline = models
    shift = check_audio_model(main.model, main.source)
    if baseline is not None:
        check_audio_model(baseline.model, baseline.source)
    runs = runs_for(main.model, main.source, options.ttt_reset, baseline.model if baseline else None,
                    baseline.source if baseline else "")
    loader = ConversationLoader(dataset, batch_size=options.batch_size, shuffle=False,
                                feature_extractor=build_feature_extractor(main.model.config.speech_config.num_mel_bins))
    scores = score_audio(runs, loader, options.device, progress=progress)
    positions = sum(conv.num_positions for conv in dataset.conversations)
    elapsed = time.perf_counter() - started
    meta = {"data": where[0], "stage": where[1], "held_out": options.held_out, "recordings": len(dataset),
            "conversations": len(dataset), "positions": positions,
            "exchanges": sum(conv.num_exchanges for conv in dataset.conversations), "model": main.source,
            "step": main.step, "baseline": baseline.source if baseline else None, "apc_shift": shift,
            "batch_size": options.batch_size, "elapsed_sec": round(elapsed, 2),
            "positions_per_sec": round(positions * len(runs) / max(elapsed, 1e-9), 1)}
    report = audio_report(runs, scores, options.stats, options.position_bins, meta)
    check_report_finite(report)
    return report


def _check_options(options: EvalOptions) -> None:
    given = [name for name in ("run", "model", "preset") if getattr(options, name)]
    if len(given) != 1:
        raise UserError("give exactly one of --run RUN, --model DIR, --preset NAME"
                        + (f" (got {', '.join('--' + g for g in given)})" if given else ""),
                        fix="e.g. omnittt eval --run runs/tiny --data processed_data")
    if options.position_bins < 1:
        raise UserError(f"--position-bins must be at least 1, got {options.position_bins}", fix="use e.g. 4")
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}", fix="use 1 or more")
    for mode in options.ttt_reset:
        if mode not in RESET_MODES:
            raise UserError(f"unknown --ttt-reset {mode!r}", fix=f"use one of {', '.join(RESET_MODES)} or both")


def _load_models(options: EvalOptions) -> tuple[LoadedModel, LoadedModel | None, tuple[Any, str, str]]:
    """The model (a preset's random weights aligned to the data's mini-batch size), the baseline, and the data
    (dataset, its path, the stage), each checked against the data and each other."""
    main = None if options.preset else load_for_eval(options.run or options.model, options.device)
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
    return main, baseline, (dataset, data, stage)


def _recall(dataset: Any, runs: list[RunSpec], model: torch.nn.Module, scores: list[TokenScores],
            stats: StatOptions) -> dict[str, Any]:
    """The recall probe; gaps: the reset ablation minus the carried model, the swapped speech minus the model, and
    the baseline minus the first run."""
    items = find_recall_items(dataset, load_tokenizer(dataset.store.tokenizer_dir))
    carried = [i for i, run in enumerate(runs)
               if run.ttt_reset == "never" and run.model is model and run.speech == "own"]
    reset = [i for i, run in enumerate(runs) if run.ttt_reset == "every-turn"]
    pairs = [(carried[0], reset[0])] if carried and reset else []
    pairs += [(carried[0], i) for i, run in enumerate(runs) if run.speech == "swapped" and carried]
    pairs += [(0, i) for i, run in enumerate(runs) if run.name == "baseline"]
    return recall_probe(items, [run.name for run in runs], scores, stats, pairs)
