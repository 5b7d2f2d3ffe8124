"""Benchmark: speech, used. From an empty folder: a synthetic spoken corpus (espeak-ng, `omnittt download synthetic`)
whose answers are only in the user's speech, `omnittt preprocess`, `omnittt train` of the tiny preset, and
`omnittt eval --held-out` on dialogues spoken by voices no training dialogue has; writes the Speech section of
BENCHMARKS.md.

Tasks (docs/speech.md):
- `repeat`: the user says four digits; the reply is the digits, written;
- `numbers` (`--kinds repeat,numbers,recall`): the user says a number; the reply is the next number or its double;
- `recall` (spoken recall): the user says a code in the first exchange (the reply does not repeat it), several
  filler exchanges follow, then the code is asked for: only what was heard and kept in the TTT state answers,
  since the sliding attention window is shorter than the distance.
Training dialogues mix recall distances (2..8 exchanges); evaluation recall dialogues are 8 exchanges long (the
code is asked 7 exchanges after it was said). The model is scored with its own speech, with another conversation's
speech (the swap control) and with its TTT state reset every turn (the memory control).

    python benchmarks/speech_use.py --out /tmp/omnittt_bench_speech --steps 1500 [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sections import replace_section

from omnittt.data.synthetic import VOICES

HELD_OUT_VOICES = ["en-us+m7", "en-gb+f5"]
MARKER = "## Speech"


def omnittt(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    subprocess.run([sys.executable, "-m", "omnittt", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def dataset(root: Path, name: str, *corpus_args: str) -> Path:
    processed = root / f"data_{name}"
    if not (processed / "index.json").is_file():
        omnittt("download", "synthetic", "--to", str(root / f"corpus_{name}"), *corpus_args)
        omnittt("preprocess", "synthetic", str(root / f"corpus_{name}"), "--output", str(processed),
                "--mini-batch-size", "16", "--overwrite")
    return processed


def train(root: Path, data: Path, args: argparse.Namespace) -> float:
    run = root / "run"
    if (root / "train.json").is_file():
        return json.loads((root / "train.json").read_text())["seconds"]
    start = time.perf_counter()
    omnittt("train", "--preset", "tiny", "--data", str(data), "--stage", "none", "--run", str(run), "--train", "all",
            "--lr", "3e-3", "--batch-size", "16", "--max-steps", str(args.steps), "--ttt-mini-batch-size", "16",
            "--tbptt-turns", "8", "--attention-window", str(args.window), "--set", "ttt_base_lr=1.0", "--set",
            "min_lr_ratio=1.0", "--num-threads", "1", "--save-every", str(args.steps), "--overwrite")
    seconds = time.perf_counter() - start
    (root / "train.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def evaluate(root: Path, data: Path) -> dict:
    out = root / "eval.json"
    if not out.is_file():
        omnittt("eval", "--run", str(root / "run"), "--data", str(data), "--stage", "none", "--held-out",
                "--ttt-reset", "both", "--batch-size", "8", "--num-threads", "1", "--output", str(out))
    return json.loads(out.read_text())


def task_rows(report: dict) -> list[dict]:
    """Per task: exact match and answer loss of the model, with speech swapped and with the state reset, and the
    paired gaps (control minus model) with their intervals."""
    recall = report["recall"]
    runs = {run["name"]: {row["distance"]: row for row in run["by_task"]} for run in recall["runs"]}
    gaps = {gap["b"]: {row["distance"]: row for row in gap["by_task"]} for gap in recall["gaps"]}
    rows = []
    for task, own in runs["model"].items():
        row = {"task": task, "dialogues": own["dialogues"], "exact_match": own["exact_match"],
               "token_accuracy": own["token_accuracy"], "loss": own["loss"]}
        for control in ("model, speech swapped", "model, TTT reset every turn"):
            if control in runs:
                row[control] = {"exact_match": runs[control][task]["exact_match"],
                                "gap": gaps[control][task]["loss"], "ci": gaps[control][task]["ci"]}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/omnittt_bench_speech"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--dialogues", type=int, default=1600)
    parser.add_argument("--eval-dialogues", type=int, default=150)
    parser.add_argument("--kinds", default="repeat,recall",
                        help="synthetic kinds in turn (with numbers as a third kind, recall was 0%% at 1500 steps)")
    parser.add_argument("--write", type=Path, help="replace the Speech section of this BENCHMARKS.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_voices = ",".join(v for v in VOICES if v not in HELD_OUT_VOICES)
    train_data = dataset(args.out, "train", "--kinds", args.kinds, "--dialogues", str(args.dialogues), "--voices",
                         train_voices, "--recall-exchanges", "8", "--min-recall-exchanges", "2", "--seed", "0")
    eval_data = dataset(args.out, "eval", "--kinds", args.kinds, "--dialogues", str(args.eval_dialogues), "--voices",
                        ",".join(HELD_OUT_VOICES), "--recall-exchanges", "8", "--seed", "1")
    seconds = train(args.out, train_data, args)
    report = evaluate(args.out, eval_data)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": datetime.now(timezone.utc)
               .strftime("%Y-%m-%d"), "steps": args.steps, "window": args.window, "command": " ".join(sys.argv),
               "train_seconds": round(seconds, 1), "tasks": task_rows(report),
               "recall_positions": report["recall"]["position_distance"]}
    (args.out / "speech.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    print(table)
    if args.write:
        replace_section(args.write, MARKER, table)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _gap(entry: dict | None) -> str:
    if not entry or entry["gap"] is None:
        return "—"
    ci = entry["ci"]
    return f"{entry['gap']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def markdown(results: dict) -> str:
    positions = results["recall_positions"]
    lines = [MARKER, "", f"`{results['command']}` on {results['machine']}, {results['date']}: the tiny preset "
             f"(encoder trained, its window the speech only), {results['steps']} optimizer steps (batch 16) in "
             f"{results['train_seconds'] / 60:.1f} min, sliding attention window {results['window']}; eval on "
             f"held-out dialogues spoken by held-out voices ({', '.join(HELD_OUT_VOICES)}). Spoken-recall answers "
             f"are {positions['min']:,}-{positions['max']:,} positions after the code was said. Exact match of "
             "every answer token; gaps are answer-token loss of the control minus the model (nats per token, "
             "95% bootstrap interval over dialogues).", "",
             "| task | dialogues | exact match | token accuracy | speech swapped: exact match | swap gap | "
             "TTT reset every turn: exact match | reset gap |", "|---|---|---|---|---|---|---|---|"]
    for row in results["tasks"]:
        swapped = row.get("model, speech swapped")
        reset = row.get("model, TTT reset every turn")
        lines.append(f"| {row['task']} | {row['dialogues']} | {_pct(row['exact_match'])} | "
                     f"{_pct(row['token_accuracy'])} | {_pct(swapped and swapped['exact_match'])} | {_gap(swapped)} | "
                     f"{_pct(reset and reset['exact_match'])} | {_gap(reset)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
