"""Speech, used (slow tier): the tiny preset, its encoder trained and run on each turn's speech only, learns to
write the digits a user said (`repeat` dialogues), and does so for voices it never heard in training. Scored by
`omnittt eval`'s probe on the answer tokens against the speech-swap control (each turn gets another
conversation's speech of the same length), on held-out dialogues spoken by held-out voices.

Measured with this recipe (2-core CPU, docs/speech.md): hearing appears between steps 100 and 300 (swap gap on the
answer digits +0.004 at 100 steps, +0.19 at 150 with 400 dialogues, +5.5 at 300 and +9.6 at 1000 with 600
dialogues; exact match of all four digits 0% / 0% / 60% / 98%). 400 steps leave room for a later transition; the
threshold (1 nat) is far above what a model that ignores the speech gets (0 +- 0.01)."""

from __future__ import annotations

import pytest
from train_fixtures import MINI_BATCH, tiny_settings

from omnittt.data.synthetic import VOICES

pytestmark = pytest.mark.slow

HELD_OUT = ["en-us+m7", "en-gb+f5"]


def _repeat_data(root, name: str, dialogues: int, voices: list[str], seed: int):
    from omnittt.data.preprocess import PreprocessOptions, preprocess
    from omnittt.data.synthetic import make_synthetic_corpus

    make_synthetic_corpus(root / f"corpus_{name}", dialogues=dialogues, seed=seed, kinds=["repeat"], voices=voices,
                          workers=2)
    preprocess(PreprocessOptions(source="synthetic", input_dir=str(root / f"corpus_{name}"),
                                 output=str(root / name), mini_batch_size=MINI_BATCH, workers=2))
    return root / name


def _voices_in(corpus) -> set[str]:
    """The user (LLM1) voices a corpus was spoken with, read back from its metadata.tsv files."""
    found = set()
    for tsv in corpus.glob("data/*/*/metadata.tsv"):
        for row in tsv.read_text().splitlines()[1:]:
            cells = row.split("\t")
            if cells[2] == "LLM1":
                found.add(cells[4])
    return found


def test_the_model_writes_what_it_heard_from_unheard_voices(tmp_path_factory):
    from omnittt.evaluation.evaluate import EvalOptions, evaluate
    from omnittt.evaluation.statistics import StatOptions
    from omnittt.train.setup import start_run

    root = tmp_path_factory.mktemp("speech_use")
    train = _repeat_data(root, "train", 600, [v for v in VOICES if v not in HELD_OUT], seed=0)
    held_out = _repeat_data(root, "eval", 40, HELD_OUT, seed=1)
    assert not _voices_in(root / "corpus_train") & set(HELD_OUT)
    assert _voices_in(root / "corpus_eval") <= set(HELD_OUT)

    trainer = start_run(tiny_settings(train, root / "run", max_steps=400, save_every=400, batch_size=16,
                                      tbptt_turns=4, lr=3e-3, warmup_steps=10, min_lr_ratio=1.0, train="all",
                                      val_conversations=16, log_ttt_every=50, fp32_check_every=50)).trainer
    trainer.fit()
    report = evaluate(EvalOptions(run=str(root / "run"), data=str(held_out), stage="none", ttt_reset=("never",),
                                  batch_size=8, stats=StatOptions(bootstrap=200)))
    recall = report["recall"]
    own = recall["runs"][0]["by_task"][0]
    swap = next(g for g in recall["gaps"] if g["b"] == "model, speech swapped")["all"][0]
    print(f"repeat on held-out voices: exact match {own['exact_match']:.1%}, token accuracy "
          f"{own['token_accuracy']:.1%}, swap gap {swap['loss']:+.3f} {swap['ci']}")
    assert own["distance"] == "repeat" and own["dialogues"] >= 80  # 2-4 answers in each of the 40 dialogues
    assert swap["loss"] > 1.0 and swap["ci"][0] > 0.5
    assert own["token_accuracy"] > 0.5  # chance is 10% per digit
