"""Benchmark of `omnittt chat` over a long scripted conversation: per-turn latency and memory at turns 1, 10, 100.

    python benchmarks/chat.py                        # the table for BENCHMARKS.md (tiny preset, 100 turns)
    python benchmarks/chat.py --turns 30 --window 128 --configs window,full
    python benchmarks/chat.py --width 512 --layers 8 --audio-seconds 8 --new-tokens 32   # wider layers

Three models, each in a fresh subprocess (so its RSS is its own), same weights seed and the same conversation:

- `window`: TTT layers + the attention layers limited to the last `--window` positions (`--attention-window`);
- `full`: TTT layers + full attention (the KV grows with the conversation);
- `baseline`: the attention-only baseline (no TTT layers, full attention).

Every user turn is `--audio-seconds` of 16 kHz audio (a synthetic tone: timing does not depend on the content) and
every reply exactly `--new-tokens` tokens (greedy; `min_new_tokens` = `max_new_tokens`), closed by its `<eot>` and
`end_turn()` as chat does. At each measured turn the cache is copied and the turn is timed `--repeats` times
from the same state (minimum kept; greedy decoding makes every repeat end in the same state). Reported per measured
turn: the whole exchange (speech encoder + prompt + reply + closing, through `ChatSession.user_turn`), one decode
step (one token through the model with the conversation's cache; minimum of `--new-tokens` steps on a copy), the
bytes the conversation cache holds (attention KV + TTT state + the per-position mask history), and the process
RSS. Times are process CPU time with `--threads` torch threads (stable on a shared machine; `--clock wall` for
wall time).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CONFIGS = ("window", "full", "baseline")


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def decode_step_ms(session, steps: int, clock) -> float:
    """Milliseconds of one decode step (one token through the model with the cache), at the conversation's
    current length, on a copy of the cache; minimum over `steps` steps."""
    import torch

    cache = copy.deepcopy(session.cache)
    token = torch.tensor([[session.builder.tokens.pad + 1]])
    times = []
    with torch.no_grad():
        for _ in range(steps):
            start = clock()
            session.model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            times.append(clock() - start)
    return 1000 * min(times)


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from omnittt.chat import ChatSession, GenerationSettings
    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import build_model
    from omnittt.core.tokenizer import build_default_tokenizer

    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    overrides: dict = {"attention_window": args.window} if args.worker == "window" else {}
    if args.width:  # a wider preset: 64-wide heads, GQA 2:1, MLP 2x, TTT in the top half of `--layers`
        heads = args.width // 64
        overrides.update(hidden_size=args.width, intermediate_size=2 * args.width, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2), num_hidden_layers=args.layers,
                         ttt_layers=list(range(args.layers // 2, args.layers)))
    if args.worker == "baseline":
        overrides["ttt_layers"] = []
    torch.manual_seed(0)
    model = build_model(args.preset, **overrides)
    session = ChatSession(model, build_default_tokenizer(), build_feature_extractor(
        model.config.speech_config.num_mel_bins), GenerationSettings(temperature=0.0, max_new_tokens=args.new_tokens))
    t = np.arange(int(args.audio_seconds * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)

    for _ in range(2):  # warm-up conversation
        session.user_turn(audio=wave, min_new_tokens=args.new_tokens)
    session.reset()
    measure = {int(k) for k in args.measure.split(",")}
    for k in range(1, args.turns + 1):
        if k in measure:
            saved = copy.deepcopy(session.cache), list(session.history)
            runs = []
            for repeat in range(args.repeats):
                if repeat:
                    session.cache, session.history = copy.deepcopy(saved[0]), list(saved[1])
                start = clock()
                reply = session.user_turn(audio=wave, min_new_tokens=args.new_tokens)
                runs.append((clock() - start, reply))
            total, reply = min(runs, key=lambda r: r[0])
            step_ms = decode_step_ms(session, args.new_tokens, clock)
            summary = session.state_summary()
            print(json.dumps({
                "config": args.worker, "turn": k, "seconds": total,
                "decode_ms_per_token": step_ms,
                "positions": reply.positions, "kv_bytes": summary["kv_bytes"],
                "ttt_state_bytes": summary["ttt_state_bytes"], "mask_history_bytes": summary["mask_history_bytes"],
                "rss_mib": rss_mib(), "new_tokens": len(reply.token_ids),
            }), flush=True)
        else:
            session.user_turn(audio=wave, min_new_tokens=args.new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--width", type=int, default=0, help="hidden size (0: the preset's)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers with --width")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--measure", default="1,10,100", help="turns to time")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--audio-seconds", type=float, default=2.0)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    rows = []
    passthrough = []
    for name in ("preset", "width", "layers", "turns", "measure", "window", "audio_seconds", "new_tokens", "repeats",
                 "threads", "clock"):
        passthrough += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", config, *passthrough],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{config} failed:\n{done.stderr[-3000:]}")
        rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d} · {platform.processor() or platform.machine()} · torch threads "
          f"{args.threads} · {args.clock} time · preset {args.preset}"
          f"{f' width {args.width}, {args.layers} layers' if args.width else ''} · {args.turns} turns of "
          f"{args.audio_seconds} s audio + {args.new_tokens}-token replies · window {args.window}\n")
    print("| model | turn | positions | exchange s | decode step ms | KV | TTT state | mask history | RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['turn']} | {r['positions']} | {r['seconds']:.3f} | "
              f"{r['decode_ms_per_token']:.1f} | {r['kv_bytes'] / 1024:.0f} KiB | {r['ttt_state_bytes'] / 1024:.0f} KiB"
              f" | {r['mask_history_bytes'] / 1024:.1f} KiB | {r['rss_mib']:.0f} |")
    print()
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        if len(mine) > 1:
            first, last = mine[0], mine[-1]
            cache = [r["kv_bytes"] + r["ttt_state_bytes"] + r["mask_history_bytes"] for r in (first, last)]
            print(f"{config}: turn {last['turn']} / turn {first['turn']}: exchange "
                  f"{last['seconds'] / first['seconds']:.2f}x, decode step "
                  f"{last['decode_ms_per_token'] / first['decode_ms_per_token']:.2f}x, cache bytes "
                  f"{cache[1] / max(1, cache[0]):.2f}x, RSS {last['rss_mib'] - first['rss_mib']:+.0f} MiB")

if __name__ == "__main__":
    main()
