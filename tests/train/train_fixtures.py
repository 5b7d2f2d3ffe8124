"""Helpers shared by the training tests (imported by basename, as pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

MINI_BATCH = 16


def make_dataset(root: Path, dialogues: int, recall_exchanges: int = 5) -> Path:
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.synthetic import make_synthetic_corpus

    make_synthetic_corpus(root / "corpus", dialogues=dialogues, seed=0, recall_exchanges=recall_exchanges, workers=2)
    preprocess(PreprocessOptions(source="synthetic", input_dir=str(root / "corpus"), output=str(root / "processed"),
                                 mini_batch_size=MINI_BATCH, workers=2))
    return root / "processed"


def tiny_settings(data: Path, run: Path, **changes):
    """Settings of a short, exactly reproducible CPU run of the tiny preset on `data`."""
    from omnittt.train.settings import TrainSettings

    base = dict(preset="tiny", data=str(data), stage="none", run=str(run), ttt_mini_batch_size=MINI_BATCH,
                batch_size=2, tbptt_turns=2, lr=3e-3, warmup_steps=2, num_threads=1, progress=False,
                log_ttt_every=1, fp32_check_every=1)
    base.update(changes)
    return TrainSettings(**base)
