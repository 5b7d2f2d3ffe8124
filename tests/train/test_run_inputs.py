"""Bad inputs on the run side (issue #19 item 6): `omnittt resume` of a missing path or a folder that is not a run,
`latest` naming an incomplete checkpoint, truncated weights, a corrupt trainer state, an optimizer file holding a
pickle payload (never executed), weights of another model, a dataset made for another tokenizer / vocabulary /
speech-positions setting (train and resume), and `omnittt export` without its checkpoint or tokenizer. Each is one
red line naming the file and the reason, exit 2, no traceback, and nothing in the run (or the export target) is
changed."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from train_fixtures import MINI_BATCH, tiny_settings
from typer.testing import CliRunner

from omnittt.cli import app
from omnittt.errors import UserError

runner = CliRunner()
ENV = {"COLUMNS": "200"}


# -- fixtures and helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template_run(synthetic_data, tmp_path_factory) -> Path:
    """A finished 2-step run of the tiny preset; each test works on its own copy."""
    from omnittt.train.setup import start_run

    run = tmp_path_factory.mktemp("inputs") / "run"
    start_run(tiny_settings(synthetic_data, run, max_steps=2, save_every=1)).trainer.fit()
    return run


@pytest.fixture
def run(template_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(template_run, copy)
    return copy


def checkpoint_of(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line (with the fix on it) holding every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit | None), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Fix:" in errors[0]
    return errors[0]


def assert_resume_refused(run: Path, *fragments: str) -> str:
    before = snapshot(run)
    line = assert_one_line_error(invoke("resume", run), *fragments)
    assert snapshot(run) == before  # nothing written, removed or overwritten
    return line


class Payload:
    """Unpickling it creates `marker` (open(marker, "w")): proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# -- resume: the path -------------------------------------------------------------------------------------------
def test_resume_of_a_missing_path(tmp_path):
    assert_one_line_error(invoke("resume", tmp_path / "nowhere"), str(tmp_path / "nowhere"), "no such run directory")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("content", ["empty", "files", "config only"])
def test_resume_of_a_folder_that_is_not_a_run(tmp_path, content):
    folder = tmp_path / "folder"
    folder.mkdir()
    if content == "files":
        (folder / "notes.txt").write_text("not a run")
    elif content == "config only":
        (folder / "config.yaml").write_text("settings: {}\n")
    before = snapshot(folder)
    assert_one_line_error(invoke("resume", folder), str(folder), "not a run directory")
    assert snapshot(folder) == before


def test_resume_of_a_run_without_any_checkpoint(run):
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    assert_resume_refused(run, str(run), "no complete checkpoint")


# -- resume: the checkpoint `latest` names ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["no trainer_state.json", "folder missing", "not a step folder"])
def test_latest_naming_an_incomplete_checkpoint(run, how):
    checkpoint = checkpoint_of(run)
    if how == "no trainer_state.json":  # a copy that stopped before the file written last
        (checkpoint / "trainer_state.json").unlink()
        named = checkpoint.name
    elif how == "folder missing":
        named = "step_99"
        (run / "checkpoints" / "latest").write_text(named + "\n")
    else:
        named = "../config.yaml"
        (run / "checkpoints" / "latest").write_text(named + "\n")
    assert_resume_refused(run, str(run / "checkpoints" / "latest"), repr(named), "not a complete checkpoint")


def test_latest_checkpoint_without_weights(run):
    (checkpoint_of(run) / "model.safetensors").unlink()
    assert_resume_refused(run, str(checkpoint_of(run)), "no model.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_truncated_weights(run, keep):
    weights = checkpoint_of(run) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    assert_resume_refused(run, str(weights), "truncated or corrupt")


@pytest.mark.parametrize("text", ['{"step": 2, "loa', "", "[1, 2]", '{"step": "two"}', '{"tokens": 3}'])
def test_corrupt_trainer_state(run, text):
    path = checkpoint_of(run) / "trainer_state.json"
    path.write_text(text)
    line = assert_resume_refused(run, str(path))
    assert "corrupt" in line or "not a trainer state" in line


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pt"])
def test_truncated_or_missing_state_files(run, name):
    path = checkpoint_of(run) / name
    path.write_bytes(path.read_bytes()[:100])
    assert_resume_refused(run, str(path), "truncated or corrupt")
    path.unlink()
    assert_resume_refused(run, str(path), "missing")


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_optimizer_file_with_a_pickle_payload_is_refused_and_never_executed(run, tmp_path, container):
    # the payload is live: plain unpickling creates its marker file
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof), protocol=2)).close()
    assert proof.exists()

    marker = tmp_path / "marker"
    optimizer = checkpoint_of(run) / "optimizer.pt"
    if container == "pickle":
        optimizer.write_bytes(pickle.dumps({"state": {}, "param_groups": Payload(marker)}, protocol=2))
    else:  # the zip archive torch.save writes, the payload inside its data.pkl
        torch.save({"state": {}, "param_groups": Payload(marker)}, optimizer)
    assert_resume_refused(run, str(optimizer), "refused")
    assert not marker.exists()

    # the library path (no CLI pre-check) refuses it as well, before anything is written
    from omnittt.train.setup import resume_run

    before = snapshot(run)
    with pytest.raises(UserError, match="optimizer.pt: holds something other than tensors"):
        resume_run(str(run))
    assert not marker.exists()
    assert snapshot(run) == before


@pytest.mark.parametrize("other", [{}, {"ttt_mini_batch_size": MINI_BATCH, "ttt_layers": [1, 2, 3]},
                                   {"ttt_mini_batch_size": MINI_BATCH, "ttt_type": "linear"}],
                         ids=["another-mini-batch", "more-ttt-layers", "ttt-linear"])
def test_weights_of_another_model(run, tmp_path, other):
    """The weights file of another configuration of the preset (its default b=64: other shapes; more TTT layers:
    unexpected tensors; TTT-Linear: missing ones) beside this run's config.json."""
    from omnittt.core.presets import build_model

    build_model("tiny", **other).save_pretrained(tmp_path / "other")
    weights = checkpoint_of(run) / "model.safetensors"
    shutil.copy(tmp_path / "other" / "model.safetensors", weights)
    assert_resume_refused(run, str(weights), "do not match the model config.json describes")


# -- datasets made for another model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_datasets(synthetic_data, tmp_path_factory) -> dict[str, Path]:
    """The fixture's corpus preprocessed for another tokenizer (same vocabulary size, other merges), a larger
    vocabulary (the default tokenizer plus 100 tokens) and `full` speech positions."""
    from omnittt.core.tokenizer import build_default_tokenizer
    from omnittt.data.preprocess import PreprocessOptions, preprocess

    root = tmp_path_factory.mktemp("other_data")
    tokenizers = {"tokenizer": build_default_tokenizer(vocab_size=600), "vocabulary": build_default_tokenizer()}
    tokenizers["vocabulary"].add_tokens([f"<extra_{i}>" for i in range(100)])
    made = {}
    for name, options in (("tokenizer", {}), ("vocabulary", {}), ("speech positions", {"speech_positions": "full"})):
        if name in tokenizers:
            tokenizers[name].save_pretrained(root / f"{name}-tokenizer")
            options = {"tokenizer": str(root / f"{name}-tokenizer")}
        made[name] = root / name.replace(" ", "-")
        preprocess(PreprocessOptions(source="synthetic", input_dir=str(synthetic_data.parent / "corpus"),
                                     output=str(made[name]), mini_batch_size=MINI_BATCH, workers=1, **options))
    return made


EXPECTED = {"tokenizer": "made with tokenizer", "vocabulary": "made with tokenizer",
            "speech positions": "speech positions 'full', the model uses 'trim'"}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_train_on_a_dataset_made_for_another_model(other_datasets, tmp_path, kind):
    data = other_datasets[kind]
    before = snapshot(data)
    result = invoke("train", "--preset", "tiny", "--data", data, "--run", tmp_path / "run", "--stage", "none",
                    "--ttt-mini-batch-size", MINI_BATCH, "--max-steps", 1)
    assert_one_line_error(result, str(data), EXPECTED[kind], "omnittt preprocess")
    assert not (tmp_path / "run").exists() and snapshot(data) == before


def test_train_a_model_without_tokenizer_on_a_larger_vocabulary(other_datasets, tmp_path):
    """A model directory with no tokenizer beside it is checked by vocabulary size."""
    from omnittt.core.presets import build_model
    from omnittt.core.tokenizer import build_default_tokenizer

    build_model("tiny", ttt_mini_batch_size=MINI_BATCH).save_pretrained(tmp_path / "model")
    data = other_datasets["vocabulary"]
    result = invoke("train", "--model", tmp_path / "model", "--data", data, "--run", tmp_path / "run", "--stage",
                    "none", "--max-steps", 1)
    assert_one_line_error(result, str(data), f"tokenizer of {len(build_default_tokenizer()) + 100} tokens",
                          f"vocabulary has {len(build_default_tokenizer())}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_resume_on_a_dataset_made_for_another_model(run, other_datasets, kind):
    data = other_datasets[kind]
    before = snapshot(run)
    result = invoke("resume", run, "--set", f"data={data}")
    assert_one_line_error(result, str(data), EXPECTED[kind])
    assert snapshot(run) == before


# -- export ---------------------------------------------------------------------------------------------------
@pytest.fixture
def target(tmp_path) -> Path:
    """An existing export target: --overwrite must leave it alone when the export is refused."""
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "keep.txt").write_text("the previous export")
    return folder


@pytest.mark.parametrize("where", ["missing run", "missing step", "step folder gone"])
def test_export_with_a_missing_checkpoint(run, target, where):
    before = snapshot(target)
    if where == "missing run":
        result = invoke("export", run.parent / "nowhere", "--to", target, "--overwrite")
        assert_one_line_error(result, str(run.parent / "nowhere"), "no such")
    elif where == "missing step":
        result = invoke("export", run, "--to", target, "--checkpoint", "7", "--overwrite")
        assert_one_line_error(result, str(run), "no checkpoint step_7")
    else:
        shutil.rmtree(checkpoint_of(run))
        result = invoke("export", run, "--to", target, "--overwrite")
        assert_one_line_error(result, "latest", "not a complete checkpoint")
    assert snapshot(target) == before


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"])
def test_export_with_a_missing_tokenizer(run, target, missing):
    checkpoint = checkpoint_of(run)
    (checkpoint / missing).unlink()
    before = snapshot(target)
    result = invoke("export", run, "--to", target, "--overwrite")
    assert_one_line_error(result, str(checkpoint), f"no {missing}")
    assert snapshot(target) == before  # --overwrite removed nothing


def test_export_with_truncated_weights(run, target):
    weights = checkpoint_of(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    before = snapshot(target)
    assert_one_line_error(invoke("export", run, "--to", target, "--overwrite"), str(weights), "truncated or corrupt")
    assert snapshot(target) == before


def test_the_untouched_run_resumes_and_exports(run, tmp_path):
    """The copies above fail only for what was done to them: the run itself passes every check."""
    result = invoke("resume", run, "--max-steps", 3)
    assert result.exit_code == 0, result.output
    result = invoke("export", run, "--to", tmp_path / "exported")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exported" / "model.safetensors").is_file()
