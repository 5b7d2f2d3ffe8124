"""Preprocess throughput on DeepDialogue-like audio (24 kHz PCM16 mono, ~6 s turns, real layout).

    python benchmarks/preprocess.py --dialogues 40 --workers 1 2

Generates the corpus in a temp folder (noise-modulated tones, written with soundfile), then runs the real
pipeline (`omnittt.data.preprocess`) once per worker count, side by side, and prints a markdown table.
"x real time" counts the corpus audio of the processed dialogues (both speakers; the dialogue task decodes
only the user's half) and, separately, the user speech decoded into samples.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 24_000


def make_corpus(root: Path, dialogues: int, turns: int, seconds: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    folder = root / "data" / "dialogues_llama3-70B_qwen2.5-72B"
    folder.mkdir(parents=True)
    total = 0.0
    for d in range(dialogues):
        stem = f"cars_{d}_{turns}"
        seg = folder / stem / "segments"
        seg.mkdir(parents=True)
        conv = []
        for t in range(turns):
            speaker = f"LLM{t % 2 + 1}"
            dur = float(rng.uniform(0.7, 1.3) * seconds)
            n = int(dur * RATE)
            x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(n) / RATE) * rng.uniform(0.5, 1, n)
            sf.write(seg / f"{t + 1:03d}_{speaker}_neutral.wav", x.astype(np.float32), RATE, subtype="PCM_16")
            conv.append({"speaker": speaker, "text": f"This is turn {t} of dialogue {d}, about cars and roads.",
                         "emotion": "curious"})
            total += n / RATE
        (folder / f"{stem}.json").write_text(json.dumps(
            {"domain": "cars", "timestamp": "2025-03-19 03:53:00", "model1": "Qwen/Qwen2.5-72B-Instruct",
             "model2": "Qwen/Qwen2.5-72B-Instruct", "conversation": conv}))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=40)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0, help="mean turn length")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--format", default="pt")
    args = parser.parse_args()

    import torch  # noqa: F401  (imported before timing: a one-off ~2-4 s, not throughput)

    from omnittt.data.preprocess import PreprocessOptions, plan, run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "DeepDialogue-xtts"
        corpus_sec = make_corpus(root, args.dialogues, args.turns, args.seconds)
        rows = []
        for workers in args.workers:
            out = Path(tmp) / f"out{workers}"
            options = PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out),
                                        workers=workers, format=args.format)
            the_plan = plan(options)  # tokenizer + discovery + estimate: not timed
            start = time.perf_counter()
            summary = run(the_plan)
            wall = time.perf_counter() - start
            st = summary.stats
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            rows.append((workers, wall, corpus_sec / wall, corpus_sec / wall / workers, st["speech_sec"] / wall,
                         st["samples"], size))
    print(f"\n{args.dialogues} dialogues x {args.turns} turns, {corpus_sec / 60:.1f} min corpus audio "
          f"(24 kHz PCM16 mono, ~{args.seconds:.0f} s turns), --format {args.format}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{datetime.date.today().isoformat()}\n")
    print("| workers | wall s | x real time (corpus) | per core | x real time (user speech decoded) | samples "
          "| output MB |")
    print("|---|---|---|---|---|---|---|")
    for w, wall, xrt, per_core, speech_xrt, samples, size in rows:
        print(f"| {w} | {wall:.2f} | {xrt:.0f}x | {per_core:.0f}x | {speech_xrt:.0f}x | {samples} | "
              f"{size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
