"""Sharded preprocessing + merge vs one unsharded run, on DeepDialogue-like audio (benchmarks/preprocess.py's
generated corpus, real layout).

    python benchmarks/shards.py --dialogues 60 --shards 3

Runs, side by side in one process: the unsharded run; the N shards one after another (on N machines they run
at the same time, so their critical path is the slowest shard); `omnittt preprocess merge` of the shards (pt:
hard links; arrow: datasets concatenation). Checks that the merged index equals the unsharded one and prints
a markdown table.
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

from preprocess import make_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=60)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0, help="mean turn length")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--format", default="pt")
    args = parser.parse_args()

    import torch  # noqa: F401  (imported before timing)

    from omnittt.data.merge import merge_datasets
    from omnittt.data.preprocess import PreprocessOptions, plan, run

    def timed_run(root: Path, out: Path, **kw) -> float:
        the_plan = plan(PreprocessOptions(source="deepdialogue", input_dir=str(root), output=str(out), workers=1,
                                          format=args.format, **kw))
        start = time.perf_counter()
        run(the_plan)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "DeepDialogue-xtts"
        corpus_sec = make_corpus(root, args.dialogues, args.turns, args.seconds)
        whole = timed_run(root, Path(tmp) / "whole")
        shard_walls = [timed_run(root, Path(tmp) / f"shard{i}", num_shards=args.shards, shard_index=i)
                       for i in range(args.shards)]
        start = time.perf_counter()
        summary = merge_datasets([Path(tmp) / f"shard{i}" for i in range(args.shards)], Path(tmp) / "merged")
        merge = time.perf_counter() - start
        same = json.loads((Path(tmp) / "whole" / "index.json").read_text()) == \
            json.loads((Path(tmp) / "merged" / "index.json").read_text())
        samples = summary.stats["samples"]
    print(f"\n{args.dialogues} dialogues x {args.turns} turns, {corpus_sec / 60:.1f} min corpus audio, "
          f"--format {args.format}, --workers 1 per run, {args.shards} shards")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{datetime.date.today().isoformat()}\n")
    print("| run | wall s | note |")
    print("|---|---|---|")
    print(f"| unsharded | {whole:.2f} | {corpus_sec / whole:.0f}x real time |")
    for i, wall in enumerate(shard_walls):
        print(f"| shard {i} | {wall:.2f} | |")
    print(f"| merge | {merge:.2f} | {samples} samples, {samples / merge:.0f} samples/s; "
          f"{merge / whole:.1%} of the unsharded run |")
    print(f"| critical path on {args.shards} machines | {max(shard_walls) + merge:.2f} | slowest shard + merge = "
          f"{(max(shard_walls) + merge) / whole:.2f} of unsharded; merged index == unsharded: {same} |")


if __name__ == "__main__":
    main()
