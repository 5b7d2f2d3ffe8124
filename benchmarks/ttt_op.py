"""Benchmark of the TTT op (`omnittt.core.ttt_ops`): forward and forward+backward speed, peak memory, achieved
GFLOP/s against this machine's measured fp32 matmul rate.

    python benchmarks/ttt_op.py                      # the full table for BENCHMARKS.md (a few minutes on 2 cores)
    python benchmarks/ttt_op.py --kinds mlp --block-sizes 64 --lengths 1024,16384 --modes fwd

Every configuration runs in a fresh subprocess, so its peak RSS (`ru_maxrss`) is its own; the table also gives the
RSS before the op ran (Python + torch + inputs), so the op's share is the difference. Op FLOPs per token and head
(ttt_algorithm.md 3.2): 56 f^2 + 30 b f for TTT-MLP, 6 f^2 + 6 b f for TTT-Linear (forward only; the backward
column reports time). Timings are the median of `--repeats` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone


def op_flops_per_token(kind: str, nh: int, f: int, b: int) -> int:
    return nh * (56 * f * f + 30 * b * f if kind == "mlp" else 6 * f * f + 6 * b * f)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads of this process) per call, after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def worker(kind: str, b: int, L: int, mode: str, group: int, repeats: int, nh: int, f: int) -> dict:
    """One configuration, in its own process."""
    import torch

    from omnittt.core.ttt_ops import ttt_linear, ttt_mlp

    g = torch.Generator().manual_seed(0)
    n_mb = L // b
    XK, XQ, XV = (torch.randn(1, nh, n_mb, b, f, generator=g) for _ in range(3))
    lr = torch.rand(1, nh, n_mb, 1, b, generator=g) * (0.1 if kind == "mlp" else 1.0) / f
    eta = lr / torch.arange(1, b + 1, dtype=torch.float32)[:, None]  # token_eta[i] = 1/(i+1)
    width = 4 * f if kind == "mlp" else f
    state = [torch.randn(1, nh, f, width, generator=g) * 0.02, torch.zeros(1, nh, 1, width)]
    if kind == "mlp":
        state += [torch.randn(1, nh, width, f, generator=g) * 0.02, torch.zeros(1, nh, 1, f)]
    ln = [torch.ones(nh, f), torch.zeros(nh, f)]
    op = ttt_mlp if kind == "mlp" else ttt_linear
    leaves = [XK, XQ, XV, eta, *ln, *state]
    base_rss = rss_mib()

    def forward() -> None:
        with torch.no_grad():
            op(XK, XQ, XV, eta, *ln, *state)

    def forward_backward() -> None:
        inputs = [t.detach().requires_grad_() for t in leaves]
        final, z = op(*inputs[:4], *inputs[4:6], *inputs[6:], checkpoint_group_size=group)
        (z.square().mean() + sum(p.square().mean() for p in final.values())).backward()

    load = os.getloadavg()[0]
    seconds, cpu_seconds = timed(forward if mode == "fwd" else forward_backward, repeats)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "base_rss_mib": base_rss, "peak_rss_mib": rss_mib(),
            "threads": torch.get_num_threads(), "load_before": load, "load_after": os.getloadavg()[0]}


MATMULS = {  # name -> (A, B) shapes of torch.bmm
    "batched 512 x (64x64 @ 64x64)": ((512, 64, 64), (512, 64, 64)),
    "batched 8 x (64x64 @ 64x256)": ((8, 64, 64), (8, 64, 256)),  # the op's products at b = 64, one per head
    "2048 x 2048": ((1, 2048, 2048), (1, 2048, 2048)),
}


def matmul_rates() -> dict:
    """fp32 GFLOP/s (per wall second and per CPU second) of this machine on the op's shape class and on a large
    matmul: the best of 5 bursts of ~0.2 s each."""
    import torch

    rates = {}
    for name, (a, b) in MATMULS.items():
        A, B = torch.randn(a), torch.randn(b)
        flops = 2 * a[0] * a[1] * a[2] * b[2]
        single, _ = timed(lambda A=A, B=B: torch.bmm(A, B), 1)
        calls = max(1, int(0.2 / max(single, 1e-6)))
        best_wall = best_cpu = float("inf")
        for _ in range(5):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                torch.bmm(A, B)
            best_wall = min(best_wall, (time.perf_counter() - start) / calls)
            best_cpu = min(best_cpu, (time.process_time() - start_cpu) / calls)
        rates[name] = {"wall": flops / best_wall / 1e9, "cpu": flops / max(best_cpu, 1e-9) / 1e9}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="mlp,linear")
    parser.add_argument("--block-sizes", default="16,64", help="mini-batch sizes b")
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--checkpoint-groups", default="4", help="extra fwd+bwd rows at the longest length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the workers, e.g. MALLOC_TRIM_THRESHOLD_=4000000000 (repeatable)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=5, metavar=("KIND", "B", "L", "MODE", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    nh, f = args.heads, args.head_dim
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        kind, b, L, mode, group = args.worker
        print(json.dumps(worker(kind, int(b), int(L), mode, int(group), args.repeats, nh, f)))
        return

    import torch

    split = [s for s in args.checkpoint_groups.split(",") if s]
    lengths = [int(x) for x in args.lengths.split(",")]
    configs = [(k, int(b), L, m, 0) for k in args.kinds.split(",") for b in args.block_sizes.split(",")
               for m in args.modes.split(",") for L in lengths]
    configs += [(k, int(b), max(lengths), "fwdbwd", int(g)) for g in split for k in args.kinds.split(",")
                for b in args.block_sizes.split(",") if "fwdbwd" in args.modes]
    started = time.time()
    rates = matmul_rates()
    rows = []
    for kind, b, L, mode, group in configs:
        cmd = [sys.executable, __file__, "--worker", kind, str(b), str(L), mode, str(group),
               "--repeats", str(args.repeats), "--heads", str(nh), "--head-dim", str(f), "--threads", str(args.threads)]
        env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        rows.append({"kind": kind, "b": b, "L": L, "mode": mode, "checkpoint_group_size": group, **result,
                     "tokens_per_s": L / result["seconds"],
                     "gflops": op_flops_per_token(kind, nh, f, b) * L / result["seconds"] / 1e9,
                     "gflops_per_cpu_s": op_flops_per_token(kind, nh, f, b) * L / result["cpu_seconds"] / 1e9})
        r = rows[-1]
        print(f"{kind:6s} b={b:<3d} L={L:<6d} {mode:6s} g={group} {r['seconds']:8.3f} s (cpu {r['cpu_seconds']:.3f} s) "
              f"{r['tokens_per_s']:9.0f} tok/s {r['gflops']:6.1f} GFLOP/s  peak {r['peak_rss_mib']:6.0f} MiB "
              f"(base {r['base_rss_mib']:.0f}) load {r['load_before']:.1f}", flush=True)
    rates_after = matmul_rates()
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "matmul_gflops_before": rates, "matmul_gflops_after": rates_after, "rows": rows,
              "wall_s": time.time() - started, "env": args.env}
    print_markdown(report, lengths)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


def print_markdown(report: dict, lengths: list[int]) -> None:
    env = f", worker environment {' '.join(report['env'])}" if report["env"] else ""
    print(f"\n{report['date']}, torch {report['torch']}, {report['threads']} threads on {report['cores']} cores, "
          f"run took {report['wall_s']:.0f} s{env}")
    print("fp32 matmul GFLOP/s per wall second (per CPU second), before / after the op runs: " + ", ".join(
        f"{k}: {before['wall']:.0f} ({before['cpu']:.0f}) / {after['wall']:.0f} ({after['cpu']:.0f})"
        for k, before, after in ((k, report["matmul_gflops_before"][k], report["matmul_gflops_after"][k])
                                 for k in MATMULS)))
    print("\n| op | b | L | mode | ckpt group | s / call | CPU s / call | tokens/s | op GFLOP/s (per CPU s) "
          "| peak RSS MiB (before op) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        gflops = f"{r['gflops']:.1f} ({r['gflops_per_cpu_s']:.1f})" if r["mode"] == "fwd" else "-"
        print(f"| TTT-{'MLP' if r['kind'] == 'mlp' else 'Linear'} | {r['b']} | {r['L']} | {r['mode']} "
              f"| {r['checkpoint_group_size'] or 'off'} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} "
              f"| {r['tokens_per_s']:.0f} | {gflops} | {r['peak_rss_mib']:.0f} ({r['base_rss_mib']:.0f}) "
              f"| {r['load_before']:.1f} |")
    short, long = min(lengths), max(lengths)
    by = {(r["kind"], r["b"], r["L"], r["mode"], r["checkpoint_group_size"]): r for r in report["rows"]}
    print("\nfwd+bwd cost per token, longest / shortest length (wall; CPU time):")
    for (kind, b, L, mode, group), r in by.items():
        if mode == "fwdbwd" and L == long and group == 0 and (kind, b, short, mode, 0) in by:
            s = by[kind, b, short, mode, 0]
            ratio = (r["seconds"] / long) / (s["seconds"] / short)
            cpu_ratio = (r["cpu_seconds"] / long) / (s["cpu_seconds"] / short)
            print(f"  {kind} b={b}: {ratio:.2f}x; {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
