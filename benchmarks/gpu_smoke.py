"""GPU smoke test of the 8B shapes: does one long exchange train and decode on this GPU, and how fast?

The `llama-omni-8b` preset (Llama-3.1-8B shapes with TTT-MLP in layers 24-31, Whisper-large-v3 encoder,
`speech_positions="full"`) with random weights, cast to bf16 while the TTT inner state stays float32:
1. forward + backward on one long exchange (speech segments + a long reply, padded to the TTT mini-batch as
   preprocessing pads it), trainable groups as `omnittt train` defaults (TTT layers + projector);
2. 100 greedy decoded tokens after a spoken prompt (`model.generate`, the path `omnittt chat` uses).
Prints peak memory, tokens/s, the dtypes of the TTT state the forward produced, and whether the loss and the
gradients are finite. Random weights: the loss is about ln(vocab); only speed, memory and numerics mean anything.

Without a CUDA GPU it prints why it skipped and exits 0. `--preset tiny --allow-cpu` runs the same code on the
tiny preset on CPU (to check the script itself).

    python benchmarks/gpu_smoke.py                       # on a GPU machine
    python benchmarks/gpu_smoke.py --reply-tokens 16000 --gradient-checkpointing
    python benchmarks/gpu_smoke.py --preset tiny --allow-cpu --speech-seconds 20 --reply-tokens 500
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-omni-8b", help="model preset (random weights)")
    parser.add_argument("--speech-seconds", type=float, default=60.0, help="user speech of the long exchange")
    parser.add_argument("--reply-tokens", type=int, default=8000, help="text tokens of the long exchange's reply")
    parser.add_argument("--decode-tokens", type=int, default=100)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU (for checking the script)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def exchange(model: Any, speech_seconds: float, reply_tokens: int, generator: Any, device: Any) -> dict[str, Any]:
    """One exchange as preprocessing lays it out: a text head, one placeholder per <=30 s speech segment, the
    reply (trained on), then alignment padding to the TTT mini-batch (mask 0, labels ignored)."""
    import torch

    from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
    from omnittt.core.features import build_feature_extractor, log_mel
    from omnittt.core.speech import SAMPLE_RATE, padding_for, sample_positions, split_segments

    text = model.config.text_config
    segments = split_segments(int(speech_seconds * SAMPLE_RATE)) if speech_seconds > 0 else []
    audio = [0.1 * torch.randn(n, generator=generator).numpy() for n in segments]
    features, lengths = log_mel(audio, build_feature_extractor(model.config.speech_config.num_mel_bins))
    high = min(int(text.vocab_size), 128000)  # ordinary tokens, below Llama-3's specials
    head = torch.randint(0, high, (32,), generator=generator)
    reply = torch.randint(0, high, (reply_tokens,), generator=generator)
    ids = torch.cat([head, torch.full((len(segments),), SPEECH_TOKEN_INDEX), reply])
    labels = torch.cat([torch.full((32 + len(segments),), IGNORE_INDEX), reply])
    positions = sample_positions(len(ids), segments, model.config.speech_positions)
    pad = padding_for(positions, int(getattr(text, "ttt_mini_batch_size", None) or 1))
    pad_id = int(text.pad_token_id if text.pad_token_id is not None else 0)
    mask = torch.cat([torch.ones(len(ids), dtype=torch.long), torch.zeros(pad, dtype=torch.long)])
    ids = torch.cat([ids, torch.full((pad,), pad_id)])
    labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX)])
    return {
        "input_ids": ids[None].to(device), "attention_mask": mask[None].to(device), "labels": labels[None].to(device),
        "input_features": features.to(device), "feature_lengths": lengths.to(device),
        "positions": positions + pad, "segments": len(segments),
    }


def ttt_state_dtypes(cache: Any) -> set[str]:
    dtypes = set()
    for _, layer in cache.ttt_layers():
        for tensor in (layer.state or {}).values():
            dtypes.add(str(tensor.dtype).replace("torch.", ""))
    return dtypes


def main() -> None:
    args = parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_smoke: skipped: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "--allow-cpu runs it on CPU anyway")
        return
    from omnittt.core.presets import build_model, model_summary
    from omnittt.train.trainable import set_trainable

    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    print(f"gpu_smoke: {args.preset} (random weights) in {args.dtype} on {where}, torch {torch.__version__}")

    started = time.perf_counter()
    model = build_model(args.preset, device=device, dtype=dtype)
    set_trainable(model, "ttt,projector")  # omnittt train's default groups
    if args.gradient_checkpointing:
        model.enable_ttt_checkpointing(True)
    summary = model_summary(model)
    print(f"built in {time.perf_counter() - started:.1f} s: {summary['parameters']['total'] / 1e6:,.1f} M parameters, "
          f"{summary['trainable']['total'] / 1e6:.1f} M trained, TTT layers {summary['ttt_layers']} "
          f"(b={summary['ttt_mini_batch_size']}), speech positions {summary['speech_positions']}; "
          f"parameter dtypes {summary['dtypes']}")
    memory = _Memory(cuda, device)

    # 1. forward + backward on one long exchange
    batch = exchange(model, args.speech_seconds, args.reply_tokens, generator, device)
    inputs = {k: v for k, v in batch.items() if k not in ("positions", "segments")}
    model.train()
    memory.reset()
    started = _sync(cuda)
    out = model(**inputs, use_cache=True)
    forward_s = _sync(cuda) - started
    out.loss.backward()
    total_s = _sync(cuda) - started
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.isfinite(out.loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
    state_dtypes = ttt_state_dtypes(out.past_key_values)
    print(f"forward+backward: {batch['positions']:,} positions ({batch['segments']} speech segments, "
          f"{args.reply_tokens:,} reply tokens): forward {forward_s:.2f} s ({batch['positions'] / forward_s:,.0f} "
          f"positions/s), forward+backward {total_s:.2f} s ({batch['positions'] / total_s:,.0f} positions/s); "
          f"peak memory {memory.peak()}")
    uniform = math.log(model.config.text_config.vocab_size)
    print(f"  loss {float(out.loss.detach()):.3f} (ln vocab {uniform:.3f}); loss and {len(grads)} gradients "
          f"finite: {finite}; TTT state dtypes after the forward: {sorted(state_dtypes)}")
    del out, grads
    model.zero_grad(set_to_none=True)

    # 2. decode after a spoken prompt (the prompt ends with a real token, as chat's assistant header does)
    model.eval()
    prompt = exchange(model, min(args.speech_seconds, 30.0), 16, generator, device)
    keep = prompt["attention_mask"][0].bool()
    ids, mask = prompt["input_ids"][:, keep], prompt["attention_mask"][:, keep]
    speech = {"input_features": prompt["input_features"], "feature_lengths": prompt["feature_lengths"]}
    memory.reset()
    with torch.no_grad():
        started = _sync(cuda)
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **speech)
        prefill_s = _sync(cuda) - started
        started = _sync(cuda)
        new = model.generate(ids, attention_mask=mask, max_new_tokens=args.decode_tokens,
                             min_new_tokens=args.decode_tokens, do_sample=False, **speech)
        generate_s = _sync(cuda) - started
    decode_s = max(generate_s - prefill_s, 1e-9)
    print(f"decode: {new.shape[1]} tokens after a {prompt['positions']:,}-position spoken prompt in "
          f"{generate_s:.2f} s (prefill {prefill_s:.2f} s measured alone; decode ~{new.shape[1] / decode_s:,.1f} "
          f"tokens/s); peak memory {memory.peak()}")
    ok = finite and state_dtypes == {"float32"} and new.shape[1] == args.decode_tokens
    print("gpu_smoke: " + ("OK" if ok else "FAILED") + " (finite loss and gradients, float32 TTT state, "
          f"{args.decode_tokens} tokens decoded)")
    if not ok:
        raise SystemExit(1)


def _sync(cuda: bool) -> float:
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


class _Memory:
    def __init__(self, cuda: bool, device: Any) -> None:
        self.cuda, self.device = cuda, device

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> str:
        if self.cuda:
            import torch

            return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB allocated"
        import resource

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process RSS (CPU)"


if __name__ == "__main__":
    main()
