"""`omnittt export`: the exported Hugging Face directory gives exactly the logits of the run's checkpoint (and of
the trained model in memory), with the tokenizer and feature-extractor settings the run used; it loads with
`AutoModelForCausalLM.from_pretrained` after `import omnittt` (in a fresh process, whatever the import order), and
its model card states the TTT settings, stages and eval figures of the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from train_fixtures import tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.core.exchange_stream import ExchangeStream, model_inputs
from omnittt.train.setup import start_run


def _logits(model, steps):
    model.eval()
    stream = ExchangeStream(model)
    with torch.no_grad():
        return [stream.exchange(model_inputs(step, torch.device("cpu")), step["turn_number"]).logits
                for step in steps]


def test_export_round_trip_gives_the_checkpoints_logits(synthetic_data, tmp_path):
    from transformers import WhisperFeatureExtractor

    from omnittt.core.loading import load_model
    from omnittt.core.modeling_omnittt import OmniTTTForCausalLM
    from omnittt.core.tokenizer import load_tokenizer, tokenizer_fingerprint

    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=2, save_every=1)).trainer
    trainer.fit()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    exported = OmniTTTForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    from_checkpoint = load_model(trainer.last_checkpoint).model
    trainer.loader.next_batch = 0
    batch = next(iter(trainer.loader))
    steps = [batch[k] for k in range(min(2, len(batch)))]
    for a, b, c in zip(_logits(exported, steps), _logits(from_checkpoint, steps),
                       _logits(trainer.accelerator.unwrap_model(trainer.model), steps), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "hf")) == trainer.run.read_config()["dataset"][
        "tokenizer_fingerprint"]
    fe = WhisperFeatureExtractor.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert fe.feature_size == exported.config.speech_config.num_mel_bins
    assert (tmp_path / "hf" / "training_config.yaml").is_file()
    assert not list((tmp_path / "hf").glob("*.pt"))  # no optimizer / RNG state in an export

    again = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (the registration path a user gets), one thread, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "warning"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=300)


AUTO_LOAD = """
    import sys

    import torch
    torch.set_num_threads(1)
    import omnittt  # noqa: F401  (registers the omnittt model type, the way the model card says)
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForCausalLM, AutoTokenizer

    path, inputs, out = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    assert type(model).__name__ == "OmniTTTForCausalLM", type(model)
    assert type(AutoConfig.from_pretrained(path)).__name__ == "OmniTTTConfig"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.pad_token_id == model.config.text_config.pad_token_id
    assert AutoFeatureExtractor.from_pretrained(path).feature_size == model.config.speech_config.num_mel_bins
    with torch.no_grad():
        logits = model(**load_file(inputs), use_cache=False).logits
    save_file({"logits": logits.contiguous()}, out)
"""

EVAL_REPORT = {
    "model": "runs/tiny/checkpoints/step_2", "step": 2, "data": "processed", "stage": "none", "conversations": 9,
    "exchanges": 37, "positions": 2560, "vocab_size": 873, "uniform_loss": 6.7719,
    "statistics": {"interval": "percentile bootstrap", "confidence": 0.95},
    "buckets": ["0-1k", "1k-2k"],
    "runs": [{"name": "model", "overall": {"loss": 6.5432, "ci": [6.5, 6.6], "tokens": 515},
              "buckets": [{"loss": 6.5, "ci": [6.4, 6.6], "tokens": 400}, {"loss": None, "tokens": 115}]}],
    "comparisons": [],
}


def _card_table(card: str, section: str) -> dict[str, str]:
    body = card.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^\| ([^|]+) \| ([^|]+) \|$", body, re.M)}


def test_export_loads_with_auto_model_after_import_omnittt(synthetic_data, tmp_path):
    """A fresh process that does `import omnittt` then `AutoModelForCausalLM.from_pretrained(export)` gets the
    logits of the run's own model bit for bit; the model card's TTT settings are the exported config's."""
    from safetensors.torch import load_file, save_file

    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=2, save_every=1)).trainer
    trainer.fit()
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_REPORT))
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf"),
                                      "--eval", str(tmp_path / "eval.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    trainer.loader.next_batch = 0
    step = next(iter(trainer.loader))[0]
    inputs = {k: v.contiguous() for k, v in model_inputs(step, torch.device("cpu")).items() if k != "labels"}
    assert (inputs["input_ids"] == -200).any()  # speech goes through the encoder and projector too
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    with torch.no_grad():
        expected = model(**inputs, use_cache=False).logits

    run = _python(AUTO_LOAD, str(tmp_path / "hf"), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "to instantiate a model of type" not in run.stderr  # the tokenizer's model-type warning is gone too
    assert torch.equal(load_file(str(tmp_path / "out"))["logits"], expected)

    card = (tmp_path / "hf" / "README.md").read_text()
    text = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
    ttt = _card_table(card, "Test-Time Training")
    assert ttt["TTT layers"] == f"{', '.join(map(str, text['ttt_layers']))} of {text['num_hidden_layers']}"
    assert text["ttt_layers"]  # the tiny preset has TTT layers, so the row above says something
    assert ttt["type"] == f"`{text['ttt_type']}`" and ttt["mode"] == f"`{text['ttt_mode']}`"
    assert ttt["mini-batch size"] == str(text["ttt_mini_batch_size"]) == "16"
    assert ttt["base learning rate"] == "0.1"  # None in the config: the MLP layer's default
    assert ttt["attention window"].startswith("none")
    assert "AutoModelForCausalLM.from_pretrained" in card and "import omnittt" in card
    assert _card_table(card, "Model")["base model"] == "the `tiny` preset of omnittt, random initialisation"
    assert f"| none | whole conversations | `{synthetic_data.resolve()}`" in card and "| 0-2 | 0.003 |" in card
    assert "| 0-1k | 400 | 6.500 [6.400, 6.600] |" in card and "| all | 515 | 6.543 [6.500, 6.600] |" in card


def test_export_without_eval_report_says_so_and_a_bad_one_is_refused(synthetic_data, tmp_path):
    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=1, save_every=1)).trainer
    trainer.fit()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "No `omnittt eval` report was given" in (tmp_path / "hf" / "README.md").read_text()
    (tmp_path / "bad.json").write_text("{")
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "hf2"),
                                   "--eval", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "not a JSON eval report" in bad.output and not (tmp_path / "hf2").exists()


REGISTRATION = """
    import sys

    order = sys.argv[1]
    if order == "omnittt first":
        import omnittt  # noqa: F401
        assert "transformers" not in sys.modules and "torch" not in sys.modules
        from transformers import AutoModelForCausalLM
    elif order == "transformers first":
        from transformers import AutoModelForCausalLM
        import omnittt  # noqa: F401
    elif order == "bare transformers first":  # transformers imported, its Auto classes not yet
        import transformers
        import omnittt  # noqa: F401
        assert "transformers.models.auto" not in sys.modules and "torch" not in sys.modules
        from transformers import AutoModelForCausalLM
    elif order == "inside a transformers import":  # `from transformers import LlamaConfig` loads the Auto classes
        import omnittt  # noqa: F401
        from transformers import LlamaConfig  # noqa: F401
        from transformers import AutoModelForCausalLM
    elif order == "through omnittt's model":  # transformers first imported from inside a half-imported omnittt module
        import omnittt.core.modeling_omnittt as modeling
        from transformers import AutoModelForCausalLM
        assert type(modeling.__spec__.loader).__name__ == "SourceFileLoader"  # the hook's wrapper is gone
    from omnittt import _hf_registration
    assert _hf_registration.is_registered()
    _hf_registration._registered = False
    _hf_registration.register()  # registering twice is harmless
    model = AutoModelForCausalLM.from_pretrained(sys.argv[2], local_files_only=True)
    assert type(model).__name__ == "OmniTTTForCausalLM", type(model)
"""


@pytest.mark.parametrize("order", ["omnittt first", "transformers first", "bare transformers first",
                                   "inside a transformers import", "through omnittt's model"])
def test_registration_happens_in_every_import_order(order, tmp_path):
    from omnittt.core.presets import build_model

    build_model("tiny").save_pretrained(tmp_path / "model")
    run = _python(REGISTRATION, order, str(tmp_path / "model"))
    assert run.returncode == 0, run.stderr
    assert "could not register" not in run.stderr  # registered at the first try, not by a retry after a failure


def test_model_card_lists_the_curriculum_stages_the_checkpoint_went_through(tmp_path):
    """A chained run keeps the earlier stage's configuration as config.<stage>.yaml; the card lists the stages up to
    the exported checkpoint's, with their step ranges."""
    import yaml

    from omnittt.train.export import _stage_configs, _training_section
    from omnittt.train.run_dir import RunDir

    def config(stage: str, low: int, high: int, lr: float, total: int) -> dict:
        return {"settings": {"data": f"data-{stage}", "run": str(tmp_path), "train": "ttt"},
                "dataset": {"source": "synthetic", "tokenizer_name": "omnittt-bpe"},
                "stage": {"name": stage, "min_positions": low, "max_positions": high, "learning_rate": lr},
                "conversations": {"train": 7, "validation": 1}, "total_steps": total, "learning_rate": lr,
                "model_source": "preset:tiny"}

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.8k.yaml").write_text(yaml.safe_dump(config("8k", 4096, 8192, 1e-4, 3)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config("16k", 8192, 16384, 7e-5, 9)))
    run = RunDir(tmp_path)
    rows = [line for line in _training_section(_stage_configs(run, {"stage": "16k", "step": 5}), {"step": 5})
            if line.startswith("| 8k") or line.startswith("| 16k")]
    assert rows == ["| 8k | 4,096-8,192 | `data-8k` (synthetic, tokenizer omnittt-bpe) | 7 / 1 | 0-3 | 0.0001 |",
                    "| 16k | 8,192-16,384 | `data-16k` (synthetic, tokenizer omnittt-bpe) | 7 / 1 | 3-5 | 7e-05 |"]
    earlier = _stage_configs(run, {"stage": "8k", "step": 3})  # a checkpoint of the first stage
    assert [c["stage"]["name"] for c in earlier] == ["8k"]
