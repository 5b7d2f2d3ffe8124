"""`omnittt export`: the exported Hugging Face directory gives exactly the logits of the run's checkpoint (and of
the trained model in memory), with the tokenizer and feature-extractor settings the run used."""

from __future__ import annotations

import torch
from train_fixtures import tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.core.exchange_stream import ExchangeStream
from omnittt.train.loop import model_inputs
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
