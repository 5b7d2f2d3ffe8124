"""The run directory's file names and the versioned line formats of `metrics.jsonl` and `ttt_state.jsonl`.

Writers (the trainer through `omnittt.inspect.stats`) and readers (the monitor) agree through this module only;
`docs/jsonl_schemas.md` describes the same fields for people and other tools. Every line carries
`"schema": SCHEMA_VERSION`; a reader skips lines of a newer major schema instead of misreading them.
Non-finite floats are written as `null` (strict JSON, readable by jq/pandas); the nan/inf counters say why.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# run directory layout (docs/architecture.md "The run directory")
CONFIG_FILE = "config.yaml"
MODEL_SUMMARY_FILE = "model_summary.json"
METRICS_FILE = "metrics.jsonl"
TTT_STATE_FILE = "ttt_state.jsonl"
CHECKPOINTS_DIR = "checkpoints"
LATEST_CHECKPOINT_FILE = "latest"  # inside CHECKPOINTS_DIR: the name of the newest complete checkpoint

# TTT inner state: the learned initial parameters that must stay float32, and the runtime state keys
INNER_PARAM_NAMES = ("W1", "b1", "W2", "b2", "ttt_norm_weight", "ttt_norm_bias")
STATE_NAMES = ("W1", "b1", "W2", "b2")  # TTT-Linear has W1/b1 only

# metrics.jsonl: one line per optimizer step
METRICS_REQUIRED = ("schema", "step", "time", "loss")
METRICS_OPTIONAL = (
    "lr",              # learning rate of the first parameter group
    "tokens_per_s",    # positions processed per second over this step (padding excluded)
    "grad_norm",       # total gradient norm before clipping
    "stage",           # curriculum stage name (e.g. "8k")
    "total_steps",     # planned optimizer steps (gives the monitor its ETA)
    "tokens",          # positions seen so far
    "conversation_ids",
    "turns",           # turn numbers of the exchanges in this step
    "event",           # absent for a step; "finished" on the last line of a completed run
)

# ttt_state.jsonl: one line per logged step and TTT layer
TTT_STATE_REQUIRED = ("schema", "step", "time", "layer", "norm", "dtype", "nan", "inf")
TTT_STATE_OPTIONAL = (
    "kind",                # "mlp" | "linear"
    "norm_max",            # {state: max over batch rows of the Frobenius norm}
    "delta",               # {state: mean over rows of the norm of the change over the last mini-batch}
    "inner_loss_before",   # mean inner loss of the last mini-batch at its start state
    "inner_loss_after",    # ... and at the carried (updated) state
    "mean_lr",             # mean inner learning rate over real tokens
    "stream_position",     # max over rows of the positions fed since the last reset
    "rows",                # batch rows the means are taken over
    "nonfinite",           # state names holding NaN/Inf
    "source",              # "stats" (collect_ttt_stats), "state" (norms from the cache state only) or "init"
    "init_norm",           # {state: norm of the learned initial parameter} (when the logger knows the model)
)

FINISHED_EVENT = "finished"

# Inner-state dtypes that keep the small TTT updates: float32, or float64 (precision tests). Anything lower drifted.
FULL_PRECISION_DTYPES = ("float32", "float64")


def is_supported(record: dict) -> bool:
    """True for a line this reader understands (same major schema)."""
    return record.get("schema") == SCHEMA_VERSION
