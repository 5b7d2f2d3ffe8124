"""Benchmark: `omnittt eval` on 8k-stage sessions of the tiny preset on CPU (goal: one 8k-position session in
under a minute).

The dataset is the synthetic spoken-dialogue corpus (espeak-ng) preprocessed as `omnittt preprocess synthetic`
does (mini-batch 64, the tiny preset's), cached under --cache. The packer closes a session once it passes the
stage minimum, so 8k-stage sessions hold about 4.3k positions; the 16k stage's sessions (8,192 and up) are the
8k-position ones: the --sessions of them closest to 8,192 positions are evaluated one at a time (batch 1)
by the library `omnittt eval` calls, with random weights (the cost does not depend on the weights):
the model alone (state carried) and the model plus the reset-every-turn ablation in lockstep (the default
command). Also timed: building the exchange steps alone (sample loading + log-mel features), so the model's share
is visible. Wall-clock seconds per session, and CPU seconds of this process (all its threads: on a shared machine
the CPU time is what the work needs, the wall-clock time what it got); positions include the alignment padding
fed through the model.

    python benchmarks/eval.py --sessions 2 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path


def dataset(cache: Path, dialogues: int) -> Path:
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.synthetic import make_synthetic_corpus

    processed = cache / f"processed_{dialogues}"
    if not (processed / "index.json").is_file():
        make_synthetic_corpus(cache / f"corpus_{dialogues}", dialogues=dialogues, seed=0, workers=2)
        preprocess(PreprocessOptions(source="synthetic", input_dir=str(cache / f"corpus_{dialogues}"),
                                     output=str(processed), workers=2))
    return processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialogues", type=int, default=150)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/omnittt_bench_eval"))
    args = parser.parse_args()

    import torch

    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import build_model
    from omnittt.data.dataset import ConversationDataset, ConversationLoader
    from omnittt.evaluation.scoring import runs_for, score_runs

    data = dataset(args.cache, args.dialogues)
    ds = ConversationDataset(data, stage="16k")
    chosen = sorted(ds.conversations, key=lambda c: c.num_positions)[: args.sessions]
    torch.manual_seed(0)
    model = build_model("tiny")
    extractor = build_feature_extractor(model.config.speech_config.num_mel_bins)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for conv in chosen:
            ds.conversations = [conv]

            def loader() -> ConversationLoader:
                return ConversationLoader(ds, batch_size=1, shuffle=False, feature_extractor=extractor)

            start = time.perf_counter()
            for batch in loader():
                for step in batch:
                    del step
            steps = time.perf_counter() - start
            timings, cpu = {}, {}
            for label, modes in (("carried", ("never",)), ("carried+reset", ("never", "every-turn"))):
                start, start_cpu = time.perf_counter(), time.process_time()
                scores = score_runs(runs_for(model, "random", modes, None), loader())
                timings[label] = time.perf_counter() - start
                cpu[label] = time.process_time() - start_cpu
            rows.append({"threads": threads, "session": conv.conversation_id, "positions": conv.num_positions,
                         "exchanges": conv.num_exchanges, "target_tokens": scores[0].tokens,
                         "steps_only_s": round(steps, 2), "carried_s": round(timings["carried"], 2),
                         "carried_and_reset_s": round(timings["carried+reset"], 2),
                         "carried_cpu_s": round(cpu["carried"], 2),
                         "carried_and_reset_cpu_s": round(cpu["carried+reset"], 2),
                         "positions_per_s": round(conv.num_positions / timings["carried"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      "torch": torch.__version__, "load_average": os.getloadavg(),
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
