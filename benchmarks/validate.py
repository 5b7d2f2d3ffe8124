"""Benchmark: `omnittt validate` throughput on a warm page cache, 1 worker vs N workers, side by side.

The dataset is made by the real preprocessor from a generated `conversations`-layout corpus whose user turns
hold `--seconds` of 16 kHz audio each (default 5.5 s, the goal's ">= 5 s of speech" per exchange); it is
cached under --cache, so only the first run pays for it. Each worker count is run once to warm the cache and
then timed, beside the floor (a bare safe `torch.load` of every sample in one process); the rate is samples
checked per second of the whole `validate_dataset` call (structural checks and pool start-up included; the
tokenizer is already loaded by the warm-up run).

    python benchmarks/validate.py --conversations 300 --exchanges 5 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf


def make_corpus(root: Path, conversations: int, exchanges: int, seconds: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    t = np.arange(n) / 16_000
    for c in range(conversations):
        folder = root / "conversations" / f"conv_{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        turns = []
        for k in range(exchanges):
            # A voiced-like signal: a few harmonics under a syllable-rate envelope, plus noise.
            f0 = rng.uniform(90, 220)
            wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
            audio = 0.2 * wave * envelope + 0.01 * rng.standard_normal(n)
            sf.write(folder / f"turn_{2 * k}.wav", audio.astype(np.float32), 16_000, subtype="PCM_16")
            turns += [{"turn_id": 2 * k, "speaker": "A", "role": "user", "audio_file": f"turn_{2 * k}.wav"},
                      {"turn_id": 2 * k + 1, "speaker": "B", "role": "assistant",
                       "text": f"Sure, I can help with that. Here is what I found for number {k} of {c}."}]
        (folder / "metadata.json").write_text(json.dumps(
            {"conversation_id": f"conv_{c:05d}", "speakers": ["A", "B"], "domain": f"d{c % 4}", "turns": turns}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--exchanges", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/omnittt_bench_validate"))
    args = parser.parse_args()

    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.validate import validate_dataset

    key = f"c{args.conversations}_e{args.exchanges}_s{args.seconds}"
    corpus, data = args.cache / f"corpus_{key}", args.cache / f"processed_{key}"
    if not (data / "index.json").exists():
        started = time.perf_counter()
        make_corpus(corpus, args.conversations, args.exchanges, args.seconds)
        preprocess(PreprocessOptions(source="conversations", input_dir=str(corpus), output=str(data), workers=2,
                                     overwrite=True))
        print(f"built {data} in {time.perf_counter() - started:.0f} s")
    from omnittt.data.store import open_dataset

    store = open_dataset(data)
    for entry in store.index:  # warm the page cache
        store.load(entry)
    started = time.perf_counter()
    for entry in store.index:
        store.load(entry)
    bare = len(store.index) / (time.perf_counter() - started)
    rows = []
    for workers in args.workers:
        validate_dataset(data, workers=workers)  # warm the page cache (and this process' imports)
        cpu = time.process_time()
        report = validate_dataset(data, workers=workers)
        if workers == 1:  # in-process: CPU time is the cost on a free core, whatever else the machine runs
            cpu_ms = (time.process_time() - cpu) / report.checked_samples * 1000
        assert report.ok, {name: c.offenders[:2] for name, c in report.checks.items() if c.failed}
        speech = report.token_stats["speech_sec"]
        rows.append((workers, report.checked_samples, report.elapsed_sec, report.samples_per_sec, speech["min"]))
    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} (other work on the machine)")
    print("| workers | samples | speech per exchange (min) | seconds | samples/s |")
    print("|---:|---:|---:|---:|---:|")
    for workers, n, elapsed, rate, min_speech in rows:
        print(f"| {workers} | {n} | {min_speech:.1f} s | {elapsed:.2f} | {rate:.0f} |")
    if 1 in args.workers:
        print(f"\nCPU time per sample with 1 worker: {cpu_ms:.2f} ms -> {2000 / cpu_ms:.0f} samples/s on 2 free cores")
    print(f"\nfloor: a bare torch.load(weights_only=True) of every sample, 1 process: {bare:.0f} samples/s "
          f"(validate with 1 worker runs at {rows[0][3] / bare:.0%} of it)")
    if len(rows) > 1:
        print(f"\nspeed-up {rows[-1][0]} vs {rows[0][0]} workers: {rows[-1][3] / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
