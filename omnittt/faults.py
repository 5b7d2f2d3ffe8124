"""The one syntax of fault injection for the crash tests: `OMNITTT_FAULT_AT=phase[@n][,phase[@n]...]`.

Each caller says what `n` counts: training (`omnittt.train.faults`) dies at optimizer step n, preprocessing
(`omnittt.data.preprocess.Faults`) the n-th time the phase is reached. Without `@n` the first time counts.
A leaf: imports nothing of omnittt.
"""

from __future__ import annotations

import os

FAULT_ENV = "OMNITTT_FAULT_AT"


def fault_spec(spec: str | None = None) -> dict[str, int | None]:
    """{phase: n, or None without `@n`} from `spec`, or from $OMNITTT_FAULT_AT when `spec` is None."""
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    faults: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        phase, sep, n = item.partition("@")
        faults[phase] = int(n) if sep else None
    return faults
