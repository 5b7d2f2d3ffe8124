"""The conversation-aware dataset, loader and collator (the batch contract: docs/architecture.md "Batches").

- `ConversationDataset`: the whole conversations of a processed dataset, or a curriculum stage's
  conversations and sessions (`omnittt.data.sessions`). Items are `LoaderConversation`s; `exchange(ref)` loads one
  exchange ready to feed (a session's later conversations lose their prefix and are re-padded).
- `ConversationLoader`: B conversations start together (bucketed by exchange count, so rows end close
  together), exchanges strictly in order; conversations are shuffled per epoch with a seed, exchanges never.
  A row that has ended is fed all-pad exchanges (mask 0, labels -100, turn_number -1) until the longest row
  ends; rows are never refilled. Its position is "the next batch" (`state_dict`), so a run checkpointed at
  a batch end resumes exactly.
- `ExchangeCollator`: one exchange step for B rows, with log-mel features from `omnittt.core.features`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.features import build_feature_extractor, log_mel
from omnittt.core.speech import padding_for, sample_positions
from omnittt.core.tokenizer import chat_tokens, load_tokenizer
from omnittt.data.audio_index_store import AudioIndexStore, is_audio_index
from omnittt.data.curriculum import STAGES, Stage, get_stage
from omnittt.data.sessions import (
    ExchangeRef,
    LoaderConversation,
    StagePlan,
    conversations_from_index,
    first_exchange_lengths,
    plan_stage,
)
from omnittt.data.store import SampleStore, open_dataset
from omnittt.errors import UserError

FINISHED_TURN = -1  # turn_number of the all-pad exchange fed to a row whose conversation has ended


def open_store(data: Any) -> Any:
    """A processed dataset, or an audio index (long recordings for the audio objective, read as one)."""
    if isinstance(data, SampleStore | AudioIndexStore):
        return data
    return AudioIndexStore(data) if is_audio_index(data) else open_dataset(data)


def dataset_prefix_len(store: Any) -> int:
    """Tokens of BOS + system prompt that exchange 0 carries (the same for every conversation of a dataset):
    from the settings if recorded, else from the first stored exchange 0."""
    recorded = store.settings.get("prefix_len")
    if recorded is not None:
        return int(recorded)
    first = next((entry for entry in store.index if int(entry["turn_number"]) == 0), None)
    return int(store.load(first)["prefix_len"]) if first is not None else 0


def _index_view(store: Any) -> tuple[list[LoaderConversation], dict[int, int]]:
    """The conversations of the index and the unpadded length of every exchange 0."""
    try:
        return conversations_from_index(store.index, store.manifest), first_exchange_lengths(store.index)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{store.data_dir}: damaged index or manifest ({exc.__class__.__name__}: {exc})",
                        fix=f"run `omnittt validate {store.data_dir}` to find the entry") from None


def plan_stages(data: Any, stages: Sequence[Stage] | None = None) -> list[StagePlan]:
    """What each curriculum stage would train on (conversations and sessions), without loading samples
    beyond one exchange 0."""
    store = open_store(data)
    conversations, first = _index_view(store)
    prefix_len = dataset_prefix_len(store)
    mbs = _mini_batch_size(store)
    return [plan_stage(conversations, stage, prefix_len, first, mbs) for stage in (stages or STAGES)]


def _mini_batch_size(store: Any) -> int:
    mbs = store.settings.get("mini_batch_size")
    if not isinstance(mbs, int) or mbs <= 0:
        raise UserError(f"{store.data_dir}: the dataset records no mini_batch_size in its settings",
                        fix="run `omnittt validate` on it, and re-preprocess it if the settings are missing")
    return mbs


class ConversationDataset:
    """Conversations (or a stage's conversations and sessions) of a processed dataset, `pt` or `arrow`."""

    def __init__(self, data: Any, stage: Stage | str | None = None, stages: Sequence[Stage] | None = None) -> None:
        self.store = open_store(data)
        self.mini_batch_size = _mini_batch_size(self.store)
        self.speech_positions = self.store.settings.get("speech_positions") or "trim"
        conversations, first = _index_view(self.store)
        self.plan: StagePlan | None = None
        if stage is None:
            self.conversations = conversations
        else:
            stage = get_stage(stage, stages) if isinstance(stage, str) else stage
            self.plan = plan_stage(conversations, stage, dataset_prefix_len(self.store), first,
                                   self.mini_batch_size)
            self.conversations = self.plan.items
            if not self.conversations:
                raise UserError(
                    f"{self.store.data_dir}: curriculum stage {stage.name} is empty (no conversation or session of "
                    f"{stage.min_positions}..{stage.max_positions} positions)",
                    fix="see `omnittt curriculum` for what each stage holds; add data of the same group, or start "
                        "at a stage that has data",
                )

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> LoaderConversation:
        return self.conversations[i]

    def exchange(self, ref: ExchangeRef) -> dict[str, Any]:
        """The stored sample of `ref`, ready to feed: for a session's later conversation, exchange 0 without
        its prefix and re-padded to the mini-batch multiple. Adds `num_positions` (spliced, padding incl.)."""
        sample = self.store.load(ref.sample_id)
        lengths = sample["speech_lengths"].tolist()
        if ref.drop_prefix and sample["prefix_len"]:
            sample = self._drop_prefix(sample, lengths)
        sample["num_positions"] = sample_positions(len(sample["input_ids"]), lengths, self.speech_positions)
        return sample

    def _drop_prefix(self, sample: dict[str, Any], lengths: list[int]) -> dict[str, Any]:
        real = int(sample["attention_mask"].sum())
        start = int(sample["prefix_len"])
        ids = sample["input_ids"][start:real]
        labels = sample["labels"][start:real]
        pad = padding_for(sample_positions(len(ids), lengths, self.speech_positions), self.mini_batch_size)
        return {
            **sample,
            "input_ids": torch.cat([ids, torch.full((pad,), self.pad_id, dtype=ids.dtype)]),
            "labels": torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=labels.dtype)]),
            "attention_mask": torch.cat([torch.ones(len(ids), dtype=torch.long), torch.zeros(pad, dtype=torch.long)]),
            "original_length": int(sample["original_length"]) - start,
            "prefix_len": 0,
        }

    @property
    def pad_id(self) -> int:
        """The pad id the samples were padded with (recorded in the settings; else from the tokenizer)."""
        if not hasattr(self, "_pad_id"):
            recorded = self.store.settings.get("pad_token_id")
            if recorded is None:
                recorded = chat_tokens(load_tokenizer(self.store.tokenizer_dir)).pad
            self._pad_id = int(recorded)
        return self._pad_id


class ExchangeCollator:
    """One exchange step for B rows (docs/architecture.md "Batches"). A `None` row is a finished conversation: it
    gets an all-pad exchange. Speech segments go in placeholder order, row-major, as the model splices them."""

    def __init__(self, pad_id: int, feature_extractor: Any = None, compute_features: bool = True) -> None:
        self.pad_id = pad_id
        self.feature_extractor = feature_extractor
        self.compute_features = compute_features

    def __call__(self, rows: Sequence[dict[str, Any] | None], turn_numbers: Sequence[int],
                 conversation_ids: Sequence[str]) -> dict[str, Any]:
        width = max((len(row["input_ids"]) for row in rows if row is not None), default=0)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        num_positions = torch.zeros(batch, dtype=torch.long)
        segments: list[Any] = []
        for i, row in enumerate(rows):
            if row is None:
                continue
            n = len(row["input_ids"])
            input_ids[i, :n] = row["input_ids"]
            attention_mask[i, :n] = row["attention_mask"]
            labels[i, :n] = row["labels"]
            num_positions[i] = row["num_positions"]
            segments.extend(torch.split(row["speech"][:, 0], row["speech_lengths"].tolist()))
        step: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "turn_number": torch.tensor(list(turn_numbers), dtype=torch.long),
            "conversation_ids": list(conversation_ids),
            "num_positions": num_positions,
        }
        if int((input_ids == SPEECH_TOKEN_INDEX).sum()) != len(segments):
            raise UserError(f"exchange of {', '.join(conversation_ids)}: <speech> placeholders and audio segments "
                            "differ in number", fix="run `omnittt validate` on the dataset to find the sample")
        if self.compute_features:
            step["input_features"], step["feature_lengths"] = self.features(segments)
        else:
            step["speech_segments"] = segments
        return step

    def features(self, segments: list[Any]) -> tuple[Any, Any]:
        if self.feature_extractor is None:
            self.feature_extractor = build_feature_extractor()
        return log_mel(segments, self.feature_extractor)


class Batch(Sequence):
    """The exchange steps of one batch of conversations started together, built lazily (a 64k session holds
    hundreds of exchanges: they are loaded and featurised one step at a time). With the loader's `prefetch`,
    reading step k starts building step k + 1 in a background thread while the caller trains on step k
    (torch and numpy release the GIL), and the last step read is kept, so reading it again costs nothing."""

    def __init__(self, loader: ConversationLoader, index: int, conversations: list[LoaderConversation]) -> None:
        self.index = index
        self.conversations = conversations
        self.conversation_ids = [conv.conversation_id for conv in conversations]
        self._loader = loader
        self._last: tuple[int, dict[str, Any]] | None = None
        self._next: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return max(conv.num_exchanges for conv in self.conversations)

    def __getitem__(self, k: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= k < len(self):
            raise IndexError(k)
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        if self._next is not None and self._next[0] == k:
            step = self._next[1].result()
        else:
            step = self.build(k)
        self._next = None
        if self._loader.prefetch and k + 1 < len(self):
            self._next = (k + 1, self._loader.prefetcher().submit(self.build, k + 1))
        self._last = (k, step)
        return step

    def build(self, k: int) -> dict[str, Any]:
        """Step k: each row's exchange k, or an all-pad exchange for a row whose conversation has ended."""
        dataset = self._loader.dataset
        rows = [dataset.exchange(conv.exchanges[k]) if k < conv.num_exchanges else None
                for conv in self.conversations]
        turns = [k if row is not None else FINISHED_TURN for row in rows]
        return self._loader.collator(rows, turns, self.conversation_ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for k in range(len(self)):
            yield self[k]


class ConversationLoader:
    """Batches of B conversations started together, in a seeded order; iterating gives one epoch from the
    current position. `state_dict()` is the next batch, so a checkpoint at a batch end resumes exactly.
    With several processes (`num_replicas`, `rank`), process r takes batches r, r + R, ... of the same order."""

    def __init__(self, dataset: ConversationDataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0,
                 feature_extractor: Any = None, compute_features: bool = True, num_replicas: int = 1,
                 rank: int = 0, prefetch: bool = True) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", fix="use --batch-size 1 or more")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.prefetch = prefetch
        self.collator = ExchangeCollator(dataset.pad_id, feature_extractor, compute_features)
        self.epoch = 0
        self.next_batch = 0
        self._prefetcher: Any = None

    def prefetcher(self) -> Any:
        """One background thread per loader, for `Batch` prefetching (made on first use)."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="omnittt-prefetch")
        return self._prefetcher

    def batch_plan(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch`: conversation indices, B per batch (the last may hold fewer).
        Conversations are ordered by exchange count (ties in seeded random order) and cut into batches, so the
        rows of a batch end close together; then the batches themselves are shuffled."""
        n = len(self.dataset)
        rng = random.Random(f"{self.seed}:{epoch}")
        rank = list(range(n))
        if self.shuffle:
            rng.shuffle(rank)
        if self.batch_size == 1:
            batches = [[i] for i in rank]
        else:
            position = {i: p for p, i in enumerate(rank)}
            order = sorted(range(n), key=lambda i: (self.dataset[i].num_exchanges, position[i]))
            batches = [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
            if self.shuffle:
                rng.shuffle(batches)
        if self.num_replicas > 1:  # every process gets the same number of batches, or the last one would wait
            batches = batches[:len(batches) - len(batches) % self.num_replicas]
        return batches[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return len(self.batch_plan(self.epoch))

    def __iter__(self) -> Iterator[Batch]:
        plan = self.batch_plan(self.epoch)
        while self.next_batch < len(plan):
            index = self.next_batch
            self.next_batch += 1
            yield Batch(self, index, [self.dataset[i] for i in plan[index]])
        self.epoch += 1
        self.next_batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "num_replicas": self.num_replicas,
                "num_conversations": len(self.dataset), "conversations_sha1": self._fingerprint()}

    def _fingerprint(self) -> str:
        ids = "\n".join(conv.conversation_id for conv in self.dataset.conversations)
        return hashlib.sha1(ids.encode("utf-8")).hexdigest()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        changed = [key for key in ("seed", "batch_size", "shuffle", "num_replicas", "num_conversations",
                                   "conversations_sha1")
                   if key in state and state[key] != mine[key]]
        if changed:
            raise UserError(
                f"cannot resume the data position: {', '.join(f'{k} {state[k]} -> {mine[k]}' for k in changed)}",
                fix="resume with the same dataset, stage, batch size, seed and process count (or start the stage "
                    "afresh)",
            )
        self.epoch = int(state["epoch"])
        self.next_batch = int(state["next_batch"])

