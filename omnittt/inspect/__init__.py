"""FP32 enforcement, TTT-state statistics writer/reader, numerical health, the Textual monitor app.

Names are imported lazily: the monitor's reader side needs no torch, the writer side does.
"""

from __future__ import annotations

from omnittt._lazy import lazy_exports

# public name -> module (relative to omnittt.inspect) that defines it
_EXPORTS: dict[str, str] = {
    "FP32Enforcer": "fp32",
    "FP32Report": "fp32",
    "DtypeDrift": "fp32",
    "find_ttt_modules": "fp32",
    "TTTStateLogger": "stats",
    "MetricsLogger": "stats",
    "collect_ttt_records": "stats",
    "DEFAULT_STATS_INTERVAL": "stats",
    "check_numerical_health": "health",
    "check_model_health": "health",
    "NumericalError": "health",
    "JsonlWriter": "jsonl",
    "JsonlTail": "jsonl",
    "read_jsonl": "jsonl",
    "RunState": "run_state",
    "MonitorSettings": "run_state",
    "latest_run": "run_state",
    "SCHEMA_VERSION": "schemas",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
