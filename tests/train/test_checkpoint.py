"""Checkpoints: atomic commit order under injected crashes, no pickle, exact weights, pruning, non-finite refusal.
A tiny transformers Llama stands in as "a model with save_pretrained" (the loop's own tests use the speech model)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omnittt.train.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    SCHEDULER_FILE,
    NonFiniteWeightsError,
    load_model_weights,
    load_torch_state,
    read_trainer_state,
    save_checkpoint,
)
from omnittt.train.faults import FAULT_ENV, FAULT_EXIT_CODE
from omnittt.train.optim import build_optimizer, build_scheduler
from omnittt.train.run_dir import RunDir, resolve_checkpoint

TINY_LLAMA = textwrap.dedent("""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    def tiny_llama(seed=0):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg)
""")
namespace: dict = {}
exec(TINY_LLAMA, namespace)
tiny_llama = namespace["tiny_llama"]


def _trained(seed=0):
    model = tiny_llama(seed)
    opt = build_optimizer([{"name": "all", "params": list(model.parameters()), "lr": 1e-2}])
    sched = build_scheduler(opt, 2, 10, 0.1)
    for _ in range(2):
        loss = model(input_ids=torch.arange(8)[None], labels=torch.arange(8)[None]).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    model, opt, sched = _trained()
    run = RunDir(tmp_path / "run").create()
    run.write_config({"preset": "test"})
    path = save_checkpoint(run, 2, model, {"stage": "8k", "next_batch": 3}, opt, sched)
    assert run.latest_checkpoint() == path and resolve_checkpoint(run.path) == path
    assert read_trainer_state(path) == {"stage": "8k", "next_batch": 3, "step": 2}
    for name in (OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE):
        load_torch_state(path, name)  # weights_only=True: raises on any pickled object
    for pt in path.glob("*.pt"):
        torch.load(pt, weights_only=True)

    fresh = tiny_llama(seed=1)
    load_model_weights(fresh, path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()  # still tied

    opt2 = build_optimizer([{"name": "all", "params": list(fresh.parameters()), "lr": 1e-2}])
    opt2.load_state_dict(load_torch_state(path, OPTIMIZER_FILE))
    sched2 = build_scheduler(opt2, 2, 10, 0.1)
    sched2.load_state_dict(load_torch_state(path, SCHEDULER_FILE))
    assert sched2.get_last_lr() == sched.get_last_lr()
    state_a, state_b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(state_a[k]["exp_avg"], state_b[k]["exp_avg"]) for k in state_a)


def test_keeps_the_last_k(tmp_path):
    model, opt, sched = _trained()
    run = RunDir(tmp_path / "run")
    for step in (1, 2, 3, 4):
        save_checkpoint(run, step, model, {}, opt, sched, keep=2)
    assert [s for s, _ in run.list_checkpoints()] == [3, 4]
    assert run.latest_checkpoint().name == "step_4"


def test_non_finite_weights_are_never_written(tmp_path):
    model, opt, sched = _trained()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteWeightsError, match="up_proj"):
        save_checkpoint(run, 1, model, {}, opt, sched)
    assert run.list_checkpoints() == [] and run.latest_checkpoint() is None


@pytest.mark.parametrize("phase", [pytest.param("checkpoint:after_temp_write", marks=pytest.mark.slow),
                                   "checkpoint:after_rename",
                                   pytest.param("checkpoint:after_latest", marks=pytest.mark.slow)])
def test_crash_at_each_commit_phase_leaves_a_loadable_latest(tmp_path, phase):
    script = TINY_LLAMA + textwrap.dedent(f"""
        from omnittt.train.checkpoint import save_checkpoint
        from omnittt.train.run_dir import RunDir
        run = RunDir({str(tmp_path / 'run')!r})
        model = tiny_llama()
        save_checkpoint(run, 1, model, {{"tag": "first"}}, keep=1)
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        save_checkpoint(run, 2, model, {{"tag": "second"}}, keep=1)
    """)
    env = {**os.environ, FAULT_ENV: f"{phase}@2"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr
    run = RunDir(tmp_path / "run")
    committed = phase == "checkpoint:after_latest"
    latest = run.latest_checkpoint()
    assert latest.name == ("step_2" if committed else "step_1")
    assert read_trainer_state(latest)["tag"] == ("second" if committed else "first")
    load_model_weights(tiny_llama(), latest)
    leftovers = {p.name for p in run.checkpoints.iterdir()} - {"latest", latest.name}
    removed = {p.name for p in run.remove_stale()}
    assert removed == (leftovers - {"step_1"})  # temp folders and uncommitted step_2; a committed older one stays
    # training reaches the next save again: an uncommitted copy is replaced, not an error
    save_checkpoint(run, 3 if committed else 2, tiny_llama(), {"tag": "again"}, keep=1)
    assert read_trainer_state(run.latest_checkpoint())["tag"] == "again"
    assert [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".")] == []
