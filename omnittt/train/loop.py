"""The training loop: conversations exchange by exchange, TTT state carried through the cache.

Per batch of B conversations started together (docs/architecture.md "Batches"):

    cache = None                                  exchange 0 starts from the learned init (a fresh cache)
    for each window of K exchanges:               one truncated-BPTT window
        cache.detach()                            gradients never cross windows
        for each exchange: loss_k = stream.exchange(...)   state flows exchange to exchange in the cache
        loss = token-weighted mean of loss_k      assistant text only (labels != -100)
        NaN/Inf check (loss, TTT state) -> backward -> NaN/Inf check (gradients)
        every `gradient_accumulation` windows: clip, optimizer step, schedule step, metrics line
    the cache is dropped; a checkpoint is due -> save here (a batch end: the data position is "the next batch")

A window with a non-finite loss, gradient or TTT state is skipped (no step; the rest of its batch is dropped
because the state is poisoned) and logged; `max_nonfinite_steps` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from omnittt.atomic import atomic_write_json
from omnittt.core.audio_objective import audio_exchange
from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.exchange_stream import ExchangeStream, model_inputs
from omnittt.core.speech import segment_positions
from omnittt.errors import UserError
from omnittt.inspect.fp32 import FP32Enforcer, find_ttt_modules
from omnittt.inspect.stats import MetricsLogger, TTTStateLogger
from omnittt.train.checkpoint import save_checkpoint
from omnittt.train.distributed import Processes
from omnittt.train.faults import fault_point
from omnittt.train.guard import NonFiniteGuard, nonfinite_problems
from omnittt.train.run_dir import TRAINER_STATE_FILE, RunDir
from omnittt.train.settings import TrainSettings


@dataclass
class TrainerState:
    """What a checkpoint records besides weights/optimizer/RNG (trainer_state.json)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # real positions trained on
    windows: int = 0  # truncated-BPTT windows run (skipped ones included)
    skipped: int = 0  # windows skipped for non-finite values
    stage: str = ""
    stage_start_step: int = 0  # the step this curriculum stage began at (its steps are counted from there)
    loader: dict[str, Any] = field(default_factory=dict)  # the loader's position: the next batch
    guard: dict[str, int] = field(default_factory=dict)
    num_threads: int = 0
    finished: bool = False  # set by the final checkpoint of a completed run (a later stage may chain from it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_count(labels: torch.Tensor) -> int:
    """Targets the model's shifted loss averages over (assistant tokens; speech and padding are ignored)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def real_positions(step: dict[str, Any], speech_mode: str) -> int:
    """Positions of real tokens and speech (alignment padding excluded) fed by one exchange step."""
    text = int(step["attention_mask"].sum()) - int((step["input_ids"] == SPEECH_TOKEN_INDEX).sum())
    lengths = step.get("feature_lengths")
    speech = sum(segment_positions(int(n), speech_mode) for n in lengths.tolist()) if lengths is not None else 0
    return text + speech


class Trainer:
    """Runs optimizer steps over a `ConversationLoader` until `total_steps`, writing the run directory.

    `extra_pretrained`: objects saved beside every checkpoint's weights (tokenizer, feature extractor).
    `run_config`: the resolved configuration dict, stored in each checkpoint's trainer_state for reference."""

    def __init__(
        self,
        settings: TrainSettings,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loader: Any,
        run: RunDir,
        total_steps: int,
        accelerator: Any,
        speech_mode: str = "trim",
        mixed_precision: str = "no",
        extra_pretrained: Iterable[Any] = (),
        state: TrainerState | None = None,
        console: Any = None,
        val_loader: Any = None,
        processes: Any = None,
    ) -> None:
        self.settings = settings
        self.processes = processes or Processes()  # one process unless started by `omnittt train --num-processes`
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loader = loader
        self.run = run
        self.total_steps = total_steps
        self.accelerator = accelerator
        self.speech_mode = speech_mode
        self.mixed_precision = mixed_precision
        self.extra_pretrained = list(extra_pretrained)
        self.state = state or TrainerState(stage=settings.stage, num_threads=torch.get_num_threads())
        self.guard = NonFiniteGuard(settings.max_nonfinite_steps)
        if self.state.guard:
            self.guard.load_state_dict(self.state.guard)
        self.metrics = MetricsLogger(run.path)
        self.scalar_loggers: list[Any] = []  # e.g. TensorBoard (omnittt.train.tensorboard), main process only
        self.ttt_logger = TTTStateLogger(run.path, interval=settings.log_ttt_every, model=model)
        unwrapped = accelerator.unwrap_model(model)
        self.enforcer = FP32Enforcer(unwrapped, auto_fix=True) if find_ttt_modules(unwrapped) else None
        self.console = console
        self.val_loader = val_loader
        self.last_val_loss: float | None = None
        self.last_saved_step = self.state.step
        self.fp32_drifts = 0
        # a resumed run's newest checkpoint is the one at its current step
        self.last_checkpoint = run.latest_checkpoint() if self.state.step else None
        # the optimizer step being accumulated
        self._pending_windows = 0
        self._pending: dict[str, Any] = self._empty_pending()

    @staticmethod
    def _empty_pending() -> dict[str, Any]:
        return {"loss_sum": 0.0, "targets": 0, "positions": 0, "start": time.perf_counter(), "conversations": [],
                "turns": []}

    def autocast(self) -> Any:
        """bf16 autocast for the model's compute (parameters stay float32; the TTT layers keep their inner
        loop and state in float32 inside it), or nothing."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self, progress: Any = None) -> TrainerState:
        task = progress.add_task("train", total=self.total_steps, completed=self.step, loss="-", tps="-") \
            if progress is not None else None
        self._progress = (progress, task)
        self.state.finished = False
        while not self.done:
            # a run that stopped on an epoch's last batch resumes with that epoch's tail empty: only an empty
            # epoch from its start means there is nothing to train on
            fresh_epoch = self.loader.next_batch == 0
            trained_any = False
            for batch in self.loader:
                trained_any = True
                self.train_batch(batch)
                if self._checkpoint_due():
                    self.save()
                if self.done:
                    break
            if not trained_any and fresh_epoch:
                break  # an empty epoch: nothing more to train on
        if self._pending_windows:  # a partial accumulation left when the data ran out
            self._optimizer_step()
        self.state.finished = True
        if self.last_saved_step == self.step and self.last_checkpoint is not None:
            if self.processes.is_main:
                atomic_write_json(self.last_checkpoint / TRAINER_STATE_FILE,
                                  {**self.trainer_state(), "step": self.step})
        else:
            self.save()
        if self.processes.is_main:
            self.metrics.finish(self.step)
            for logger in self.scalar_loggers:
                logger.close()
        return self.state

    def _checkpoint_due(self) -> bool:
        return self.step - self.last_saved_step >= self.settings.save_every and self._pending_windows == 0

    def train_batch(self, batch: Any) -> None:
        """All windows of one batch of conversations; the stream (and its cache) lives for this batch only."""
        stream = ExchangeStream(self.model)
        k = self.settings.tbptt_turns
        n = len(batch)
        # every process runs as many windows as the longest batch among them (all-pad ones past its own end)
        windows = self.processes.max_ints([math.ceil(n / k)])[0]
        for start in range(0, windows * k, k):
            if self.done:
                return
            stream.detach()
            if not self.train_window(batch, range(start, min(start + k, n)), stream):
                return  # the state is poisoned: drop the rest of this batch

    def train_window(self, batch: Any, exchanges: range, stream: ExchangeStream) -> bool:
        """Forward K exchanges carrying the stream's cache, one backward; an optimizer step when the accumulation
        is complete. Returns whether the window was healthy."""
        model = self.model
        model.train()
        next_step = self.step + 1
        completes = self._pending_windows + 1 >= self.settings.gradient_accumulation
        collect = completes and self.ttt_logger.wants(next_step)
        loss_sum: torch.Tensor | float = 0.0
        targets = positions = 0
        turns: list[int] = []
        conversation_ids: list[str] = []
        for index, k in enumerate(exchanges):
            step = batch[k]  # loaded and featurised on access: once per exchange
            conversation_ids = list(step["conversation_ids"])
            with self.autocast():
                total, n = self.exchange_loss(stream, step, collect_ttt_stats=collect and index == len(exchanges) - 1)
            if n:
                loss_sum = loss_sum + total
            targets += n
            positions += real_positions(step, self.speech_mode)
            turns.append(int(step["turn_number"].max()))
        self.state.windows += 1
        cache = stream.cache
        loss = loss_sum / targets if targets else None
        problems = nonfinite_problems(loss.detach() if loss is not None else None, cache=cache) \
            if len(exchanges) else []
        problems = self._agreed(problems)
        if not problems and loss is not None:
            if not loss.requires_grad:
                raise UserError(
                    f"the trained groups ({self.settings.train}) get no gradient from this data (text-only user "
                    "turns never reach the speech projector, for one)",
                    fix="train groups the loss depends on, e.g. --train ttt,projector or --train llm,projector")
            self.accelerator.backward(loss / self.settings.gradient_accumulation)
        if not problems:
            problems = self._agreed(nonfinite_problems(model=model) if loss is not None else [])
        if problems:
            self._skip(problems, conversation_ids, turns)
            return False
        if self.enforcer is not None and next_step % self.settings.fp32_check_every == 0:
            self._check_fp32(cache)
        pending = self._pending
        pending["loss_sum"] += float(loss_sum.detach()) if targets else 0.0
        pending["targets"] += targets
        pending["positions"] += positions
        pending["conversations"] = sorted(set(pending["conversations"]) | set(conversation_ids))
        pending["turns"].extend(turns)
        self._pending_windows += 1
        if completes:
            self._optimizer_step(cache)
        return True

    def exchange_loss(self, stream: ExchangeStream, step: dict[str, Any], **kwargs: Any) -> tuple[Any, int]:
        """(summed loss, targets) of one exchange under the run's objective: the replies' cross-entropy, or the
        audio objective over the speech positions (`omnittt.core.audio_objective`)."""
        inputs = model_inputs(step, self.accelerator.device)
        if self.settings.objective == "audio":
            scored = audio_exchange(stream, inputs, step["turn_number"], **kwargs)
            if scored.count and float(scored.total.detach()) == 0.0:  # a zero L1 on real speech is a broken feed
                raise UserError(f"the audio objective is exactly 0 on {', '.join(step['conversation_ids'])}",
                                fix="check the audio of these recordings (silence everywhere?) and the model")
            return scored.total, scored.count
        out = stream.exchange(inputs, step["turn_number"], **kwargs)
        n = target_count(step["labels"])
        return (out.loss.float() * n if n else 0.0), n

    def _agreed(self, problems: list[str]) -> list[str]:
        """This process's problems, or a note when only another process has some: all skip together."""
        if self.processes.any(bool(problems)) and not problems:
            return ["non-finite values in another process"]
        return problems

    def _optimizer_step(self, cache: Any = None) -> None:
        settings = self.settings
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.processes.average_gradients(params)
        grad_norm = self.accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.record_ok()
        self.state.step += 1
        pending, self._pending = self._pending, self._empty_pending()
        self._pending_windows = 0
        if self.processes.multi:  # metrics of the step over all processes
            pending["loss_sum"], pending["targets"], pending["positions"] = self.processes.sum(
                [pending["loss_sum"], pending["targets"], pending["positions"]])
            pending["targets"], pending["positions"] = int(pending["targets"]), int(pending["positions"])
            pending["conversations"] = sorted(set(self.processes.gather(pending["conversations"])))
            pending["turns"] = self.processes.gather(pending["turns"])
        self.state.tokens += pending["positions"]
        elapsed = max(time.perf_counter() - pending["start"], 1e-9)
        loss = pending["loss_sum"] / pending["targets"] if pending["targets"] else float("nan")
        tokens_per_s = pending["positions"] / elapsed
        val_loss = self.validate() if self._validation_due() else None
        if self.processes.is_main:
            self.metrics.log(
                self.step, loss, lr=self.optimizer.param_groups[0]["lr"], tokens_per_s=tokens_per_s,
                grad_norm=float(grad_norm), stage=self.state.stage, total_steps=self.total_steps,
                tokens=self.state.tokens,
                conversation_ids=pending["conversations"], turns=pending["turns"],
                fp32_drifts=self.fp32_drifts or None, val_loss=val_loss,
            )
            for logger in self.scalar_loggers:
                logger.log(self.step, {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                                       "tokens_per_s": tokens_per_s, "grad_norm": float(grad_norm),
                                       "val_loss": val_loss})
        if cache is not None and self.processes.is_main and self.ttt_logger.wants(self.step):
            self.ttt_logger.log(self.step, cache, extra={"stage": self.state.stage})
        progress, task = self._progress if hasattr(self, "_progress") else (None, None)
        if progress is not None:
            progress.update(task, completed=self.step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")
        fault_point("step", self.step)

    def _validation_due(self) -> bool:
        if self.val_loader is None:
            return False
        every = self.settings.eval_every
        return (every and self.step % every == 0) or self.step == self.total_steps

    def validate(self, swap_speech: bool = False) -> float:
        """Validation loss on the held-out conversations (the model goes back to train mode next window)."""
        self.val_loader.next_batch = 0
        batches = list(self.val_loader)
        if self.settings.objective == "audio":
            self.last_val_loss = evaluate_audio_loss(self.model, batches, self.accelerator.device)
        else:
            self.last_val_loss = evaluate_loss(self.model, batches, self.accelerator.device, swap_speech=swap_speech)
        return self.last_val_loss

    def _skip(self, problems: list[str], conversation_ids: list[str], turns: list[int]) -> None:
        """Drop this window's gradients and any pending accumulation, log it, count it."""
        self.optimizer.zero_grad(set_to_none=True)
        self._pending = self._empty_pending()
        self._pending_windows = 0
        self.state.skipped += 1
        reason = "; ".join(problems)
        if self.processes.is_main:
            self.metrics.log(self.step + 1, float("nan"), stage=self.state.stage, total_steps=self.total_steps,
                             skipped=reason, conversation_ids=conversation_ids, turns=turns)
        if self.console is not None:
            self.console.print(f"[yellow]skipped a window before step {self.step + 1}:[/yellow] {reason}")
        self.guard.record_skip(self.step + 1, problems)

    def _check_fp32(self, cache: Any) -> None:
        report = self.enforcer.verify(cache)
        if not report.ok:
            self.fp32_drifts += len(report.drifts)
            if self.console is not None:
                self.console.print(f"[bold yellow]{report.describe()}[/bold yellow]")

    # -- checkpoints -----------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        self.state.loader = self.loader.state_dict()
        self.state.guard = self.guard.state_dict()
        return self.state.to_dict()

    def save(self) -> None:
        """The main process writes the checkpoint (every process holds the same weights, optimizer and data
        position), the others wait for it."""
        self.processes.check_same_weights(self.model.parameters())
        if self.processes.is_main:
            model = self.accelerator.unwrap_model(self.model)
            self.last_checkpoint = save_checkpoint(
                self.run, self.step, model, self.trainer_state(), optimizer=self.optimizer,
                scheduler=self.scheduler, extra_pretrained=self.extra_pretrained, keep=self.settings.keep_checkpoints,
            )
        else:
            self.last_checkpoint = self.run.checkpoint_dir(self.step)
        self.processes.barrier()
        self.last_saved_step = self.step


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Sequence[Any], device: torch.device | str = "cpu",
                  swap_speech: bool = False) -> float:
    """Token-weighted mean loss over the assistant text of `batches`, state carried across each batch's
    exchanges exactly as in training. `swap_speech`: each exchange's speech segments are replaced by those of
    the same exchange in the next batch (another conversation), keeping this exchange's feature lengths so the
    positions and alignment are unchanged; a model that uses the speech does worse on it."""
    if swap_speech and len(batches) < 2:
        raise ValueError("swapping speech between conversations needs at least two batches")
    model.eval()
    total, count = 0.0, 0
    for b, batch in enumerate(batches):
        stream = ExchangeStream(model)
        donor = batches[(b + 1) % len(batches)]
        for k in range(len(batch)):
            step = batch[k]
            inputs = model_inputs(step, torch.device(device))
            if swap_speech and inputs.get("input_features") is not None and inputs["input_features"].shape[0]:
                other = donor[k % len(donor)]["input_features"]
                if other.shape[0]:
                    index = torch.arange(inputs["input_features"].shape[0]) % other.shape[0]
                    inputs["input_features"] = other[index].to(inputs["input_features"].device)
            out = stream.exchange(inputs, step["turn_number"])
            n = target_count(step["labels"])
            if n:
                total += float(out.loss) * n
                count += n
    return total / count if count else math.nan


@torch.no_grad()
def evaluate_audio_loss(model: torch.nn.Module, batches: Sequence[Any], device: torch.device | str = "cpu") -> float:
    """Mean audio-objective loss over the speech positions of `batches`, state carried as in training."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        stream = ExchangeStream(model)
        for k in range(len(batch)):
            step = batch[k]
            scored = audio_exchange(stream, model_inputs(step, torch.device(device)), step["turn_number"])
            total += float(scored.total)
            count += scored.count
    return total / count if count else math.nan
