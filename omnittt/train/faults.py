"""Fault injection for crash tests: `OMNITTT_FAULT_AT=phase` or `phase@step` (the syntax of `omnittt.faults`)
makes the process die at that point as abruptly as a kill (no cleanup, no `finally`), so tests see what a real
crash leaves on disk.

Phases: `checkpoint:after_temp_write` (the temp folder is complete, not renamed), `checkpoint:after_rename` (the
folder is in place, `latest` not updated), `checkpoint:after_latest` (committed, not pruned), `step` (after an
optimizer step's metrics line).
"""

from __future__ import annotations

import os
import sys

from omnittt.faults import FAULT_ENV, fault_spec

__all__ = ["FAULT_ENV", "FAULT_EXIT_CODE", "fault_point"]

FAULT_EXIT_CODE = 86


def fault_point(phase: str, step: int | None = None) -> None:
    faults = fault_spec()
    if phase not in faults:
        return
    at = faults[phase]
    if at is not None and step is not None and at != step:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FAULT_EXIT_CODE)
