"""Never a silent no-op: the TTT cache carries across calls, a cache under a name the model does not read is an
error that names it, and training, validation, eval and chat stop with a clear error when a forward leaves the
cache where it was (as transformers 5.25's rename of `past_key_values` to `cache` once did without a word)."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import MINI_BATCH, tiny_settings

import omnittt.core.modeling_omnittt as modeling
from omnittt.core.exchange_stream import ExchangeStream
from omnittt.core.hf_compat import CACHE_ARG, output_cache
from omnittt.core.ttt_cache import StreamNotAdvancedError, TTTCache


@pytest.fixture(scope="module")
def model():
    from omnittt.core.presets import build_model

    torch.manual_seed(0)
    return build_model("tiny", ttt_mini_batch_size=MINI_BATCH).eval()


def _ids(length: int, seed: int) -> torch.Tensor:
    return torch.randint(10, 200, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_cache_carries_across_calls_under_the_current_and_the_old_name(model, name):
    first, second = _ids(21, 1), _ids(9, 2)
    with torch.no_grad():
        whole = model(input_ids=torch.cat([first, second], 1)).logits[:, 21:]
        cache = model.new_cache()
        out = model(input_ids=first, **{name: cache}, use_cache=True)
        assert output_cache(out) is cache
        assert cache.progress() == (21, 21, 21)  # the model, then each of the two TTT layers
        continued = model(input_ids=second, **{name: cache}).logits
        fresh = model(input_ids=second).logits
    assert (continued - whole).abs().max() < 1e-4
    assert (fresh - whole).abs().max() > 1e-2  # without the cache the second call starts over


def test_the_language_model_reads_the_name_of_the_installed_transformers(model):
    lm = model.language_model
    with torch.no_grad():
        cache = TTTCache(lm.config)
        lm(_ids(5, 3), **{CACHE_ARG: cache})
    assert cache.progress() == (5, 5, 5)


@pytest.mark.parametrize("name", ["past_key_value", "cache_params", "my_state"])
def test_a_cache_under_a_name_the_model_does_not_read_is_an_error_naming_it(model, name):
    with torch.no_grad(), pytest.raises(TypeError, match=f"'{name}'"):
        model(input_ids=_ids(5, 4), **{name: model.new_cache()})
    with torch.no_grad(), pytest.raises(TypeError, match=f"'{name}'"):
        model.language_model(_ids(5, 4), **{name: model.new_cache()})


def test_two_different_caches_are_refused(model):
    with torch.no_grad(), pytest.raises(TypeError, match="two different caches"):
        model(input_ids=_ids(5, 5), cache=model.new_cache(), past_key_values=model.new_cache())


@pytest.fixture
def cache_dropped(monkeypatch):
    """A dependency that stops honouring the cache argument: the model builds a fresh cache on every call."""
    monkeypatch.setattr(modeling, "take_cache", lambda *args, **kwargs: None)


def test_the_stream_guard_names_what_happened(model, cache_dropped):
    stream = ExchangeStream(model)
    with torch.no_grad(), pytest.raises(StreamNotAdvancedError, match="did not read its cache"):
        stream.feed_text(_ids(5, 6))


def test_training_and_validation_stop_when_the_cache_does_not_advance(synthetic_data, tmp_path, cache_dropped):
    from omnittt.train.loop import evaluate_loss
    from omnittt.train.setup import start_run

    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=1)).trainer
    with pytest.raises(StreamNotAdvancedError):
        trainer.fit()
    batches = list(trainer.loader)[:2]
    with pytest.raises(StreamNotAdvancedError):
        evaluate_loss(trainer.model, batches)


def test_eval_stops_when_the_cache_does_not_advance(synthetic_data, model, cache_dropped):
    from omnittt.core.features import build_feature_extractor
    from omnittt.data.dataset import ConversationDataset, ConversationLoader
    from omnittt.evaluation.scoring import runs_for, score_runs

    loader = ConversationLoader(ConversationDataset(synthetic_data), batch_size=2, shuffle=False,
                                feature_extractor=build_feature_extractor(80))
    with pytest.raises(StreamNotAdvancedError):
        score_runs(runs_for(model, "random", ("never",), None), loader)


def test_chat_stops_when_the_cache_does_not_advance(model, cache_dropped):
    from omnittt.chat import ChatSession
    from omnittt.core.tokenizer import build_default_tokenizer

    session = ChatSession(model, build_default_tokenizer())
    with pytest.raises(StreamNotAdvancedError):
        session.user_turn(text="hello there", max_new_tokens=3)
