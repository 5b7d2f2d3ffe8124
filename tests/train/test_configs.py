"""Every file in configs/ resolves to TrainSettings; the tiny one trains a step with its own settings (data and run
directory pointed at test folders, whole conversations); slow tier: the 8B ones build on meta with the summary
asserted, and every other config runs a step on the tiny preset with its non-model settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import MINI_BATCH

from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.settings import TrainSettings
from omnittt.train.setup import start_run

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    """The file becomes a TrainSettings that holds every key exactly as written (nothing dropped, renamed or
    defaulted over), names a known preset and curriculum stage, and survives config.yaml's round trip."""
    import yaml

    from omnittt.core.presets import PRESETS
    from omnittt.data.curriculum import stage_names
    from omnittt.train.setup import NO_STAGE

    raw = yaml.safe_load(path.read_text())
    settings = TrainSettings.load_yaml(path)
    assert type(settings) is TrainSettings
    settings.require_model()
    assert raw and set(raw) <= set(settings.to_dict())
    for key, value in raw.items():
        assert settings.to_dict()[key] == value, key
    assert settings.model is not None or settings.preset in PRESETS
    assert settings.stage in [*stage_names(), NO_STAGE]
    assert TrainSettings.from_dict(settings.to_dict()) == settings


def test_tiny_config_trains_a_step(synthetic_data, tmp_path):
    settings = TrainSettings.load_yaml(CONFIGS[[p.name for p in CONFIGS].index("tiny.yaml")])
    assert settings.ttt_mini_batch_size == MINI_BATCH
    settings = settings.with_overrides({"data": str(synthetic_data), "run": str(tmp_path / "run"), "stage": "none",
                                        "max_steps": 1, "progress": False})
    start_run(settings).trainer.fit()
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") is None]
    assert steps == [1]


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("llama-omni-8b")], ids=lambda p: p.name)
def test_8b_config_builds_on_meta_with_its_summary(path):
    from omnittt.config import model_overrides
    from omnittt.core.presets import build_model, model_summary

    settings = TrainSettings.load_yaml(path)
    model = build_model(settings.preset, device="meta", **model_overrides(settings))
    summary = model_summary(model)
    assert summary["ttt_layers"] == settings.ttt_layers == list(range(24, 32))
    assert summary["num_layers"] == 32 and summary["num_key_value_heads"] == 8
    assert summary["ttt_mini_batch_size"] == settings.ttt_mini_batch_size


NON_MODEL_TEST_OVERRIDES = {"stage": "none", "max_steps": 1, "progress": False, "mixed_precision": "no",
                            "ttt_mini_batch_size": MINI_BATCH, "batch_size": 1}


@pytest.fixture(scope="module")
def audio_index(tmp_path_factory) -> Path:
    """A few seconds of generated long-form audio, indexed: the data of the audio pre-training configs."""
    from omnittt.data.longform import make_longform_corpus
    from omnittt.data.sources.librilight import build_index

    root = tmp_path_factory.mktemp("configs_audio")
    make_longform_corpus(root / "corpus", speakers=1, books_per_speaker=1, recordings_per_book=1, seconds=6,
                         layout="raw")
    build_index(root / "corpus" / "small", root / "index", settings={"mini_batch_size": MINI_BATCH,
                                                                      "segment_sec": 3.0})
    return root / "index"


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "tiny.yaml"], ids=lambda p: p.name)
def test_other_configs_run_a_step_on_tiny(path, synthetic_data, audio_index, tmp_path):
    """The config's non-model settings (groups, TBPTT, accumulation, checkpointing, schedule, transfer flags) on the
    tiny preset and the test data (an audio index for the audio objective); a fine-tune config starts from a tiny
    checkpoint made here."""
    settings = TrainSettings.load_yaml(path)
    data = audio_index if settings.objective == "audio" else synthetic_data
    changes = {**NON_MODEL_TEST_OVERRIDES, "preset": "tiny", "data": str(data), "run": str(tmp_path / "run")}
    if settings.resume_from:
        source = TrainSettings(preset="tiny", data=str(synthetic_data), run=str(tmp_path / "source"),
                               **NON_MODEL_TEST_OVERRIDES)
        start_run(source).trainer.fit()
        changes["resume_from"] = str(tmp_path / "source")
    settings = settings.with_overrides(changes)
    settings.ttt_layers = None  # the tiny preset's own TTT layers
    start_run(settings).trainer.fit()
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("event") is None]
    assert steps == [1]
