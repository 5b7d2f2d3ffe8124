"""Training throughput of the tiny preset under conversation-level truncated BPTT: TTT layers vs the
attention-only baseline (`ttt_layers=[]`) vs a sliding attention window, same data, same steps.

Each "conversation" is fed in exchanges of `--exchange` positions (text only, so the LLM is what is measured),
the cache carried across exchanges and detached every `--tbptt` exchanges, one backward + AdamW step per window,
exactly as `omnittt.train.loop.Trainer` does. Reports positions/s per model and length, and ratios to TTT.

    python benchmarks/train.py --lengths 2048 8192 32768 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from omnittt.core.presets import build_model
from omnittt.train.optim import build_optimizer
from omnittt.train.trainable import parameter_groups

VARIANTS = {
    "ttt [2,3]": {"ttt_layers": [2, 3]},
    "attention only": {"ttt_layers": []},
    "attention window 512": {"ttt_layers": [], "attention_window": 512},
    "ttt [2,3] + window 512": {"ttt_layers": [2, 3], "attention_window": 512},
}


def conversation_positions_per_s(model, length: int, exchange: int, tbptt: int, vocab: int, seed: int) -> float:
    optimizer = build_optimizer([{**g, "lr": 1e-4} for g in parameter_groups(model, "all")])
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (1, length), generator=generator)
    start = time.perf_counter()
    cache = None
    for window_start in range(0, length, exchange * tbptt):
        if cache is not None:
            cache.detach()
        loss = 0.0
        for s in range(window_start, min(window_start + exchange * tbptt, length), exchange):
            chunk = ids[:, s:s + exchange]
            out = model(input_ids=chunk, attention_mask=torch.ones_like(chunk), labels=chunk,
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            loss = loss + out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return length / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--exchange", type=int, default=512, help="positions per exchange (a multiple of b)")
    parser.add_argument("--tbptt", type=int, default=4, help="exchanges per truncated-BPTT window")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, exchange {args.exchange}, tbptt {args.tbptt}")
    rows = []
    for length in args.lengths:
        row = {}
        for name, overrides in VARIANTS.items():
            torch.manual_seed(0)
            model = build_model("tiny", **overrides)
            model.train()
            vocab = model.config.text_config.vocab_size
            row[name] = conversation_positions_per_s(model, length, args.exchange, args.tbptt, vocab, seed=length)
        rows.append((length, row))
        base = row["ttt [2,3]"]
        print(f"{length:>6} positions: " + "  ".join(f"{n} {v:,.0f}/s ({v / base:.2f}x)" for n, v in row.items()),
              flush=True)
    print("\n| positions | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for length, row in rows:
        base = row["ttt [2,3]"]
        print(f"| {length:,} | " + " | ".join(f"{v:,.0f}/s ({v / base:.2f}x)" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
