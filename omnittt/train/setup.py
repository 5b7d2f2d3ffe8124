"""From settings to a ready `Trainer`: threads and seeds, the dataset and its settings checked against the model,
the model (a preset, a local model directory or a checkpoint), parameter groups, optimizer and schedule,
accelerate, the run directory (config.yaml, model_summary.json) and, when resuming, every piece of state.

`start_run` is `omnittt train`; `resume_run` is `omnittt resume`: both end in `Trainer.fit()`.
"""

from __future__ import annotations

import copy
import datetime
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnittt.config import model_overrides
from omnittt.errors import UserError
from omnittt.train.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    SCHEDULER_FILE,
    load_torch_state,
    read_trainer_state,
)
from omnittt.train.loop import Trainer, TrainerState
from omnittt.train.optim import build_optimizer, build_scheduler, group_summary
from omnittt.train.rng import restore_rng, seed_everything
from omnittt.train.run_dir import RunDir, find_run_dir, resolve_checkpoint
from omnittt.train.settings import TrainSettings

NO_STAGE = "none"  # --stage none: whole conversations as stored, no session packing


@dataclass
class Prepared:
    """Everything `omnittt train` / `omnittt resume` show before the loop starts, and the trainer."""

    settings: TrainSettings
    trainer: Trainer
    run: RunDir
    config: dict[str, Any]  # what config.yaml holds
    summary: dict[str, Any]  # what model_summary.json holds
    resumed_from: Path | None = None


# -- dataset vs model -------------------------------------------------------------------------------------------
def check_dataset_matches_model(dataset_settings: dict[str, Any], model: Any, model_tokenizer: Any,
                                data_dir: str) -> None:
    """Refuse, in one line with the fix, a dataset made with another tokenizer, mini-batch size or speech
    positions mode than the model uses."""
    from omnittt.core.tokenizer import tokenizer_fingerprint

    text = model.config.text_config
    fix_data = "re-run `omnittt preprocess` with the model's settings into a new --output"
    recorded = dataset_settings.get("tokenizer_fingerprint")
    if model_tokenizer is not None and recorded and recorded != tokenizer_fingerprint(model_tokenizer):
        raise UserError(f"{data_dir}: made with tokenizer {dataset_settings.get('tokenizer_name')} "
                        f"({recorded[:12]}), the model uses another ({tokenizer_fingerprint(model_tokenizer)[:12]})",
                        fix=f"{fix_data} (--tokenizer pointing at the model's tokenizer)")
    vocab = dataset_settings.get("vocab_size")
    if vocab is not None and int(vocab) > int(text.vocab_size):
        raise UserError(f"{data_dir}: tokenizer of {vocab} tokens, the model's vocabulary has {text.vocab_size}",
                        fix=fix_data)
    mbs = dataset_settings.get("mini_batch_size")
    model_mbs = getattr(text, "ttt_mini_batch_size", None)
    if getattr(text, "ttt_layers", None) and mbs is not None and model_mbs is not None and int(mbs) != int(model_mbs):
        raise UserError(f"{data_dir}: samples aligned to mini-batch size {mbs}, the model's TTT layers use {model_mbs}",
                        fix=f"{fix_data} (--mini-batch-size {model_mbs}), or train with --ttt-mini-batch-size {mbs}")
    mode = dataset_settings.get("speech_positions") or "trim"
    if mode != model.config.speech_positions:
        raise UserError(f"{data_dir}: speech positions {mode!r}, the model uses {model.config.speech_positions!r}",
                        fix=f"{fix_data} (--speech-positions {model.config.speech_positions})")


def model_tokenizer(settings: TrainSettings, model_dir: Path | None) -> Any:
    """The tokenizer the model was made for: the one saved beside it, or the default one of the tiny preset
    (other presets name none: the dataset's tokenizer is then checked by vocabulary size only)."""
    from omnittt.core.tokenizer import build_default_tokenizer, load_tokenizer

    if model_dir is not None and (model_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(model_dir)
    if settings.preset == "tiny":
        return build_default_tokenizer()
    return None


# -- building ---------------------------------------------------------------------------------------------------
def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _build_model(settings: TrainSettings, source: Path | None, apply_overrides: bool) -> Any:
    """A preset (random init), or a local model directory / checkpoint. The model keys of the settings
    choose the preset's shape or a released checkpoint's conversion; our own checkpoints carry them, so there
    they must agree with the checkpoint (a resumed run's settings always do)."""
    from omnittt.core.loading import detect_layout, load_model
    from omnittt.core.presets import build_model

    overrides = model_overrides(settings) if apply_overrides else {}
    if source is None:
        return build_model(settings.preset, **overrides)
    if detect_layout(source) != "omnittt":
        return load_model(source, **overrides).model
    model = load_model(source).model
    text = model.config.text_config
    differ = {key: (getattr(text, key, None), value) for key, value in overrides.items()
              if getattr(text, key, None) != value}
    if differ:
        shown = ", ".join(f"{key} {have} -> {want}" for key, (have, want) in differ.items())
        raise UserError(f"{source} was trained with other model settings ({shown})",
                        fix="drop these model flags: a checkpoint keeps its own architecture")
    return model


def _datasets(settings: TrainSettings) -> tuple[Any, Any | None, Any]:
    """(train dataset, validation dataset or None, the stage or None)."""
    from omnittt.data.curriculum import get_stage
    from omnittt.data.dataset import ConversationDataset

    stage = None if settings.stage == NO_STAGE else get_stage(settings.stage)
    train = ConversationDataset(settings.data, stage=stage)
    conversations = list(train.conversations)
    if settings.max_conversations is not None:
        conversations = conversations[: settings.max_conversations]
    val = None
    if settings.val_conversations:
        if settings.val_conversations >= len(conversations):
            raise UserError(f"val_conversations {settings.val_conversations} leaves no training conversation "
                            f"(the stage has {len(conversations)})", fix="hold out fewer conversations")
        val = copy.copy(train)
        val.conversations = conversations[-settings.val_conversations:]
        conversations = conversations[: -settings.val_conversations]
    train.conversations = conversations
    return train, val, stage


def planned_steps(loader: Any, settings: TrainSettings, processes: Any = None) -> int:
    """Optimizer steps of `settings.epochs` passes: one per `gradient_accumulation` TBPTT windows. With several
    processes each batch runs the most windows any process's batch needs (`omnittt.train.distributed`)."""
    if settings.max_steps is not None:
        return settings.max_steps
    per_batch = []
    for epoch in range(settings.epochs):
        for conv_indices in loader.batch_plan(epoch):
            exchanges = max(loader.dataset[i].num_exchanges for i in conv_indices)
            per_batch.append(math.ceil(exchanges / settings.tbptt_turns))
    if processes is not None:
        per_batch = processes.max_ints(per_batch)
    return max(1, math.ceil(sum(per_batch) / settings.gradient_accumulation))


def _build(settings: TrainSettings, run: RunDir, source: Path | None, resume: Path | None,
           console: Any, chained: bool = False) -> Prepared:
    """`source`: where the weights come from (None: the preset); `resume`: a checkpoint whose full state
    (optimizer, schedule, RNG, data position, threads) continues; `chained`: `source` is the previous
    stage's final checkpoint in this run (weights and step count carry on; new data, optimizer and schedule)."""
    from accelerate import Accelerator

    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import model_summary
    from omnittt.core.tokenizer import load_tokenizer
    from omnittt.data.dataset import ConversationLoader
    from omnittt.train.distributed import Processes, rescale_loader_state
    from omnittt.train.trainable import parameter_groups

    processes = Processes()
    trainer_state = read_trainer_state(resume) if resume is not None else None
    threads = (trainer_state or {}).get("num_threads") or settings.num_threads or torch.get_num_threads()
    torch.set_num_threads(int(threads))
    seed_everything(settings.seed)

    train_ds, val_ds, stage = _datasets(settings)
    dataset_settings = dict(train_ds.store.settings)
    model = _build_model(settings, source, apply_overrides=resume is None)
    check_dataset_matches_model(dataset_settings, model, model_tokenizer(settings, source), settings.data)
    if settings.gradient_checkpointing:  # ours, cache passed through (never gradient_checkpointing_enable())
        model.language_model.enable_ttt_checkpointing(True)
    tokenizer = load_tokenizer(train_ds.store.tokenizer_dir)
    feature_extractor = build_feature_extractor(model.config.speech_config.num_mel_bins)

    base_lr = settings.lr if settings.lr is not None else (stage.learning_rate if stage else 1e-4)
    lrs = {name: base_lr * scale for name, scale in settings.lr_scale.items()}
    groups = parameter_groups(model, settings.train, lrs=lrs, weight_decay=settings.weight_decay)
    for group in groups:
        group.setdefault("lr", base_lr)
    optimizer = build_optimizer(groups, betas=settings.adam_betas, eps=settings.adam_eps)
    summary = {**model_summary(model), "parameter_groups": group_summary(optimizer)}
    if summary["num_ttt_layers"] != len(model.config.text_config.ttt_layers or []):
        raise UserError(f"the model has {summary['num_ttt_layers']} TTT layers, its config asks for "
                        f"{model.config.text_config.ttt_layers}", fix="check ttt_layers")

    loader = ConversationLoader(train_ds, batch_size=settings.batch_size, shuffle=settings.shuffle,
                                seed=settings.seed, feature_extractor=feature_extractor,
                                num_replicas=processes.num_processes, rank=processes.rank)
    stage_steps = planned_steps(loader, settings, processes)
    scheduler = build_scheduler(optimizer, settings.warmup_steps, stage_steps, settings.min_lr_ratio)
    # the step count carries on across curriculum stages: a stage adds its own steps (--max-steps counts them)
    if trainer_state is not None:
        stage_start = int(trainer_state.get("stage_start_step", 0))
    elif chained or (settings.resume_from is not None and not settings.reset_step):
        stage_start = int(read_trainer_state(source)["step"])
    else:
        stage_start = 0
    total_steps = stage_start + stage_steps

    speech_mode = model.config.speech_positions
    # autocast is the trainer's own (Trainer.autocast): accelerate's mixed-precision setting is process-wide and
    # fixed by the first Accelerator, so a second run in one process (tests, quickstart) could not change it
    mixed_precision = _mixed_precision(settings.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if processes.multi:  # gradients are averaged by the trainer, not by a DDP wrapper (omnittt.train.distributed)
        model = model.to(accelerator.device)
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)

    state = TrainerState(stage=settings.stage, num_threads=int(threads), stage_start_step=stage_start)
    if trainer_state is not None:  # continue exactly
        optimizer.load_state_dict(load_torch_state(resume, OPTIMIZER_FILE))
        scheduler.load_state_dict(load_torch_state(resume, SCHEDULER_FILE))
        loader.load_state_dict(rescale_loader_state(trainer_state["loader"], processes.num_processes))
        state = TrainerState(**trainer_state)
        restore_rng(load_torch_state(resume, RNG_FILE))
    elif chained:
        previous = read_trainer_state(source)
        state.step, state.tokens = int(previous["step"]), int(previous.get("tokens", 0))
    elif settings.resume_from is not None:  # transfer / fine-tune from another run's checkpoint
        previous = read_trainer_state(source)
        if not settings.reset_optimizer:
            optimizer.load_state_dict(load_torch_state(source, OPTIMIZER_FILE))
        if not settings.reset_step:
            scheduler.load_state_dict(load_torch_state(source, SCHEDULER_FILE))
            state.step = int(previous["step"])

    val_loader = None
    if val_ds is not None:
        val_loader = ConversationLoader(val_ds, batch_size=1, shuffle=False, seed=settings.seed,
                                        feature_extractor=feature_extractor)
    config = {
        "settings": settings.to_dict(),
        "dataset": dataset_settings,
        "stage": stage.to_dict() if stage else {"name": NO_STAGE},
        "conversations": {"train": len(train_ds), "validation": len(val_ds) if val_ds is not None else 0},
        "total_steps": total_steps,
        "learning_rate": base_lr,
        "mixed_precision": mixed_precision,
        "num_threads": int(threads),
        "num_processes": processes.num_processes,
        "model_source": str(source) if source is not None else f"preset:{settings.preset}",
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if chained:
        config["continued_from"] = str(source)
    if processes.is_main:  # the run directory is the main process's to write
        run.create()
        if chained and run.config_path.is_file():  # keep the finished stage's configuration beside the new one
            previous_stage = read_trainer_state(source)["stage"]
            run.config_path.replace(run.path / f"config.{previous_stage}.yaml")
        run.write_config(config)
        run.write_model_summary(summary)
    trainer = Trainer(settings, model, optimizer, scheduler, loader, run, total_steps, accelerator,
                      speech_mode=speech_mode, mixed_precision=mixed_precision,
                      extra_pretrained=(tokenizer, feature_extractor), state=state,
                      console=console, val_loader=val_loader, processes=processes)
    if settings.log_with and processes.is_main:
        from omnittt.train.scalars import scalar_logger

        trainer.scalar_loggers.append(scalar_logger(settings.log_with, run.path))
    if trainer_state is not None and processes.is_main:
        trainer.metrics.drop_after(state.step)
        trainer.ttt_logger.drop_after(state.step)
    processes.barrier()  # the others start once the run directory is written
    return Prepared(settings, trainer, run, config, summary, resumed_from=resume)


def start_run(settings: TrainSettings, overwrite: bool = False, console: Any = None) -> Prepared:
    """`omnittt train`: a new run (from a preset, a model directory, or `resume_from` for transfer), or the next
    curriculum stage of a run whose previous stage finished (same run directory)."""
    settings.require_model()
    # absolute paths in config.yaml, so `omnittt resume` works from any directory
    settings = settings.with_overrides({key: str(Path(value).resolve()) for key in ("data", "model", "resume_from")
                                        if (value := getattr(settings, key))})
    run = RunDir(settings.run_dir)
    chain_from = None
    if run.latest_path.exists() or run.metrics_path.exists():
        if overwrite:
            import shutil

            from omnittt.train.distributed import Processes

            processes = Processes()
            processes.barrier()  # every process has looked at the old run before it goes
            if processes.is_main:
                shutil.rmtree(run.path)
            processes.barrier()
        else:
            chain_from = _previous_stage_checkpoint(run, settings)
    elif _previous_stage_name(settings.stage) is not None and not settings.allow_skip:
        previous = _previous_stage_name(settings.stage)
        raise UserError(f"stage {settings.stage} continues from the {previous} stage's final checkpoint, and "
                        f"{run.path} has none",
                        fix=f"train --stage {previous} first with the same --run, or pass --allow-skip (with "
                            "--model DIR) to start this stage from a model")
    source = Path(settings.model) if settings.model else None
    if settings.resume_from is not None:
        source = resolve_checkpoint(settings.resume_from)
    if chain_from is not None:
        return _build(settings, run, chain_from, None, console, chained=True)
    return _build(settings, run, source, None, console)


def _previous_stage_name(stage: str) -> str | None:
    from omnittt.data.curriculum import stage_names

    names = stage_names()
    return names[names.index(stage) - 1] if stage in names and names.index(stage) > 0 else None


def _previous_stage_checkpoint(run: RunDir, settings: TrainSettings) -> Path:
    """The final checkpoint of the stage before `settings.stage` in `run`, or the error that says what to do."""
    latest = run.latest_checkpoint()
    previous = read_trainer_state(latest) if latest is not None else {}
    if latest is None or _previous_stage_name(settings.stage) != previous.get("stage"):
        raise UserError(f"{run.path} already holds a run" + (f" (stage {previous['stage']})" if previous else ""),
                        fix=f"continue it with `omnittt resume {run.path}`, train its next curriculum stage, "
                            "choose another --run, or pass --overwrite to start over")
    if not previous.get("finished"):
        raise UserError(f"stage {previous['stage']} in {run.path} has not finished (step {previous['step']})",
                        fix=f"finish it first with `omnittt resume {run.path}`")
    return latest


def resume_run(path: str, overrides: dict[str, Any] | None = None, console: Any = None) -> Prepared:
    """`omnittt resume RUN`: the run's own settings (plus `overrides`, e.g. a larger max_steps) from its
    latest checkpoint, with the optimizer, schedule, RNG, thread count and data position it saved."""
    run = find_run_dir(path)
    run.remove_stale()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise UserError(f"{run.path}: no complete checkpoint to resume from",
                        fix="start it again with omnittt train ... --overwrite")
    recorded = run.read_config().get("settings", {})
    settings = TrainSettings.from_dict(recorded, source=str(run.config_path)).with_overrides(overrides)
    settings.run = str(run.path)
    return _build(settings, run, checkpoint, checkpoint, console)
