"""The conversation-level state lifecycle on the real tiny speech model and real batches: exchange 0 starts from
the learned init, later exchanges carry, rows never share state, gradients cross exchanges inside a TBPTT window
and never across windows."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import MINI_BATCH

from omnittt.core.exchange_stream import ExchangeStream, model_inputs
from omnittt.inspect.fp32 import find_ttt_modules


@pytest.fixture(scope="module")
def parts(synthetic_data):
    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import build_model
    from omnittt.data.dataset import ConversationDataset, ConversationLoader

    torch.manual_seed(0)
    model = build_model("tiny", ttt_mini_batch_size=MINI_BATCH)
    dataset = ConversationDataset(synthetic_data)
    fe = build_feature_extractor(model.config.speech_config.num_mel_bins)
    loader = ConversationLoader(dataset, batch_size=2, shuffle=False, feature_extractor=fe)
    single = ConversationLoader(dataset, batch_size=1, shuffle=False, feature_extractor=fe)
    batch = next(iter(loader))
    steps = [batch[k] for k in range(min(3, len(batch)))]
    wanted = set(steps[0]["conversation_ids"])
    by_id = {b.conversation_ids[0]: [b[k] for k in range(min(3, len(b)))] for b in single
             if b.conversation_ids[0] in wanted}
    return model, steps, by_id


def _run(model, steps, cache=None):
    stream = ExchangeStream(model)
    if cache is not None:
        stream.cache = cache
    outs = [stream.exchange(model_inputs(step, torch.device("cpu")), step["turn_number"]) for step in steps]
    return outs, stream.cache


def _ttt_layer(cache):
    return next(iter(cache.ttt_layers()))


def test_exchange_zero_starts_from_the_learned_init_and_later_exchanges_carry(parts):
    model, steps, _ = parts
    layer_idx, module = None, None
    for _, module in find_ttt_modules(model):
        layer_idx = module.layer_idx
        break
    with torch.no_grad():
        first, cache = _run(model, steps[:1])
        state0 = {k: v.clone() for k, v in cache.layers[layer_idx].state.items()}
        init = module.W1.detach()
        assert not torch.allclose(state0["W1"], init.expand_as(state0["W1"])), "exchange 0 did not update the state"
        second, cache = _run(model, steps[1:2], cache)
        assert not torch.allclose(cache.layers[layer_idx].state["W1"], state0["W1"]), "state did not carry"
        # the same exchange 1 from a fresh state gives other outputs: the carried state matters
        fresh, _ = _run(model, steps[1:2])
        assert not torch.allclose(second[0].logits, fresh[0].logits, atol=1e-4)
        # a new conversation in the same cache (turn 0 -> reset) equals a brand-new cache: back to the learned init
        again, _ = _run(model, steps[:1], cache)
        torch.testing.assert_close(again[0].logits, first[0].logits, rtol=1e-5, atol=1e-5)


def test_two_conversations_never_share_state(parts):
    model, steps, by_id = parts
    with torch.no_grad():
        batched, _ = _run(model, steps)
        for row, conv_id in enumerate(steps[0]["conversation_ids"]):
            alone, _ = _run(model, by_id[conv_id][: len(steps)])
            for k, (b, a) in enumerate(zip(batched, alone, strict=False)):
                if int(steps[k]["turn_number"][row]) < 0:
                    continue
                n = a.logits.shape[1]  # rows are right-padded: this row's positions come first in the batch
                torch.testing.assert_close(b.logits[row, :n], a.logits[0], rtol=1e-4, atol=1e-4)


def test_gradient_reaches_the_learned_init_within_a_window_and_not_across(parts):
    model, steps, _ = parts
    params = [m.W1 for _, m in find_ttt_modules(model)]

    def init_grad(detach_between: bool) -> float:
        model.zero_grad(set_to_none=True)
        outs, cache = _run(model, steps[:1])
        if detach_between:
            cache.detach()
        late, _ = _run(model, steps[1:2], cache)
        late[0].loss.backward()
        return sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in params)

    assert init_grad(detach_between=False) > 0.0  # exchange 1's loss reaches W1 through exchange 0's updates
    assert init_grad(detach_between=True) == 0.0  # a window boundary cuts it
    model.zero_grad(set_to_none=True)


def _trainer_init_grads(synthetic_data, run, **changes):
    """W1-init gradients after the trainer runs every window of its first batch (no optimizer step), and that
    batch's first exchange, with the trainer."""
    from train_fixtures import tiny_settings

    from omnittt.train.setup import start_run

    trainer = start_run(tiny_settings(synthetic_data, run, max_steps=1, gradient_accumulation=1000,
                                      **changes)).trainer
    batch = next(iter(trainer.loader))
    assert len(batch) >= 2
    trainer.train_batch(batch)
    assert trainer.step == 0 and trainer.state.windows >= 2
    model = trainer.accelerator.unwrap_model(trainer.model)
    grads = {m.layer_idx: m.W1.grad.clone() for _, m in find_ttt_modules(model)}
    return grads, trainer, model, batch[0]


def test_trainer_windows_cut_gradients_and_checkpointing_keeps_the_state(synthetic_data, tmp_path):
    one, trainer, model, first = _trainer_init_grads(synthetic_data, tmp_path / "k1", tbptt_turns=1)
    # with one exchange per window, later windows add nothing to the init's gradient: it is exchange 0's alone
    model.zero_grad(set_to_none=True)
    out = model(**model_inputs(first, torch.device("cpu")), use_cache=True)
    (out.loss / 1000).backward()
    for _, module in find_ttt_modules(model):
        torch.testing.assert_close(one[module.layer_idx], module.W1.grad, rtol=1e-5, atol=1e-12)

    two, *_ = _trainer_init_grads(synthetic_data, tmp_path / "k2", tbptt_turns=2)
    assert any(not torch.allclose(one[i], two[i], rtol=1e-3, atol=1e-9) for i in one)  # exchange 1 reaches it
    # our gradient checkpointing recomputes the layers with the cache passed through: same gradients, so the
    # state still carries across exchanges inside the window
    ckpt, _, ckpt_model, _ = _trainer_init_grads(synthetic_data, tmp_path / "k2c", tbptt_turns=2,
                                                 gradient_checkpointing=True)
    assert ckpt_model.language_model.model.ttt_checkpointing
    for i in two:
        torch.testing.assert_close(ckpt[i], two[i], rtol=1e-4, atol=1e-9)
