"""bf16 mixed precision: the model's matmuls run in bfloat16 under the trainer's autocast while the TTT inner
state stays float32 (checked by the FP32 enforcer in the loop and in ttt_state.jsonl). CPU autocast is used
here; GPU numerics are not covered by this test."""

from __future__ import annotations

import torch
from train_fixtures import tiny_settings

from omnittt.inspect.jsonl import read_jsonl
from omnittt.train.setup import start_run


def test_bf16_autocast_keeps_the_ttt_state_float32(synthetic_data, tmp_path):
    trainer = start_run(tiny_settings(synthetic_data, tmp_path / "run", max_steps=2, mixed_precision="bf16")).trainer
    assert trainer.mixed_precision == "bf16"
    model = trainer.accelerator.unwrap_model(trainer.model)
    seen: dict[str, torch.dtype] = {}
    attention = model.language_model.model.layers[0].self_attn.q_proj

    def record(module, args, out) -> None:
        seen.setdefault("attention q_proj", out.dtype)

    handle = attention.register_forward_hook(record)
    trainer.fit()
    handle.remove()
    assert seen["attention q_proj"] == torch.bfloat16  # autocast was on
    assert trainer.fp32_drifts == 0
    records = read_jsonl(trainer.run.ttt_state_path)
    assert records and all(set(r["dtype"].values()) == {"float32"} for r in records)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
