"""The conversation loader: whole conversations (or sessions) with exchanges in order, seeded conversation
order, exact resume from "the next batch", and B rows in lockstep giving per row exactly what B = 1 gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from h6_fixtures import processed

from omnittt.core.constants import IGNORE_INDEX
from omnittt.data.curriculum import Stage
from omnittt.data.dataset import FINISHED_TURN, Batch, ConversationDataset, ConversationLoader
from omnittt.errors import UserError

PACK = Stage("pack", 600, 1200, 1e-4)


def _stored(data: Path) -> dict[str, list[dict]]:
    """conversation id -> its samples in turn order, read straight from the files."""
    convs: dict[str, list[dict]] = {}
    for entry in json.loads((data / "index.json").read_text()):
        convs.setdefault(entry["conversation_id"], []).append(torch.load(data / entry["file_path"],
                                                                         weights_only=True))
    return {cid: sorted(samples, key=lambda s: s["turn_number"]) for cid, samples in convs.items()}


def _epoch(loader: ConversationLoader) -> list[tuple[int, list[str]]]:
    return [(loader.epoch, batch.conversation_ids) for batch in loader]


def test_whole_conversations_exchanges_in_order(data):
    stored = _stored(data)
    loader = ConversationLoader(ConversationDataset(data), compute_features=False)
    seen = []
    for batch in loader:
        (cid,) = batch.conversation_ids
        seen.append(cid)
        steps = list(batch)
        assert [int(step["turn_number"][0]) for step in steps] == list(range(len(stored[cid])))
        for step, sample in zip(steps, stored[cid], strict=True):
            assert torch.equal(step["input_ids"][0], sample["input_ids"])
            assert torch.equal(step["labels"][0], sample["labels"])
            assert torch.equal(step["attention_mask"][0], sample["attention_mask"])
            assert torch.equal(torch.cat(step["speech_segments"]) if step["speech_segments"] else torch.zeros(0),
                               sample["speech"][:, 0])
            assert step["conversation_ids"] == [cid]
            assert int(step["num_positions"][0]) % 64 == 0
    assert sorted(seen) == sorted(stored)  # every conversation once per epoch


def test_conversation_order_is_seeded(data):
    dataset = ConversationDataset(data)
    a = ConversationLoader(dataset, seed=3, compute_features=False)
    b = ConversationLoader(dataset, seed=3, compute_features=False)
    c = ConversationLoader(dataset, seed=4, compute_features=False)
    first, second = _epoch(a), _epoch(a)
    assert first == _epoch(b) and second == _epoch(b)
    assert [ids for _, ids in first] != [ids for _, ids in _epoch(c)]
    assert [ids for _, ids in first] != [ids for _, ids in second]  # reshuffled per epoch
    plain = ConversationLoader(dataset, shuffle=False, compute_features=False)
    assert [ids[0] for _, ids in _epoch(plain)] == sorted(c.conversation_id for c in dataset.conversations)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_resume_from_the_next_batch_is_exact(data, batch_size):
    dataset = ConversationDataset(data)
    straight = ConversationLoader(dataset, batch_size=batch_size, seed=7, compute_features=False)
    expected = _epoch(straight) + _epoch(straight)

    first = ConversationLoader(dataset, batch_size=batch_size, seed=7, compute_features=False)
    got = []
    for batch in first:  # stop after three batches, "checkpoint" at the batch end
        got.append((first.epoch, batch.conversation_ids))
        if len(got) == 3:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert state["next_batch"] == 3
    resumed = ConversationLoader(ConversationDataset(data), batch_size=batch_size, seed=7, compute_features=False)
    resumed.load_state_dict(state)
    got += _epoch(resumed) + _epoch(resumed)
    assert got[:len(expected)] == expected
    other = ConversationLoader(dataset, batch_size=3 - batch_size, seed=7, compute_features=False)
    with pytest.raises(UserError, match="batch_size"):
        other.load_state_dict(state)


def _assert_lockstep(batch: Batch, single: ConversationLoader, pad: int, features: bool,
                     steps: list[int] | None = None) -> None:
    for k in range(len(batch)) if steps is None else steps:
        step = batch[k]
        offset = 0
        for row, conv in enumerate(batch.conversations):
            if k >= conv.num_exchanges:  # finished: an all-pad exchange, state unchanged
                assert int(step["turn_number"][row]) == FINISHED_TURN
                assert (step["input_ids"][row] == pad).all() and not step["attention_mask"][row].any()
                assert (step["labels"][row] == IGNORE_INDEX).all() and int(step["num_positions"][row]) == 0
                continue
            one = Batch(single, 0, [conv])[k]
            n = one["input_ids"].shape[1]
            for key in ("input_ids", "attention_mask", "labels"):
                assert torch.equal(step[key][row, :n], one[key][0]), key
            assert (step["attention_mask"][row, n:] == 0).all() and (step["labels"][row, n:] == -100).all()
            assert int(step["turn_number"][row]) == int(one["turn_number"][0]) == k
            assert int(step["num_positions"][row]) == int(one["num_positions"][0])
            if features:
                s = one["input_features"].shape[0]
                assert torch.equal(step["input_features"][offset:offset + s], one["input_features"])
                assert torch.equal(step["feature_lengths"][offset:offset + s], one["feature_lengths"])
            else:
                s = len(one["speech_segments"])
                pairs = zip(step["speech_segments"][offset:offset + s], one["speech_segments"], strict=True)
                assert all(torch.equal(x, y) for x, y in pairs)
            offset += s
        placeholders = int((step["input_ids"] == -200).sum())
        if features:
            assert offset == step["input_features"].shape[0] == placeholders
            assert tuple(step["input_features"].shape[1:]) == (128, 3000)
        else:
            assert offset == len(step["speech_segments"]) == placeholders


def test_two_rows_in_lockstep_equal_one_row_each(data):
    dataset = ConversationDataset(data)
    single = ConversationLoader(dataset, batch_size=1, compute_features=False)
    pair = ConversationLoader(dataset, batch_size=2, seed=1, compute_features=False)
    batches = list(pair)
    counts = [sorted(c.num_exchanges for c in b.conversations) for b in batches]
    # Bucketed by exchange count: the batches' ranges never interleave.
    spans = sorted((min(c), max(c)) for c in counts)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False))
    unequal = [b for b, c in zip(batches, counts, strict=True) if len(set(c)) > 1]
    assert unequal  # the fixture really has rows that finish early
    for batch in batches:
        _assert_lockstep(batch, single, dataset.pad_id, features=False)


def test_lockstep_log_mel_features(data):
    """The collator's features (omnittt.core.features.log_mel) per row equal those of the row alone."""
    from omnittt.core.features import build_feature_extractor

    extractor = build_feature_extractor()
    dataset = ConversationDataset(data)
    single = ConversationLoader(dataset, batch_size=1, feature_extractor=extractor)
    pair = ConversationLoader(dataset, batch_size=2, seed=1, feature_extractor=extractor)
    batch = next(b for b in pair if len({c.num_exchanges for c in b.conversations}) > 1)
    shortest = min(c.num_exchanges for c in batch.conversations)
    # The first step (with the prefix), the last step of both rows, and one with a finished row.
    _assert_lockstep(batch, single, dataset.pad_id, features=True, steps=[0, shortest - 1, shortest])


def test_sessions_reset_once_and_drop_later_prefixes(data):
    stored = _stored(data)
    dataset = ConversationDataset(data, stage=PACK)
    sessions = [c for c in dataset.conversations if c.is_session]
    assert sessions
    loader = ConversationLoader(dataset, shuffle=False, compute_features=False)
    bos = int(stored[sessions[0].source_conversation_ids[0]][0]["input_ids"][0])
    for batch in loader:
        conv = batch.conversations[0]
        steps = list(batch)
        assert [int(s["turn_number"][0]) for s in steps] == list(range(conv.num_exchanges))  # renumbered
        ids = torch.cat([s["input_ids"][0] for s in steps])
        assert int((ids == bos).sum()) == 1 and int(steps[0]["input_ids"][0, 0]) == bos  # one prefix, at the start
        assert sum(int(s["num_positions"][0]) for s in steps) == conv.num_positions
        assert all(int(s["num_positions"][0]) % 64 == 0 for s in steps)
        source = [x for cid in conv.source_conversation_ids for x in stored[cid]]
        for step, sample in zip(steps, source, strict=True):
            real = int(sample["attention_mask"].sum())
            cut = sample["prefix_len"] if step is not steps[0] else 0
            got = step["input_ids"][0][step["attention_mask"][0] == 1]
            assert torch.equal(got, sample["input_ids"][cut:real])
            assert torch.equal(step["labels"][0][step["attention_mask"][0] == 1], sample["labels"][cut:real])


def test_arrow_reads_like_pt(h6_base, data):
    arrow = processed(h6_base, "deepdialogue", "arrow")
    a = ConversationLoader(ConversationDataset(arrow), shuffle=False, compute_features=False)
    p = ConversationLoader(ConversationDataset(data), shuffle=False, compute_features=False)
    for batch_a, batch_p in zip(a, p, strict=True):
        assert batch_a.conversation_ids == batch_p.conversation_ids
        for step_a, step_p in zip(batch_a, batch_p, strict=True):
            for key in ("input_ids", "labels", "attention_mask", "turn_number", "num_positions"):
                assert torch.equal(step_a[key], step_p[key])
            assert all(torch.equal(x, y) for x, y in zip(step_a["speech_segments"], step_p["speech_segments"],
                                                         strict=True))


def test_empty_stage_says_what_to_do(data):
    with pytest.raises(UserError, match="stage 8k is empty") as info:
        ConversationDataset(data, stage="8k")
    assert "omnittt curriculum" in info.value.fix


def test_replicas_split_one_order_evenly(data):
    dataset = ConversationDataset(data)
    whole = ConversationLoader(dataset, batch_size=2, seed=2, compute_features=False).batch_plan(0)
    ranks = [ConversationLoader(dataset, batch_size=2, seed=2, compute_features=False, num_replicas=2, rank=r)
             for r in (0, 1)]
    plans = [loader.batch_plan(0) for loader in ranks]
    assert len(plans[0]) == len(plans[1]) == len(whole) // 2  # equal counts: no process waits on another
    assert [b for pair in zip(*plans, strict=True) for b in pair] == whole[:2 * len(plans[0])]


def test_prefetch_and_random_access_give_the_same_steps(data):
    dataset = ConversationDataset(data)
    fetched = ConversationLoader(dataset, batch_size=2, seed=5, compute_features=False)
    plain = ConversationLoader(dataset, batch_size=2, seed=5, compute_features=False, prefetch=False)
    for a, b in zip(fetched, plain, strict=True):
        order = [len(a) - 1, 0, 0, *range(len(a))]  # out of order and repeated: prefetch must not mix steps
        for k in order:
            x, y = a[k], b[k]
            assert all(torch.equal(x[key], y[key]) for key in ("input_ids", "labels", "turn_number"))
