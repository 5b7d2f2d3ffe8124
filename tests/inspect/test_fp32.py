"""FP32Enforcer and the numerical-health checks on a tiny converted Llama (real TTT layers and TTTCache)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from omnittt.errors import UserError
from omnittt.inspect.fp32 import FP32Enforcer, FP32Error, find_ttt_modules
from omnittt.inspect.health import NumericalError, check_model_health, check_numerical_health


def ttt_module(model, layer_idx):
    return model.model.layers[layer_idx].self_attn


def test_finds_every_ttt_layer_and_reports_a_clean_model_ok(tiny_ttt_model, ttt_turn):
    enforcer = FP32Enforcer(tiny_ttt_model)
    assert enforcer.layer_indices == list(tiny_ttt_model.config.ttt_layers)
    cache = ttt_turn(tiny_ttt_model)
    report = enforcer.verify(cache)
    assert report.ok, report.describe()
    assert report.parameters_checked == 6 * len(tiny_ttt_model.config.ttt_layers)
    assert report.states_checked == 4 * len(tiny_ttt_model.config.ttt_layers)


def test_a_model_without_ttt_layers_is_refused():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2)
    with pytest.raises(UserError, match="no TTT layers"):
        FP32Enforcer(LlamaForCausalLM(config))


def test_state_cast_to_bfloat16_is_reported_with_its_layer_and_fixed(tiny_ttt_model, ttt_turn):
    cache = ttt_turn(tiny_ttt_model)
    layer = tiny_ttt_model.config.ttt_layers[-1]
    state = cache.layers[layer].state
    original = state["W2"].clone()
    state["W2"] = state["W2"].to(torch.bfloat16)

    report = FP32Enforcer(tiny_ttt_model, auto_fix=False).verify(cache)
    assert not report.ok and report.bad_layers == [layer]
    (drift,) = report.drifts
    assert (drift.layer, drift.where, drift.name, drift.dtype, drift.fixed) == (layer, "state", "W2", "bfloat16",
                                                                               False)
    assert f"layer {layer} state W2 is bfloat16" in report.describe()
    assert cache.layers[layer].state["W2"].dtype == torch.bfloat16  # report only

    fixed = FP32Enforcer(tiny_ttt_model, auto_fix=True).verify(cache)
    assert [d.fixed for d in fixed.drifts] == [True]
    assert cache.layers[layer].state["W2"].dtype == torch.float32
    torch.testing.assert_close(cache.layers[layer].state["W2"], original, atol=0.02, rtol=0.01)  # bf16 rounding
    assert FP32Enforcer(tiny_ttt_model).verify(cache).ok


def test_parameter_drift_is_reported_and_fixed_and_a_bf16_model_cast_keeps_fp32(tiny_ttt_model):
    tiny_ttt_model.to(torch.bfloat16)  # the layers keep their inner state float32 under a cast
    assert tiny_ttt_model.lm_head.weight.dtype == torch.bfloat16
    assert FP32Enforcer(tiny_ttt_model).verify().ok
    layer = tiny_ttt_model.config.ttt_layers[0]
    module = ttt_module(tiny_ttt_model, layer)
    module.ttt_norm_weight.data = module.ttt_norm_weight.data.to(torch.bfloat16)  # what a careless loader does
    with pytest.raises(FP32Error, match=f"layer {layer} parameter ttt_norm_weight is bfloat16"):
        FP32Enforcer(tiny_ttt_model, auto_fix=False, strict=True).verify()
    report = FP32Enforcer(tiny_ttt_model).verify()
    assert [(d.layer, d.where, d.name, d.fixed) for d in report.drifts] == [(layer, "parameter",
                                                                               "ttt_norm_weight", True)]
    assert module.ttt_norm_weight.dtype == torch.float32


def test_hooks_fix_a_drifted_state_before_the_layer_reads_it(tiny_ttt_model, ttt_turn):
    cache = ttt_turn(tiny_ttt_model)
    layer = tiny_ttt_model.config.ttt_layers[0]
    cache.layers[layer].state = {k: v.to(torch.bfloat16) for k, v in cache.layers[layer].state.items()}
    with FP32Enforcer(tiny_ttt_model) as enforcer:
        ttt_turn(tiny_ttt_model, cache, seed=2)
    assert {(d.layer, d.where, d.fixed) for d in enforcer.history} == {(layer, "state", True)}
    assert {d.name for d in enforcer.history} == {"W1", "b1", "W2", "b2"}
    assert all(v.dtype == torch.float32 for v in cache.layers[layer].state.values())
    for _, module in find_ttt_modules(tiny_ttt_model):  # leaving the block removed the hooks
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_strict_hooks_stop_the_forward_when_not_fixing(tiny_ttt_model, ttt_turn):
    cache = ttt_turn(tiny_ttt_model)
    layer = tiny_ttt_model.config.ttt_layers[1]
    cache.layers[layer].state["W1"] = cache.layers[layer].state["W1"].to(torch.bfloat16)
    with FP32Enforcer(tiny_ttt_model, auto_fix=False, strict=True), pytest.raises(FP32Error, match=f"layer {layer}"):
        ttt_turn(tiny_ttt_model, cache, seed=2)


def test_nan_in_a_state_is_reported_with_its_layer(tiny_ttt_model, ttt_turn):
    cache = ttt_turn(tiny_ttt_model)
    first, second = tiny_ttt_model.config.ttt_layers
    poisoned = cache.layers[second].state["W1"].clone()
    poisoned[1, 0, 3, 5] = float("nan")
    poisoned[0, 2, 0, 0] = float("inf")
    cache.layers[second].state["W1"] = poisoned
    report = check_model_health(tiny_ttt_model, cache)
    assert not report.ok
    (issue,) = report.issues
    assert (issue.kind, issue.layer, issue.nan_count, issue.inf_count) == ("state", second, 1, 1)
    assert f"layer {second} W1" in report.describe()
    with pytest.raises(NumericalError, match=f"layer {second} W1"):
        report.raise_if_unhealthy()
    assert check_model_health(tiny_ttt_model, cache=None).ok


def test_model_health_names_non_finite_parameters_and_gradients(tiny_ttt_model):
    ids = torch.randint(0, 128, (1, 32))
    tiny_ttt_model.train()
    tiny_ttt_model(input_ids=ids, labels=ids).loss.backward()
    assert check_model_health(tiny_ttt_model).ok
    module = ttt_module(tiny_ttt_model, tiny_ttt_model.config.ttt_layers[0])
    module.W1.grad[0, 0, 0] = float("inf")
    with torch.no_grad():
        tiny_ttt_model.lm_head.weight[3, 3] = float("nan")
    report = check_model_health(tiny_ttt_model)
    found = {(i.kind, i.name, i.nan_count, i.inf_count) for i in report.issues}
    layer = tiny_ttt_model.config.ttt_layers[0]
    assert found == {("parameter", "lm_head.weight", 1, 0), ("gradient", f"model.layers.{layer}.self_attn.W1", 0, 1)}
    assert {i.kind for i in check_model_health(tiny_ttt_model, gradients=False).issues} == {"parameter"}


def test_check_numerical_health_counts_and_raises_with_the_name():
    clean = check_numerical_health(torch.tensor([1.0, -3.0, 2.0]), "x")
    assert clean.finite and clean.max_abs == 3.0 and not clean.is_exploding
    bad = torch.tensor([1.0, float("nan"), float("inf"), -2e5, float("nan")])
    health = check_numerical_health(bad, "layer 2 W2")
    assert (health.nan_count, health.inf_count, health.max_abs, health.is_exploding) == (2, 1, 2e5, True)
    assert "2 NaN" in health.describe() and "1 Inf" in health.describe()
    with pytest.raises(NumericalError, match="layer 2 W2"):
        check_numerical_health(bad, "layer 2 W2", raise_on_nan=True)
    check_numerical_health(torch.tensor([float("inf")]), "y", raise_on_nan=True)  # Inf alone: not asked to raise
    assert check_numerical_health(torch.tensor([1.0], dtype=torch.bfloat16), "z").dtype == "bfloat16"


def test_float64_precision_runs_are_left_alone(tiny_ttt_model, ttt_turn):
    model = tiny_ttt_model.double()
    cache = ttt_turn(model)
    layer = model.config.ttt_layers[0]
    assert cache.layers[layer].state["W1"].dtype == torch.float64
    report = FP32Enforcer(model).verify(cache)
    assert report.ok, report.describe()
    assert cache.layers[layer].state["W1"].dtype == torch.float64
    assert ttt_module(model, layer).W1.dtype == torch.float64
