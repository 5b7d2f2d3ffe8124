"""The OmniTTT speech LLM: features, encoder + projector, splicing, exchanges with the carried cache, presets,
parameter groups, and (slow) fitting two conversations that differ only in their speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.features import build_feature_extractor, log_mel
from omnittt.core.modeling_omnittt import shifted_cross_entropy
from omnittt.core.presets import build_model, model_summary
from omnittt.core.prompt import Exchange, PromptBuilder
from omnittt.core.speech import (
    SAMPLE_RATE,
    SEGMENT_SAMPLES,
    padding_for,
    sample_positions,
    segment_positions,
    split_segments,
)
from omnittt.core.speech_encoder import splice_speech
from omnittt.errors import UserError
from omnittt.train.trainable import parameter_groups, set_trainable

MB = 16  # TTT mini-batch size of the test models: several mini-batches per exchange


def tone(seconds: float, freq: float, chirp: float = 0.0, seed: int = 0) -> np.ndarray:
    """A (chirped) tone with a little noise: distinct, deterministic "speech" for the encoder."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.4 * np.sin(2 * np.pi * (freq * t + 0.5 * chirp * t * t))
    noise = np.random.default_rng(seed).standard_normal(t.shape[0]) * 0.01
    return (wave + noise).astype(np.float32)


def make_sample(builder: PromptBuilder, turn_audio: np.ndarray | None, reply: str, first: bool,
                mb: int = MB, mode: str = "trim", text: str = "") -> dict:
    """One exchange as preprocessing writes it (docs/data_format.md): placeholders per 30 s segment, alignment padding
    with the tokenizer's pad id (mask 0, labels -100) to a multiple of the mini-batch size."""
    lengths = split_segments(len(turn_audio)) if turn_audio is not None else []
    segments, start = [], 0
    for n in lengths:
        segments.append(turn_audio[start:start + n])
        start += n
    prompt = builder.exchange(Exchange(len(lengths), text, reply), first=first)
    positions = sample_positions(len(prompt.input_ids), lengths, mode)
    pad = padding_for(positions, mb)
    return {
        "input_ids": prompt.input_ids + [builder.tokens.pad] * pad,
        "labels": prompt.labels + [IGNORE_INDEX] * pad,
        "attention_mask": [1] * len(prompt.input_ids) + [0] * pad,
        "segments": segments,
        "positions": positions + pad,
    }


def collate(samples: list[dict], fe, pad_id: int) -> dict:
    """Right-pad rows with the pad id (mask 0, labels -100), features in placeholder order."""
    width = max(len(s["input_ids"]) for s in samples)

    def pad(key, value):
        return torch.tensor([s[key] + [value] * (width - len(s[key])) for s in samples])

    features, lengths = log_mel([seg for s in samples for seg in s["segments"]], fe)
    return {
        "input_ids": pad("input_ids", pad_id),
        "labels": pad("labels", IGNORE_INDEX),
        "attention_mask": pad("attention_mask", 0),
        "input_features": features,
        "feature_lengths": lengths,
        "num_positions": torch.tensor([s["positions"] for s in samples]),
    }


@pytest.fixture(scope="module")
def builder(tokenizer):
    return PromptBuilder(tokenizer)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", ttt_mini_batch_size=MB).eval()


@pytest.fixture(scope="module")
def fe(model):
    return build_feature_extractor(model.config.speech_config.num_mel_bins)


# -- features ------------------------------------------------------------------------------------------------
def test_log_mel_rows_lengths_and_errors():
    fe = build_feature_extractor(80)
    a, b = tone(1.0, 300), tone(0.25, 900)
    features, lengths = log_mel([a, torch.from_numpy(b)], fe)
    assert features.shape == (2, 80, 3000) and features.dtype == torch.float32
    assert lengths.tolist() == [16000, 4000]
    alone, _ = log_mel([b], fe)
    assert torch.equal(alone[0], features[1])  # a batch does not change a row
    assert log_mel([], fe)[0].shape == (0, 80, 3000)
    assert build_feature_extractor().feature_size == 128  # large-v3
    with pytest.raises(ValueError, match="segment 0"):
        log_mel([np.zeros(SEGMENT_SAMPLES + 1, np.float32)], fe)
    with pytest.raises(ValueError, match="1-D"):
        log_mel([np.zeros((2, 100), np.float32)], fe)


# -- speech arithmetic through the model ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["trim", "full"])
def test_65s_turn_is_three_segments_with_the_right_positions(builder, mode):
    torch.manual_seed(0)
    model = build_model("tiny", speech_positions=mode, ttt_mini_batch_size=MB).eval()
    fe = build_feature_extractor(model.config.speech_config.num_mel_bins)
    audio = np.concatenate([tone(30, 200), tone(30, 400, seed=1), tone(5, 800, seed=2)])
    sample = make_sample(builder, audio, "Sure.", first=True, mode=mode)
    assert [len(s) for s in sample["segments"]] == [480000, 480000, 80000]
    expected = [300, 300, 50] if mode == "trim" else [300, 300, 300]
    batch = collate([sample], fe, builder.tokens.pad)
    with torch.no_grad():
        speech = model.encode_speech(batch["input_features"], batch["feature_lengths"])
        embeds, mask, labels = model.embed_inputs(
            batch["input_ids"], batch["input_features"], batch["feature_lengths"], batch["attention_mask"],
            batch["labels"])
    assert [s.shape[0] for s in speech] == expected
    assert embeds.shape[1] == sample["positions"] == len(sample["input_ids"]) - 3 + sum(expected)
    ids = batch["input_ids"][0].tolist()
    start = ids.index(SPEECH_TOKEN_INDEX)
    for seg, n in zip(speech, expected, strict=True):  # segments follow each other in order
        assert torch.equal(embeds[0, start:start + n], seg)
        assert mask[0, start:start + n].eq(1).all() and labels[0, start:start + n].eq(IGNORE_INDEX).all()
        start += n
    text_after = embeds[0, start]
    assert torch.equal(text_after, model.get_input_embeddings().weight[ids[ids.index(SPEECH_TOKEN_INDEX) + 3]])


def test_tiny_preset_keeps_the_30s_window():
    config = build_model("tiny", device="meta").config
    assert config.speech_config.max_source_positions == 1500 and config.speech_ds_rate == 5
    assert config.speech_config.num_mel_bins <= 128
    with pytest.raises(ValueError, match="30 s window"):
        build_model("tiny", device="meta", speech_config={"max_source_positions": 150})


# -- splicing ------------------------------------------------------------------------------------------------
def test_splice_order_across_rows_padding_and_num_positions():
    emb = torch.nn.Embedding(10, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.arange(20.0).reshape(10, 2))
    P = SPEECH_TOKEN_INDEX
    ids = torch.tensor([[1, P, 2, P, 3, 9], [4, P, 5, 9, 9, 9]])  # 9 = pad
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 2, -100, 3, -100], [-100, -100, 5, -100, -100, -100]])
    speech = [torch.full((2, 2), 100.0), torch.full((3, 2), 200.0), torch.full((4, 2), 300.0)]
    embeds, new_mask, new_labels = splice_speech(ids, speech, emb, 9, mask, labels)
    assert embeds.shape == (2, 9, 2)
    # row 0: 1 [s0 s0] 2 [s1 s1 s1] 3 pad ; row 1: 4 [s2 x4] 5 pad pad pad
    assert embeds[0, :, 0].tolist() == [2, 100, 100, 4, 200, 200, 200, 6, 18]
    assert embeds[1, :, 0].tolist() == [8, 300, 300, 300, 300, 10, 18, 18, 18]
    assert new_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]]
    assert new_labels[0].tolist() == [-100, -100, -100, 2, -100, -100, -100, 3, -100]
    # num_positions drops batch padding added before splicing
    embeds, new_mask, _ = splice_speech(ids, speech, emb, 9, mask, labels, num_positions=[8, 7])
    assert embeds.shape[1] == 8 and new_mask[1].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="num_positions"):
        splice_speech(ids, speech, emb, 9, mask, labels, num_positions=[6, 7])  # would cut real tokens
    with pytest.raises(ValueError, match="3 speech placeholders but 2"):
        splice_speech(ids, speech[:2], emb, 9, mask, labels)


# -- forward, loss, batches, exchanges -----------------------------------------------------------------------
def test_loss_counts_only_reply_tokens(model, fe, builder):
    sample = make_sample(builder, tone(0.8, 300), "Yes, of course.", first=True)
    batch = collate([sample], fe, builder.tokens.pad)
    with torch.no_grad():
        out = model(**batch)
        embeds, mask, labels = model.embed_inputs(**{k: batch[k] for k in (
            "input_ids", "input_features", "feature_lengths", "attention_mask", "labels")})
    targets = labels[0, 1:]
    keep = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(out.logits[0, :-1][keep], targets[keep])
    assert int(keep.sum()) == sum(1 for x in sample["labels"] if x != IGNORE_INDEX)
    assert torch.allclose(out.loss, manual, atol=1e-6)
    no_targets = dict(batch, labels=torch.full_like(batch["labels"], IGNORE_INDEX))
    assert model(**no_targets).loss.item() == 0.0
    with torch.no_grad():  # statistics reach the cache through our forward, and change nothing
        stats_out = model(**batch, collect_ttt_stats=True)
    assert torch.equal(stats_out.logits, out.logits)
    stats = [layer.stats for _, layer in stats_out.past_key_values.ttt_layers()]
    assert len(stats) == 2 and all(s is not None and "W1_norm" in s for s in stats)


def test_padded_batch_rows_equal_rows_alone(model, fe, builder):
    samples = [
        make_sample(builder, tone(2.0, 300), "The answer is forty two.", first=True),
        make_sample(builder, np.concatenate([tone(0.4, 700)]), "No.", first=True, text="Tell me."),
    ]
    batch = collate(samples, fe, builder.tokens.pad)
    assert batch["num_positions"].tolist()[0] != batch["num_positions"].tolist()[1]
    with torch.no_grad():
        together = model(**batch).logits
        for row, sample in enumerate(samples):
            alone = model(**collate([sample], fe, builder.tokens.pad)).logits[0]
            n = alone.shape[0]
            assert n == sample["positions"]
            diff = (together[row, :n] - alone).abs().amax(-1)
            assert diff.max() <= 1e-4, diff.max()


def conversation(builder, audios, replies):
    return [make_sample(builder, a, r, first=(k == 0)) for k, (a, r) in enumerate(zip(audios, replies, strict=True))]


def test_exchange_by_exchange_with_cache_equals_one_call(model, fe, builder):
    samples = conversation(builder, [tone(0.6, 250), tone(1.1, 520, 300, seed=1), tone(0.4, 900, seed=2)],
                           ["Hello Anna.", "It will be sunny tomorrow.", "Goodbye!"])
    joined = {
        "input_ids": [t for s in samples for t in s["input_ids"]],
        "labels": [t for s in samples for t in s["labels"]],
        "attention_mask": [t for s in samples for t in s["attention_mask"]],
        "segments": [seg for s in samples for seg in s["segments"]],
        "positions": sum(s["positions"] for s in samples),
    }
    batch = collate([joined], fe, builder.tokens.pad)
    with torch.no_grad():
        whole = model(**batch)
        real = model.embed_inputs(batch["input_ids"], batch["input_features"], batch["feature_lengths"],
                                  batch["attention_mask"])[1][0].bool()
        cache = model.new_cache()
        pieces = []
        losses = []
        for sample in samples:
            out = model(**collate([sample], fe, builder.tokens.pad), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
            losses.append(out.loss)
    stepwise = torch.cat(pieces, dim=1)
    assert stepwise.shape == whole.logits.shape
    diff = (stepwise[0] - whole.logits[0]).abs().amax(-1)[real]
    assert diff.max() <= 1e-4, diff.max()
    # the later exchanges really depend on the earlier ones (the cache is not a no-op)
    with torch.no_grad():
        fresh = model(**collate([samples[1]], fe, builder.tokens.pad)).logits
    assert (fresh - pieces[1]).abs().max() > 1e-3


def test_generate_continues_the_conversation_cache(model, fe, builder):
    first = make_sample(builder, tone(1.0, 330), "Hello.", first=True)
    with torch.no_grad():
        cache = model(**collate([first], fe, builder.tokens.pad), use_cache=True).past_key_values
        prompt = builder.generation_prompt(Exchange(1), first=False)
        features, lengths = log_mel([tone(1.5, 610, seed=3)], fe)
        ids = torch.tensor([prompt])
        generated = model.generate(ids, input_features=features, feature_lengths=lengths,
                                   past_key_values=cache, max_new_tokens=6, do_sample=False)
        # manual greedy on a copy of the same history
        cache2 = model(**collate([first], fe, builder.tokens.pad), use_cache=True).past_key_values
        out = model(input_ids=ids, input_features=features, feature_lengths=lengths, past_key_values=cache2,
                    use_cache=True)
        manual = []
        for _ in range(6):
            token = out.logits[0, -1].argmax()
            manual.append(int(token))
            out = model(input_ids=token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    assert generated[0, -6:].tolist() == manual


# -- presets, summary, groups --------------------------------------------------------------------------------
def test_llama_omni_8b_on_meta_has_the_published_shapes():
    model = build_model("llama-omni-8b", device="meta")
    summary = model_summary(model)
    params = summary["parameters"]
    assert 7.9e9 < params["llm_total"] < 8.1e9
    assert 0.62e9 < params["encoder"] < 0.66e9
    assert params["projector"] == 6400 * 2048 + 2048 + 2048 * 4096 + 4096
    assert summary["ttt_layers"] == list(range(24, 32)) and summary["num_ttt_layers"] == 8
    assert summary["speech_positions"] == "full" and summary["n_mels"] == 128
    layers = model.language_model.model.layers
    for layer in (layers[0], layers[24]):  # GQA in attention and TTT layers alike
        assert layer.self_attn.q_proj.weight.shape == (4096, 4096)
        assert layer.self_attn.k_proj.weight.shape == (1024, 4096)
        assert layer.self_attn.v_proj.weight.shape == (1024, 4096)
    assert getattr(layers[24].self_attn, "is_ttt_layer", False)
    assert not getattr(layers[23].self_attn, "is_ttt_layer", False)
    assert next(model.parameters()).device.type == "meta"
    assert model.config.text_config.rope_parameters["rope_type"] == "llama3"


def test_trainable_subsets_and_parameter_groups():
    model = build_model("tiny")
    summary = model_summary(model)
    assert summary["trainable"]["encoder"] == 0 and summary["trainable"]["llm"] > 0  # encoder frozen by default
    counts = set_trainable(model, "ttt,projector")
    assert counts["llm"] == 0 and counts["encoder"] == 0 and counts["projector"] > 0 and counts["ttt_init"] > 0
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith(".W1") for n in names) and any("speech_projector" in n for n in names)
    assert not any(n.startswith("speech_encoder") or "embed_tokens" in n for n in names)
    groups = parameter_groups(model, "all", lrs={"ttt": 1e-3, "llm": 1e-5}, weight_decay=0.1)
    by_group: dict[str, list] = {}
    for g in groups:
        by_group.setdefault(g["group"], []).extend(g["params"])
    assert set(by_group) == {"ttt_init", "ttt", "projector", "llm", "encoder"}
    assert sum(p.numel() for ps in by_group.values() for p in ps) == summary["parameters"]["total"]
    assert all(g["lr"] == 1e-3 for g in groups if g["group"] in ("ttt", "ttt_init"))
    assert all("lr" not in g for g in groups if g["group"] == "projector")
    assert all(g["weight_decay"] == 0.0 for g in groups if g["group"] == "ttt_init")
    init_names = {n for n, p in model.named_parameters() if any(p is q for q in by_group["ttt_init"])}
    assert {n.rsplit(".", 1)[-1] for n in init_names} <= {"W1", "b1", "W2", "b2", "ttt_norm_weight", "ttt_norm_bias"}
    with pytest.raises(UserError, match="unknown trainable group"):
        set_trainable(model, "ttt,decoder")
    with pytest.raises(UserError, match="unknown preset"):
        build_model("huge")
    with pytest.raises(UserError, match="unknown model setting"):
        build_model("tiny", device="meta", n_layers=3)


def test_summary_refuses_a_model_that_does_not_match_its_config():
    model = build_model("tiny", device="meta")
    model.config.text_config.ttt_layers = [1, 2, 3]
    with pytest.raises(ValueError, match="TTT layers"):
        model_summary(model)


def test_ttt_state_stays_float32_under_bf16_build_and_backward_reaches_everything(fe, builder):
    model = build_model("tiny", dtype=torch.bfloat16, ttt_mini_batch_size=MB)
    dtypes = model_summary(model)["dtypes"]
    assert dtypes["ttt_init"] == ["float32"] and dtypes["llm"] == ["bfloat16"]
    set_trainable(model, "all")
    model.float()
    sample = make_sample(builder, tone(0.5, 440), "Okay.", first=True)
    out = model(**collate([sample], fe, builder.tokens.pad))
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("speech_encoder.embed_positions",)):
            continue
        assert param.grad is not None, name


# -- the model must use the speech ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fits_two_conversations_that_differ_only_in_speech(builder):
    """Same text before every reply, different speech and replies: each conversation's loss must fall >= 90%
    within 200 steps. A model blind to the speech could still do that (only the reply's first token is
    ambiguous, ln 2), so the first reply token of every exchange is also checked for p > 0.9: in exchange 0 only
    the speech tells the two conversations apart (both turns even have the same length).

    The encoder stays frozen (the default). Measured: with Whisper's default init (0.02) or 0.1 for the tiny
    random encoder, the loss criterion is met (~40 steps) but exchange 0's first token stays at p = 0.5 after 200
    steps (the random features of the two sounds are too alike); the tiny preset's init_std 0.2 makes both hold
    by ~70 steps."""
    torch.manual_seed(0)
    model = build_model("tiny")  # default mini-batch size 64
    mb = model.config.text_config.ttt_mini_batch_size
    fe = build_feature_extractor(model.config.speech_config.num_mel_bins)
    audios = [[tone(1.5, 220), tone(2.5, 300, 200, seed=1)], [tone(1.5, 880, seed=2), tone(1.0, 1200, -300, seed=3)]]
    replies = [["Red cat.", "Monday."], ["Blue fish.", "Sunday."]]
    assert len(audios[0][0]) == len(audios[1][0])
    convs = [[make_sample(builder, a, r, first=(k == 0), mb=mb) for k, (a, r) in enumerate(zip(au, re, strict=True))]
             for au, re in zip(audios, replies, strict=True)]
    for k in range(2):
        prompts, first_targets = [], []
        for c in convs:
            labels = c[k]["labels"]
            first_targets.append(next(t for t in labels if t != IGNORE_INDEX))
            prompts.append([t for t, lab in zip(c[k]["input_ids"], labels, strict=True)
                            if lab == IGNORE_INDEX and t != builder.tokens.pad])
        assert prompts[0] == prompts[1] and first_targets[0] != first_targets[1]
    steps = [collate([convs[0][k], convs[1][k]], fe, builder.tokens.pad) for k in range(2)]
    # labels after splicing (speech positions -100), to follow each conversation's own loss
    spliced_labels = [
        splice_speech(s["input_ids"], [torch.zeros(segment_positions(int(n)), 1) for n in s["feature_lengths"]],
                      torch.nn.Embedding(len(builder.tokenizer), 1), builder.tokens.pad, s["attention_mask"],
                      s["labels"], s["num_positions"])[2]
        for s in steps
    ]
    optimizer = torch.optim.AdamW([{"params": g["params"]} for g in parameter_groups(model, "ttt,projector,llm")],
                                  lr=3e-3)
    first, steps_taken, loss_met_at = None, 0, None
    for steps_taken in range(200):  # noqa: B007 (reported below)
        optimizer.zero_grad()
        cache, loss, rows, first_token = None, 0.0, torch.zeros(2), []
        for step, labels in zip(steps, spliced_labels, strict=True):
            out = model(**step, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            loss = loss + out.loss
            logits = out.logits.detach()
            for row in range(2):
                rows[row] += shifted_cross_entropy(logits[row:row + 1], labels[row:row + 1]) / 2
                target = int((labels[row] != IGNORE_INDEX).nonzero()[0])
                first_token.append(torch.log_softmax(logits[row, target - 1], -1)[labels[row, target]].exp())
        first = rows if first is None else first
        if loss_met_at is None and (rows <= 0.1 * first).all():
            loss_met_at = steps_taken
        if loss_met_at is not None and min(first_token) > 0.9:
            break
        loss.backward()
        optimizer.step()
    report = (f"per-conversation loss {first.tolist()} -> {rows.tolist()}, -90% reached at step {loss_met_at}; "
              f"p(first reply token) exchange 0, 1 per row: {[round(float(p), 3) for p in first_token]} after "
              f"{steps_taken} steps")
    print(report)
    assert loss_met_at is not None, report
    assert min(first_token) > 0.9, "the model fits the replies but does not read the speech: " + report
