"""Conversations and sessions as the loader sees them, built at load time from the index and the manifest.

Corpora such as DeepDialogue hold short conversations (about 6 exchanges, well under 8k positions), so a
curriculum stage packs conversations of the same group (source folder / domain) into *sessions* whose length
lies inside the stage's [min, max]. A session is one conversation for the loader: its exchanges are
renumbered 0..n-1 (the TTT state resets only at its start) and every conversation after the first loses its
leading BOS + system prompt (`prefix_len` tokens), after which that exchange is re-padded to the mini-batch
multiple. It keeps `source_conversation_ids`. Nothing is re-preprocessed per stage, and the packing is a pure
function of the index, the manifest and the stage, so every process builds the same sessions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from omnittt.core.speech import padded_positions
from omnittt.data.curriculum import Stage


@dataclass(frozen=True)
class ExchangeRef:
    """One exchange of a loader conversation: the stored sample, the positions it is fed with (alignment
    padding included) and how many leading tokens the collator drops (a session's later conversations)."""

    sample_id: int
    positions: int
    drop_prefix: int = 0


@dataclass(frozen=True)
class LoaderConversation:
    """A whole conversation or a session: what one batch row is fed, exchange after exchange."""

    conversation_id: str
    group: str
    exchanges: tuple[ExchangeRef, ...]
    source_conversation_ids: tuple[str, ...]
    duration_sec: float = 0.0

    @property
    def num_positions(self) -> int:
        return sum(ex.positions for ex in self.exchanges)

    @property
    def num_exchanges(self) -> int:
        return len(self.exchanges)

    @property
    def is_session(self) -> bool:
        return len(self.source_conversation_ids) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "group": self.group,
            "source_conversation_ids": list(self.source_conversation_ids),
            "num_exchanges": self.num_exchanges,
            "num_positions": self.num_positions,
            "duration_sec": round(self.duration_sec, 3),
            "sample_ids": [ex.sample_id for ex in self.exchanges],
        }


@dataclass
class StagePlan:
    """What a stage trains on, and what it leaves out (and why)."""

    stage: Stage
    items: list[LoaderConversation] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)  # conversations longer than the stage maximum
    leftover: list[str] = field(default_factory=list)  # group tails too short to reach the stage minimum

    @property
    def num_positions(self) -> int:
        return sum(item.num_positions for item in self.items)

    @property
    def duration_sec(self) -> float:
        return sum(item.duration_sec for item in self.items)

    @property
    def num_sessions(self) -> int:
        return sum(1 for item in self.items if item.is_session)

    @property
    def num_source_conversations(self) -> int:
        return sum(len(item.source_conversation_ids) for item in self.items)


def conversations_from_index(
    index: Iterable[Mapping[str, Any]], manifest: Iterable[Mapping[str, Any]] = (),
) -> list[LoaderConversation]:
    """The dataset's conversations (sorted by id, exchanges by turn number) with their group from the
    manifest (`group`, else `source`, else one group for everything)."""
    groups = {str(m["conversation_id"]): str(m.get("group") or m.get("source") or "") for m in manifest}
    turns: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in index:
        turns[str(entry["conversation_id"])].append(entry)
    conversations = []
    for cid in sorted(turns):
        entries = sorted(turns[cid], key=lambda e: int(e["turn_number"]))
        conversations.append(LoaderConversation(
            conversation_id=cid,
            group=groups.get(cid, ""),
            exchanges=tuple(ExchangeRef(int(e["sample_id"]), int(e["num_tokens"])) for e in entries),
            source_conversation_ids=(cid,),
            duration_sec=float(sum(float(e.get("audio_duration_sec") or 0.0) for e in entries)),
        ))
    return conversations


def first_exchange_lengths(index: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """sample_id -> original_length (positions without padding) of every exchange 0."""
    return {int(e["sample_id"]): int(e["original_length"]) for e in index if int(e["turn_number"]) == 0}


def without_prefix(conversation: LoaderConversation, prefix_len: int, original_length: int,
                   mini_batch_size: int) -> LoaderConversation:
    """The conversation as a session's later part: exchange 0 loses its `prefix_len` tokens and is re-padded."""
    if prefix_len <= 0:
        return conversation
    first = conversation.exchanges[0]
    positions = padded_positions(original_length - prefix_len, mini_batch_size)
    return replace(conversation, exchanges=(replace(first, positions=positions, drop_prefix=prefix_len),
                                            *conversation.exchanges[1:]))


def join(parts: Sequence[LoaderConversation]) -> LoaderConversation:
    """One session from conversations already stripped of their prefix (all but the first)."""
    if len(parts) == 1:
        return parts[0]
    return LoaderConversation(
        conversation_id=f"{parts[0].conversation_id}+{len(parts) - 1}",
        group=parts[0].group,
        exchanges=tuple(ex for part in parts for ex in part.exchanges),
        source_conversation_ids=tuple(cid for part in parts for cid in part.source_conversation_ids),
        duration_sec=sum(part.duration_sec for part in parts),
    )


def plan_stage(
    conversations: Sequence[LoaderConversation],
    stage: Stage,
    prefix_len: int,
    first_lengths: Mapping[int, int],
    mini_batch_size: int,
) -> StagePlan:
    """Conversations inside the stage's range as they are; shorter ones packed, in id order within their
    group, into sessions that reach the minimum without passing the maximum. A conversation longer than the
    maximum belongs to a later stage; a group's tail that cannot reach the minimum is left out."""
    plan = StagePlan(stage)
    by_group: dict[str, list[LoaderConversation]] = defaultdict(list)
    for conv in conversations:
        by_group[conv.group].append(conv)
    for group in sorted(by_group):
        parts: list[LoaderConversation] = []
        length = 0
        for conv in by_group[group]:
            if conv.num_positions > stage.max_positions:
                plan.too_long.append(conv.conversation_id)
                continue
            if stage.contains(conv.num_positions):
                plan.items.append(conv)
                continue
            part = conv if not parts else without_prefix(
                conv, prefix_len, first_lengths[conv.exchanges[0].sample_id], mini_batch_size)
            if length + part.num_positions > stage.max_positions:
                # The open session cannot reach the minimum with this conversation: start again from it.
                plan.leftover.extend(cid for p in parts for cid in p.source_conversation_ids)
                parts, length, part = [], 0, conv
            parts.append(part)
            length += part.num_positions
            if length >= stage.min_positions:
                plan.items.append(join(parts))
                parts, length = [], 0
        plan.leftover.extend(cid for p in parts for cid in p.source_conversation_ids)
    plan.items.sort(key=lambda item: item.conversation_id)
    return plan
