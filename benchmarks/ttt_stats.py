"""Overhead of TTT-state statistics on a tiny training step.

Side by side in one process, alternating, on a tiny converted Llama (H2's TTT layers): a training step (forward +
backward + AdamW, metrics.jsonl line) without statistics, and the same step with `collect_ttt_stats=True` plus a
`ttt_state.jsonl` entry from `TTTStateLogger`. The trainer collects statistics every `interval` steps, so the cost
per step is the logged step's extra time divided by the interval.

    python benchmarks/ttt_stats.py                      # defaults: B=2, 512 positions, interval 10, 1 thread
    python benchmarks/ttt_stats.py --tokens 1024 --repeats 30
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnittt.core.ttt_llama import convert_llama_to_ttt
from omnittt.inspect.stats import DEFAULT_STATS_INTERVAL, MetricsLogger, TTTStateLogger


def build(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads // 2, max_position_embeddings=4 * args.tokens)
    ttt_layers = list(range(args.layers // 2, args.layers))  # the top half, as the presets do
    return convert_llama_to_ttt(LlamaForCausalLM(config), ttt_layers=ttt_layers, mini_batch_size=args.mini_batch)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mini-batch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--interval", type=int, default=DEFAULT_STATS_INTERVAL)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("process", "wall"), default="process",
                        help="process CPU time (robust on a shared machine; with 1 thread) or wall time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens))
    run_dir = tempfile.mkdtemp(prefix="ttt_stats_bench_")
    metrics = MetricsLogger(run_dir)
    ttt_logger = TTTStateLogger(run_dir, interval=1, model=model)

    clock = time.process_time if args.clock == "process" else time.perf_counter

    def step(index: int, variant: str) -> float:
        start = clock()
        cache = model.new_cache()
        out = model(input_ids=ids, labels=ids, past_key_values=cache, use_cache=True,
                    collect_ttt_stats=variant != "plain")
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics.log(index, float(out.loss.detach()), lr=1e-4)
        if variant == "stats+log":
            ttt_logger.log(index, cache, extra={"stage": "bench"})
        return clock() - start

    variants = ("plain", "stats", "stats+log")
    for index in range(3):  # warm-up
        for variant in variants:
            step(index, variant)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for index in range(args.repeats):
        # rotate the order so that drift in machine load hits every variant alike
        for offset in range(len(variants)):
            variant = variants[(index + offset) % len(variants)]
            times[variant].append(step(index, variant))

    median = {variant: statistics.median(values) for variant, values in times.items()}
    print(f"tiny TTT Llama: hidden {args.hidden}, {args.layers} layers (TTT {args.layers // 2}-{args.layers - 1}), "
          f"B={args.batch}, {args.tokens} positions, mini-batch {args.mini_batch}, {args.repeats} rounds, "
          f"torch threads {torch.get_num_threads()}, {args.clock} time")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    labels = {"plain": "training step, no statistics", "stats": "+ collect_ttt_stats",
              "stats+log": "+ collect_ttt_stats + TTTStateLogger"}
    for variant in variants:
        extra = (median[variant] / median["plain"] - 1) * 100
        print(f"{labels[variant]:<40} median {median[variant] * 1e3:8.2f} ms  min {min(times[variant]) * 1e3:8.2f} ms"
              f"  {extra:+6.2f}%")
    per_logged = median["stats+log"] / median["plain"] - 1
    print(f"overhead at interval {args.interval}: {per_logged / args.interval * 100:+.2f}% per step (target <= 2%)")


if __name__ == "__main__":
    main()
