"""Several training processes (`omnittt train --num-processes N`): the launch and the few agreements they need.

- Launch: the CLI re-executes itself through `accelerate launch` (torchrun underneath); each process runs the
  same `omnittt train` with `OMNITTT_LAUNCHED` set, on GPUs with NCCL or on CPU with gloo.
- Data: process r takes batches r, r + R, ... of the loader's seeded order (`ConversationLoader(num_replicas,
  rank)`), so processes train disjoint conversations.
- Windows: every batch runs the maximum number of TBPTT windows over the processes (an all-reduce); a process
  whose batch is shorter runs all-pad windows (no forward, zero gradients) so the collectives stay matched and no
  process waits on another's backward. Skipping a non-finite window is agreed by all processes.
- Gradients: averaged over the processes before clipping (data parallel, DDP's arithmetic). The model is not
  wrapped in torch's DistributedDataParallel: a TBPTT window is K forwards carrying the TTT cache and one
  backward, and DDP's reducer expects one forward per backward (and trips on parameters a text-only exchange
  leaves unused); one explicit all-reduce per optimizer step is also less traffic with gradient accumulation.
- Files: only the main process writes the run directory (config, metrics, TTT statistics, checkpoints). The
  weights are identical on every process, so a checkpoint is consolidated by construction: it loads in one process
  (`omnittt resume RUN`) or in any other process count (`rescale_loader_state` maps the data position).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from accelerate import PartialState

from omnittt.errors import UserError

LAUNCHED_ENV = "OMNITTT_LAUNCHED"  # set in the processes started by `launch`: they must not launch again


def launched() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(argv: Sequence[str], num_processes: int) -> list[str]:
    """`accelerate launch` running `python -m omnittt ARGV` in `num_processes` processes (torchrun underneath:
    its `--multi_gpu` launcher is also the one that starts several CPU processes; they then use gloo)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--main_process_port", str(_free_port()),
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "omnittt", *argv]


def launch(argv: Sequence[str], num_processes: int) -> int:
    """Run `omnittt ARGV` in `num_processes` processes; returns the launcher's exit status."""
    if num_processes < 1:
        raise UserError(f"--num-processes must be >= 1 (got {num_processes})", fix="use e.g. --num-processes 2")
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise UserError(f"--num-processes {num_processes} but {torch.cuda.device_count()} GPU(s) are visible",
                        fix="use one process per GPU (CUDA_VISIBLE_DEVICES chooses them)")
    env = {**os.environ, LAUNCHED_ENV: "1"}
    # stderr is held back: when a process stops on a user error, its one line (each process prints the same)
    # replaces the launcher's page of torchrun tracebacks
    done = subprocess.run(launch_command(argv, num_processes), env=env, check=False, stderr=subprocess.PIPE,
                          text=True, errors="replace")
    user_errors = list(dict.fromkeys(line for line in done.stderr.splitlines() if line.startswith("error:")))
    if done.returncode and user_errors:
        sys.stderr.write("\n".join(user_errors) + "\n")
        return UserError.exit_code
    sys.stderr.write(done.stderr)
    return done.returncode


class Processes:
    """The agreements between training processes; with one process every call is free and changes nothing."""

    def __init__(self) -> None:
        # the same shared state the trainer's Accelerator uses (gloo on CPU, NCCL on GPUs)
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.num_processes = int(self.state.num_processes)
        self.rank = int(self.state.process_index)

    @property
    def multi(self) -> bool:
        return self.num_processes > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.multi:
            self.state.wait_for_everyone()

    def _all_reduce(self, values: Sequence[float], op: Any, dtype: torch.dtype) -> list[Any]:
        tensor = torch.tensor(list(values), dtype=dtype, device=self.state.device)
        torch.distributed.all_reduce(tensor, op=op)
        return tensor.tolist()

    def max_ints(self, values: Sequence[int]) -> list[int]:
        """Element-wise maximum over the processes (every process passes the same length)."""
        if not self.multi or not values:
            return [int(v) for v in values]
        return [int(v) for v in self._all_reduce(values, torch.distributed.ReduceOp.MAX, torch.long)]

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one."""
        return bool(self.max_ints([int(flag)])[0])

    def sum(self, values: Sequence[float]) -> list[float]:
        if not self.multi:
            return [float(v) for v in values]
        return self._all_reduce(values, torch.distributed.ReduceOp.SUM, torch.float64)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's `items`, concatenated in rank order."""
        if not self.multi:
            return list(items)
        gathered: list[Any] = [None] * self.num_processes
        torch.distributed.all_gather_object(gathered, list(items))
        return [item for part in gathered for item in part]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Mean of each trainable parameter's gradient over the processes (a missing gradient counts as zero:
        a process that ran an all-pad window contributes nothing)."""
        if not self.multi:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # one flat buffer per dtype: a few collectives instead of one per parameter
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            flat /= self.num_processes
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n


    def check_same_weights(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Before a checkpoint: the trainable weights must be identical on every process (averaged gradients,
        the same optimizer), or the main process's checkpoint would not stand for the others."""
        if not self.multi:
            return
        fingerprint = [float(sum(p.detach().double().abs().sum() for p in params if p.requires_grad))]
        values = self.gather(fingerprint)
        if len(set(values)) > 1:
            raise RuntimeError(f"the training processes' weights diverged (fingerprints {values}); "
                               "gradient averaging is broken")


def rescale_loader_state(state: dict[str, Any], num_processes: int) -> dict[str, Any]:
    """A loader position saved with R processes, for `num_processes` processes. After n batches each of R
    processes has consumed the first n * R batches of the shared order, so the position carries over whenever
    that count divides by the new process count (always when resuming in one process)."""
    saved = int(state.get("num_replicas", 1))
    if saved == num_processes:
        return state
    consumed = int(state["next_batch"]) * saved
    if consumed % num_processes:
        raise UserError(f"the checkpoint was taken after {consumed} batches by {saved} processes, which "
                        f"{num_processes} processes cannot split evenly",
                        fix=f"resume with --num-processes {saved} (or 1)")
    return {**state, "num_replicas": num_processes, "next_batch": consumed // num_processes}
