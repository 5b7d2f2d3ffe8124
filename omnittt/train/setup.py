"""From settings to a ready `Trainer`, one function per way a run starts, sharing the common steps:

- `_fresh`: a new run from a preset (random initialisation) or a local model directory; step 0, a new optimizer;
- `_resume`: continue exactly (weights, optimizer, schedule, RNG, thread count, data position and step);
- `_next_stage`: the next curriculum stage in the same run, from the previous stage's final checkpoint (weights,
  step and token counts carry on; new data, optimizer and schedule);
- `_transfer`: fine-tune from another run's checkpoint (its weights; its optimizer state unless
  `reset_optimizer`, its schedule and step unless `reset_step`).

Each calls `_prepare` (threads and seeds, the datasets checked against the model, parameter groups, optimizer,
loader, schedule, accelerate), puts in its own state, and ends in `_finish` (the run directory's config.yaml and
model_summary.json, the trainer). Checkpoints are opened by `omnittt.runs.open_run`.

`start_run` is `omnittt train`; `resume_run` is `omnittt resume`: both end in `Trainer.fit()`.
"""

from __future__ import annotations

import copy
import datetime
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from omnittt.config import model_overrides
from omnittt.core.audio_objective import add_audio_head
from omnittt.core.features import build_feature_extractor
from omnittt.core.loading import detect_layout, load_model
from omnittt.core.presets import build_model, model_summary
from omnittt.core.tokenizer import build_default_tokenizer, load_tokenizer
from omnittt.data.curriculum import get_stage, previous_stage_name
from omnittt.data.dataset import ConversationDataset, ConversationLoader
from omnittt.errors import UserError
from omnittt.runs import OpenedRun, check_dataset_matches_model, open_run
from omnittt.train.checkpoint import OPTIMIZER_FILE, RESUME_STATES, RNG_FILE, SCHEDULER_FILE, load_torch_state
from omnittt.train.distributed import Processes, rescale_loader_state
from omnittt.train.loop import Trainer, TrainerState
from omnittt.train.optim import build_optimizer, build_scheduler, group_summary
from omnittt.train.rng import restore_rng, seed_everything
from omnittt.train.run_dir import RunDir
from omnittt.train.scalars import scalar_logger
from omnittt.train.settings import TrainSettings
from omnittt.train.trainable import parameter_groups

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


# -- starting a run ---------------------------------------------------------------------------------------------
def start_run(settings: TrainSettings, overwrite: bool = False, console: Any = None) -> Prepared:
    """`omnittt train`: a new run (from a preset, a model directory, or `resume_from` for transfer), or the next
    curriculum stage of a run whose previous stage finished (same run directory)."""
    settings.require_model()
    # absolute paths in config.yaml, so `omnittt resume` works from any directory
    settings = settings.with_overrides({key: str(Path(value).resolve()) for key in ("data", "model", "resume_from")
                                        if (value := getattr(settings, key))})
    run = RunDir(settings.run_dir)
    previous_stage = _existing_run(run, settings, overwrite)
    transfer = open_run(settings.resume_from, accept="checkpoint", load=False) if settings.resume_from else None
    if previous_stage is not None:
        return _next_stage(settings, run, previous_stage, console)
    if transfer is not None:
        return _transfer(settings, run, transfer, console)
    return _fresh(settings, run, console)


def _existing_run(run: RunDir, settings: TrainSettings, overwrite: bool) -> OpenedRun | None:
    """What `run` already holds: with `overwrite` it goes; otherwise it must be the finished previous stage, which
    is returned (opened). Where the run is new, a later stage needs its previous one (or `allow_skip`)."""
    if run.latest_path.exists() or run.metrics_path.exists():
        if not overwrite:
            return _previous_stage_checkpoint(run, settings)
        processes = Processes()
        processes.barrier()  # every process has looked at the old run before it goes
        if processes.is_main:
            shutil.rmtree(run.path)
        processes.barrier()
        return None
    previous = previous_stage_name(settings.stage)
    if previous is not None and not settings.allow_skip:
        raise UserError(f"stage {settings.stage} continues from the {previous} stage's final checkpoint, and "
                        f"{run.path} has none",
                        fix=f"train --stage {previous} first with the same --run, or pass --allow-skip (with "
                            "--model DIR) to start this stage from a model")
    return None


def _previous_stage_checkpoint(run: RunDir, settings: TrainSettings) -> OpenedRun:
    """The final checkpoint of the stage before `settings.stage` in `run` (opened), or the error that says what
    to do."""
    latest = run.latest_checkpoint()
    opened = open_run(latest, accept="checkpoint", load=False) if latest is not None else None
    previous = opened.trainer_state if opened is not None else {}
    if opened is None or previous_stage_name(settings.stage) != previous.get("stage"):
        raise UserError(f"{run.path} already holds a run" + (f" (stage {previous['stage']})" if previous else ""),
                        fix=f"continue it with `omnittt resume {run.path}`, train its next curriculum stage, "
                            "choose another --run, or pass --overwrite to start over")
    if not previous.get("finished"):
        raise UserError(f"stage {previous['stage']} in {run.path} has not finished (step {previous['step']})",
                        fix=f"finish it first with `omnittt resume {run.path}`")
    return opened


def resume_run(path: str, overrides: dict[str, Any] | None = None, console: Any = None) -> Prepared:
    """`omnittt resume RUN`: the run's own settings (plus `overrides`, e.g. a larger max_steps) from its
    latest checkpoint, with the optimizer, schedule, RNG, thread count and data position it saved. The
    checkpoint is checked (`verify_checkpoint`) before anything in the run is changed."""
    opened = open_run(path, accept="run", states=RESUME_STATES, load=False)
    opened.run.remove_stale()
    settings = TrainSettings.from_dict(opened.settings, source=str(opened.run.config_path)).with_overrides(overrides)
    settings.run = str(opened.run.path)
    return _resume(settings, opened, console)


# -- the four start modes ---------------------------------------------------------------------------------------
def _fresh(settings: TrainSettings, run: RunDir, console: Any) -> Prepared:
    """A new run from a preset's random initialisation or a local model directory: step 0, a new optimizer."""
    source = Path(settings.model) if settings.model else None
    parts = _prepare(settings, None, lambda: (_build_model(settings, source), model_tokenizer(settings, source)))
    state = TrainerState(stage=settings.stage, num_threads=parts.threads)
    label = str(source) if source is not None else f"preset:{settings.preset}"
    return _finish(parts, run, state, console, source=label)


def _resume(settings: TrainSettings, opened: OpenedRun, console: Any) -> Prepared:
    """Continue exactly: the checkpoint's weights, optimizer, schedule, data position, RNG, thread count and step
    (the metrics logged after that step are dropped)."""
    saved = opened.trainer_state
    parts = _prepare(settings, saved.get("num_threads"), lambda: _load(opened, settings, check_settings=False))
    parts.optimizer.load_state_dict(load_torch_state(opened.path, OPTIMIZER_FILE))
    parts.scheduler.load_state_dict(load_torch_state(opened.path, SCHEDULER_FILE))
    parts.loader.load_state_dict(rescale_loader_state(saved["loader"], parts.processes.num_processes))
    state = TrainerState(**saved)
    restore_rng(load_torch_state(opened.path, RNG_FILE))
    return _finish(parts, opened.run, state, console, source=str(opened.path), resumed_from=opened.path)


def _next_stage(settings: TrainSettings, run: RunDir, previous: OpenedRun, console: Any) -> Prepared:
    """The next curriculum stage in the same run: the previous stage's final weights, step and token counts carry
    on (the stage's own steps count from there); new data, optimizer and schedule."""
    parts = _prepare(settings, None, lambda: _load(previous, settings))
    step = int(previous.trainer_state["step"])
    state = TrainerState(stage=settings.stage, num_threads=parts.threads, stage_start_step=step, step=step,
                         tokens=int(previous.trainer_state.get("tokens", 0)))
    return _finish(parts, run, state, console, source=str(previous.path), continued_from=previous)


def _transfer(settings: TrainSettings, run: RunDir, source: OpenedRun, console: Any) -> Prepared:
    """Fine-tune from another run's checkpoint: its weights; its optimizer state unless `reset_optimizer`; its
    schedule and step count unless `reset_step`."""
    parts = _prepare(settings, None, lambda: _load(source, settings))
    state = TrainerState(stage=settings.stage, num_threads=parts.threads)
    if not settings.reset_optimizer:
        parts.optimizer.load_state_dict(load_torch_state(source.path, OPTIMIZER_FILE))
    if not settings.reset_step:
        parts.scheduler.load_state_dict(load_torch_state(source.path, SCHEDULER_FILE))
        state.step = state.stage_start_step = int(source.trainer_state["step"])
    return _finish(parts, run, state, console, source=str(source.path))


# -- the model --------------------------------------------------------------------------------------------------
def model_tokenizer(settings: TrainSettings, model_dir: Path | None) -> Any:
    """The tokenizer the model was made for: the one saved beside it, or the default one of the tiny preset
    (other presets name none: the dataset's tokenizer is then checked by vocabulary size only)."""
    if model_dir is not None and (model_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(model_dir)
    if settings.preset == "tiny":
        return build_default_tokenizer()
    return None


def _build_model(settings: TrainSettings, source: Path | None) -> Any:
    """A preset (random init), or a local model directory / checkpoint. The model keys of the settings choose the
    preset's shape or a released checkpoint's conversion; our own checkpoints carry them, so there they must
    agree with the checkpoint."""
    overrides = model_overrides(settings)
    if source is None:
        return build_model(settings.preset, **overrides)
    if detect_layout(source) != "omnittt":
        return load_model(source, **overrides).model
    model = load_model(source).model
    _check_model_settings(settings, model, source)
    return model


def _load(opened: OpenedRun, settings: TrainSettings, check_settings: bool = True) -> tuple[Any, Any]:
    """The model of an opened checkpoint (its model settings checked against `settings`, which a resumed run's
    always match) and the tokenizer it was made for."""
    opened.load()
    if check_settings:
        _check_model_settings(settings, opened.model, opened.path)
    tokenizer = opened.tokenizer if opened.tokenizer is not None else model_tokenizer(settings, None)
    return opened.model, tokenizer


def _check_model_settings(settings: TrainSettings, model: Any, source: Path) -> None:
    """Model flags that disagree with a checkpoint's own architecture are an error, not silently ignored."""
    text = model.config.text_config
    differ = {key: (getattr(text, key, None), value) for key, value in model_overrides(settings).items()
              if getattr(text, key, None) != value}
    if differ:
        shown = ", ".join(f"{key} {have} -> {want}" for key, (have, want) in differ.items())
        raise UserError(f"{source} was trained with other model settings ({shown})",
                        fix="drop these model flags: a checkpoint keeps its own architecture")


# -- the steps every start mode shares --------------------------------------------------------------------------
@dataclass
class _Parts:
    """What `_prepare` builds the same way for every start mode, before the mode puts in its own state."""

    settings: TrainSettings
    processes: Processes
    threads: int
    datasets: tuple[Any, Any, Any]  # (train, validation or None, the stage or None)
    model: Any
    tokenizer: Any  # the dataset's tokenizer, saved with every checkpoint
    feature_extractor: Any
    base_lr: float
    optimizer: Any
    scheduler: Any
    loader: Any
    stage_steps: int  # optimizer steps this stage plans
    summary: dict[str, Any]
    speech_mode: str  # the model's speech positions mode
    mixed_precision: str
    accelerator: Any


def _prepare(settings: TrainSettings, threads: int | None, model_and_tokenizer: Callable[[], tuple[Any, Any]]
             ) -> _Parts:
    """Threads and seeds, the datasets, the model `model_and_tokenizer` gives (after seeding) checked against the
    dataset with the tokenizer it was made for, parameter groups, optimizer, loader, schedule and accelerate.
    `threads`: a resumed run's own thread count (None: the settings', else torch's)."""
    processes = Processes()
    threads = int(threads or settings.num_threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    seed_everything(settings.seed)
    train_ds, val_ds, stage = _datasets(settings)
    model, made_for = model_and_tokenizer()
    check_dataset_matches_model(dict(train_ds.store.settings), model, made_for, settings.data)
    _check_objective(settings, train_ds, model)
    if settings.gradient_checkpointing:  # ours, cache passed through (never gradient_checkpointing_enable())
        model.language_model.enable_ttt_checkpointing(True)
    # an audio index holds no tokenizer: checkpoints keep the one the model was made for
    tokenizer = load_tokenizer(train_ds.store.tokenizer_dir) if getattr(train_ds.store, "has_tokenizer", True) \
        else made_for
    feature_extractor = build_feature_extractor(model.config.speech_config.num_mel_bins)
    base_lr, optimizer, summary = _optimizer(settings, model, stage)
    loader = ConversationLoader(train_ds, batch_size=settings.batch_size, shuffle=settings.shuffle,
                                seed=settings.seed, feature_extractor=feature_extractor,
                                num_replicas=processes.num_processes, rank=processes.rank)
    stage_steps = planned_steps(loader, settings, processes)
    scheduler = build_scheduler(optimizer, settings.warmup_steps, stage_steps, settings.min_lr_ratio)
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
    return _Parts(settings, processes, threads, (train_ds, val_ds, stage), model, tokenizer, feature_extractor,
                  base_lr, optimizer, scheduler, loader, stage_steps, summary, speech_mode, mixed_precision,
                  accelerator)


def _check_objective(settings: TrainSettings, train_ds: Any, model: Any) -> None:
    """The objective must fit the data (an audio index has no reply to learn, a dataset of dialogues is not
    speech only); the audio objective gives the model its audio head (kept from an earlier audio run)."""
    audio_data = train_ds.store.settings.get("kind") == "audio_index"
    if audio_data and settings.objective != "audio":
        raise UserError(f"{settings.data} is an audio index (long recordings, no text): the text objective has "
                        "nothing to learn from it", fix="train it with --objective audio (configs/tiny-pretrain.yaml)")
    if settings.objective == "audio":
        if not audio_data:
            raise UserError(f"--objective audio trains on long recordings, and {settings.data} is a dataset of "
                            "dialogues", fix="pass --data an audio index (`omnittt preprocess librilight`)")
        try:
            add_audio_head(model, settings.apc_shift)
        except ValueError as exc:
            raise UserError(f"{exc}", fix="keep the model's apc_shift, or pre-train a new model") from None


def _optimizer(settings: TrainSettings, model: Any, stage: Any) -> tuple[float, Any, dict[str, Any]]:
    """(base learning rate, AdamW over the trainable groups, the model summary with its parameter groups)."""
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
    return base_lr, optimizer, summary


def _finish(parts: _Parts, run: RunDir, state: TrainerState, console: Any, *, source: str,
            continued_from: OpenedRun | None = None, resumed_from: Path | None = None) -> Prepared:
    """Write the run directory (config.yaml, model_summary.json; the previous stage's config.yaml is kept as
    config.<stage>.yaml) from the main process and build the trainer. The step count carries on across curriculum
    stages: a stage adds its own steps to `state.stage_start_step` (--max-steps counts them)."""
    settings, processes = parts.settings, parts.processes
    total_steps = int(state.stage_start_step) + parts.stage_steps
    config = _run_config(parts, total_steps, source)
    if continued_from is not None:
        config["continued_from"] = str(continued_from.path)
    if processes.is_main:  # the run directory is the main process's to write
        run.create()
        if continued_from is not None and run.config_path.is_file():  # keep the finished stage's configuration
            run.config_path.replace(run.path / f"config.{continued_from.trainer_state['stage']}.yaml")
        run.write_config(config)
        run.write_model_summary(parts.summary)
        _record_split(run, parts)
    val_ds = parts.datasets[1]
    val_loader = None if val_ds is None else ConversationLoader(val_ds, batch_size=1, shuffle=False,
                                                                seed=settings.seed,
                                                                feature_extractor=parts.feature_extractor)
    trainer = Trainer(settings, parts.model, parts.optimizer, parts.scheduler, parts.loader, run, total_steps,
                      parts.accelerator, speech_mode=parts.speech_mode, mixed_precision=parts.mixed_precision,
                      extra_pretrained=tuple(x for x in (parts.tokenizer, parts.feature_extractor) if x is not None),
                      state=state, console=console,
                      val_loader=val_loader, processes=processes)
    if settings.log_with and processes.is_main:
        trainer.scalar_loggers.append(scalar_logger(settings.log_with, run.path))
    if resumed_from is not None and processes.is_main:
        trainer.metrics.drop_after(state.step)
        trainer.ttt_logger.drop_after(state.step)
    processes.barrier()  # the others start once the run directory is written
    return Prepared(settings, trainer, run, config, parts.summary, resumed_from=resumed_from)


def _run_config(parts: _Parts, total_steps: int, source: str) -> dict[str, Any]:
    """What config.yaml holds."""
    settings = parts.settings
    train_ds, val_ds, stage = parts.datasets
    return {
        "settings": settings.to_dict(),
        "dataset": dict(train_ds.store.settings),
        "stage": stage.to_dict() if stage else {"name": NO_STAGE},
        "conversations": {"train": len(train_ds), "validation": len(val_ds) if val_ds is not None else 0},
        "total_steps": total_steps,
        "learning_rate": parts.base_lr,
        "mixed_precision": parts.mixed_precision,
        "num_threads": parts.threads,
        "num_processes": parts.processes.num_processes,
        "model_source": source,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _record_split(run: RunDir, parts: _Parts) -> None:
    """What this stage trains on and holds out, by source conversation, for eval's `--held-out`."""
    train, val = parts.datasets[0], parts.datasets[1]

    def sources(dataset: Any) -> list[str]:
        return [] if dataset is None else [cid for conv in dataset.conversations
                                           for cid in conv.source_conversation_ids]

    run.record_split(parts.settings.stage, parts.settings.data, sources(train), sources(val))


def _datasets(settings: TrainSettings) -> tuple[Any, Any | None, Any]:
    """(train dataset, validation dataset or None, the stage or None)."""
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
