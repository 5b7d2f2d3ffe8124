"""Training settings: every default in one place, YAML in and out (`config.yaml` of a run), CLI flags on top.

The model-shape keys (`ttt_layers` ... `attention_window`) are `None` unless set; `omnittt.config.model_overrides`
turns the set ones into `build_model(**overrides)` keywords, so the preset stays the truth for everything else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omnittt.config import Settings
from omnittt.errors import UserError

MIXED_PRECISION = ("auto", "no", "bf16")
LOG_WITH = (None, "tensorboard")
# "text": cross-entropy on the assistant replies of a processed dataset; "audio": the audio objective (APC,
# omnittt/core/audio_objective.py) on the long recordings of an audio index, no text loss
OBJECTIVES = ("text", "audio")


@dataclasses.dataclass
class TrainSettings(Settings):
    # what to train
    preset: str | None = None  # a preset name from omnittt.core.presets.PRESETS, or ...
    model: str | None = None  # ... a local model directory (save_pretrained / an exported run)
    data: str = "processed_data"
    stage: str = "8k"  # a curriculum stage (a later one continues from the previous stage's final checkpoint in
    # the same run directory), or "none": whole conversations as stored, no session packing
    allow_skip: bool = False  # start a later stage without the previous one (from --model DIR or the preset)
    run: str | None = None  # default: runs/<preset or model directory name>
    train: str = "ttt,projector"  # trainable parameter groups ("all" for everything)
    objective: str = "text"  # "text", or "audio" (pre-training on untranscribed long-form audio: --data an audio
    # index from `omnittt preprocess librilight`; the model gets an audio head predicting apc_shift positions ahead)
    apc_shift: int = 3  # audio objective: positions ahead (100 ms each in trim mode) the audio head predicts

    # model-config overrides (None: keep the preset's / checkpoint's value)
    ttt_layers: list[int] | None = None
    ttt_type: str | None = None
    ttt_mode: str | None = None
    ttt_mini_batch_size: int | None = None
    ttt_base_lr: float | None = None
    attention_window: int | None = None

    # batches and truncated BPTT
    batch_size: int = 1  # conversations started together
    tbptt_turns: int = 4  # exchanges per truncated-BPTT window (one window = one backward)
    gradient_accumulation: int = 1  # windows per optimizer step
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None = `epochs` passes over the stage's conversations
    shuffle: bool = True
    max_conversations: int | None = None  # use only the first N conversations of the stage (smoke runs)
    val_conversations: int = 0  # hold out the last N conversations of the stage for validation
    eval_every: int = 0  # optimizer steps between validation losses (0: only at the end; needs val_conversations)

    # optimisation
    lr: float | None = None  # None: the curriculum stage's learning rate
    lr_scale: dict[str, float] = dataclasses.field(default_factory=dict)  # group name -> multiplier of lr
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] | list[float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0

    # numerics
    mixed_precision: str = "auto"  # bf16 on a GPU that has it, otherwise fp32 ("no")
    gradient_checkpointing: bool = False
    fp32_check_every: int = 50  # optimizer steps between FP32-enforcer checks of the TTT inner state
    max_nonfinite_steps: int = 3  # stop after this many skipped (NaN/Inf) steps in a row

    # logging and checkpoints
    log_ttt_every: int = 10  # optimizer steps between ttt_state.jsonl records
    save_every: int = 100  # optimizer steps; the checkpoint is taken at the next batch end
    keep_checkpoints: int = 3
    progress: bool = True
    log_with: str | None = None  # also write the step scalars for "tensorboard" (RUN/tensorboard/)

    # reproducibility
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads (recorded and restored on resume for exact results)

    # transfer / fine-tune
    resume_from: str | None = None  # a checkpoint directory whose weights start this run
    reset_optimizer: bool = False
    reset_step: bool = False

    def __post_init__(self) -> None:
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # YAML gives a list
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"mixed_precision {self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}",
                            fix="use e.g. mixed_precision: bf16")
        for name in ("batch_size", "tbptt_turns", "gradient_accumulation", "epochs", "save_every",
                     "keep_checkpoints", "fp32_check_every", "log_ttt_every", "max_nonfinite_steps"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1 (got {getattr(self, name)})", fix=f"set {name} to 1 or more")
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}",
                            fix="use objective: text (replies) or objective: audio (long-form audio pre-training)")
        if int(self.apc_shift) < 1:
            raise UserError(f"apc_shift must be >= 1 (got {self.apc_shift})", fix="predict at least 1 position ahead")
        if self.log_with not in LOG_WITH:
            raise UserError(f"log_with {self.log_with!r} is not supported", fix="use --log-with tensorboard")
        if self.val_conversations < 0 or self.eval_every < 0:
            raise UserError("val_conversations and eval_every must be >= 0", fix="use 0 to turn validation off")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1 (got {self.max_steps})", fix="leave it unset for one epoch")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["adam_betas"] = list(self.adam_betas)
        return data

    @property
    def model_name(self) -> str:
        if self.preset:
            return self.preset
        if self.model:
            return Path(self.model).resolve().name
        raise UserError("no model given: pass --preset NAME or --model DIR",
                        fix="e.g. omnittt train --preset tiny, or --model path/to/checkpoint")

    @property
    def run_dir(self) -> Path:
        return Path(self.run) if self.run else Path("runs") / self.model_name

    def require_model(self) -> None:
        if self.preset and self.model:
            raise UserError("both --preset and --model given", fix="pass only one of --preset NAME / --model DIR")
        self.model_name  # noqa: B018  (raises the one-line error when neither is given)
