"""Benchmark of the TTT layers (`omnittt.core.ttt_layer`) next to transformers' `LlamaAttention` (sdpa).

    python benchmarks/ttt_layer.py                                    # the tables for BENCHMARKS.md
    python benchmarks/ttt_layer.py --lengths 1024 --contexts 1024,8192 --layers ttt-mlp,attention

Three measurements, each configuration in a fresh subprocess (so its peak RSS is its own):

- forward and forward+backward tokens/s of one layer at sequence lengths `--lengths` (causal, B=1);
- decode: seconds per generated token after `--contexts` positions of context, and the bytes the cache holds
  for the layer (TTT: the state + pending mini-batch; attention: the KV). The TTT context is really streamed through
  the layer (prefill in chunks); the attention KV is filled with random keys/values of the right length (its decode
  cost does not depend on their values, and an sdpa prefill of 64k positions would dominate the run);
- the cost of `collect_ttt_stats=True` on a forward with a cache.

Timings are process CPU time (default, `--clock cpu`; stable on a shared machine) or wall time, the median of
`--repeats` calls after one warm-up call, with `--threads` torch threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, repeats: int, clock) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def build(kind: str, width: int, heads: int, b: int):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    from omnittt.core.ttt_layer import build_ttt_layer

    config = LlamaConfig(hidden_size=width, num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=2 * width, num_hidden_layers=1, max_position_embeddings=1 << 17)
    config._attn_implementation = "sdpa"
    config.ttt_mini_batch_size = b
    config.layer_types = ["linear_attention" if kind.startswith("ttt") else "full_attention"]
    torch.manual_seed(0)
    if kind == "attention":
        return config, LlamaAttention(config, 0).eval(), LlamaRotaryEmbedding(config)
    config.ttt_type = kind.split("-")[1]
    return config, build_ttt_layer(config, 0).eval(), None


def cache_bytes(cache) -> int:
    import torch

    total = 0
    for layer in cache.layers:
        tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        for name in ("state", "grads"):
            tensors += list((getattr(layer, name, None) or {}).values())
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def worker(task: str, kind: str, n: int, args) -> dict:
    """One configuration, in its own process."""
    import torch
    from transformers import DynamicCache

    from omnittt.core.ttt_cache import TTTCache

    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    config, layer, rotary = build(kind, args.width, args.heads, args.mini_batch)
    x = torch.randn(1, n if task != "decode" else 1, args.width)
    base_rss = rss_mib()

    def call(inputs, cache=None, position=0, **kw):
        if rotary is None:
            return layer(inputs, past_key_values=cache, **kw)[0]
        pos = torch.arange(position, position + inputs.shape[1])[None]
        return layer(inputs, position_embeddings=rotary(inputs, pos), attention_mask=None, past_key_values=cache)[0]

    result: dict = {}
    if task == "fwd":
        def run():
            with torch.no_grad():
                call(x)
        result["seconds"] = timed(run, args.repeats, clock)
    elif task == "fwdbwd":
        def run():
            layer.zero_grad(set_to_none=True)
            call(x.detach().requires_grad_()).square().mean().backward()
        result["seconds"] = timed(run, args.repeats, clock)
    elif task == "stats":
        def forward(stats: bool):
            with torch.no_grad():
                call(x, TTTCache(config), collect_ttt_stats=stats)
        off, on = [], []
        for _ in range(args.repeats):  # alternate, so load changes hit both alike
            off.append(timed(lambda: forward(False), 1, clock))
            on.append(timed(lambda: forward(True), 1, clock))
        result.update(seconds=statistics.median(off), seconds_stats=statistics.median(on))
    else:  # decode after n positions of context
        with torch.no_grad():
            if rotary is None:
                cache = TTTCache(config)
                for start in range(0, n, 4096):
                    call(torch.randn(1, min(4096, n - start), args.width), cache)
            else:
                cache = DynamicCache(config=config)
                shape = (1, args.heads, n, args.width // args.heads)
                cache.update(torch.randn(shape), torch.randn(shape), 0)
            steps = [0]

            def step():
                call(torch.randn(1, 1, args.width), cache, position=n + steps[0])
                steps[0] += 1
            per_token = [timed(step, 1, clock) for _ in range(args.decode_steps)]
        result.update(seconds=statistics.median(per_token), cache_bytes=cache_bytes(cache))
    result.update(base_rss_mib=base_rss, peak_rss_mib=rss_mib())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="ttt-mlp,ttt-linear,attention")
    parser.add_argument("--tasks", default="fwd,fwdbwd,decode,stats")
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--contexts", default="1024,8192,65536")
    parser.add_argument("--stats-length", type=int, default=4096)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "LAYER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, kind, n = args.worker
        print(json.dumps(worker(task, kind, int(n), args)))
        return

    import torch

    layers, tasks = args.layers.split(","), args.tasks.split(",")
    configs = [(task, kind, int(n)) for task in ("fwd", "fwdbwd") if task in tasks for kind in layers
               for n in args.lengths.split(",")]
    if "decode" in tasks:
        configs += [("decode", kind, int(n)) for kind in layers if kind != "ttt-linear"
                    for n in args.contexts.split(",")]
    if "stats" in tasks and "ttt-mlp" in layers:
        configs.append(("stats", "ttt-mlp", args.stats_length))
    passthrough = ["--width", str(args.width), "--heads", str(args.heads), "--mini-batch", str(args.mini_batch),
                   "--repeats", str(args.repeats), "--decode-steps", str(args.decode_steps),
                   "--threads", str(args.threads), "--clock", args.clock]
    started = time.time()
    rows = []
    for task, kind, n in configs:
        cmd = [sys.executable, __file__, "--worker", task, kind, str(n), *passthrough]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append({"task": task, "layer": kind, "n": n, **json.loads(out.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
              "machine": platform.machine(), "args": vars(args), "rows": rows, "wall_s": time.time() - started}
    print_markdown(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


def print_markdown(report: dict) -> None:
    a = report["args"]
    print(f"\n{report['date']}, torch {report['torch']}, {a['threads']} thread(s), {a['clock']} time, width "
          f"{a['width']} ({a['heads']} heads), b={a['mini_batch']}, B=1, fp32; run took {report['wall_s']:.0f} s")
    rows = report["rows"]
    print("\n| layer | L | forward tok/s | fwd+bwd tok/s | fwd peak RSS MiB | fwd+bwd peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    by = {(r["task"], r["layer"], r["n"]): r for r in rows}
    for (task, kind, n), r in by.items():
        if task == "fwd":
            fb = by.get(("fwdbwd", kind, n))
            print(f"| {kind} | {n} | {n / r['seconds']:.0f} | {n / fb['seconds']:.0f} | {r['peak_rss_mib']:.0f} "
                  f"| {fb['peak_rss_mib']:.0f} |" if fb else
                  f"| {kind} | {n} | {n / r['seconds']:.0f} | - | {r['peak_rss_mib']:.0f} | - |")
    print("\n| layer | context | decode ms / token | vs shortest context | cache MiB |")
    print("|---|---|---|---|---|")
    first: dict = {}
    for (task, kind, n), r in by.items():
        if task == "decode":
            first.setdefault(kind, r["seconds"])
            print(f"| {kind} | {n} | {1e3 * r['seconds']:.2f} | {r['seconds'] / first[kind]:.2f}x "
                  f"| {r['cache_bytes'] / 2**20:.2f} |")
    for (task, _kind, n), r in by.items():
        if task == "stats":
            print(f"\ncollect_ttt_stats=True on a {n}-position forward with a cache: {1e3 * r['seconds']:.0f} ms -> "
                  f"{1e3 * r['seconds_stats']:.0f} ms ({100 * (r['seconds_stats'] / r['seconds'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
