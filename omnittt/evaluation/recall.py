"""The recall probe: does the model answer a question about a fact stated exchanges earlier?

Two kinds of dialogue are found:
- any dialogue with a query table (`omnittt.data.recall_corpus` and `omnittt.data.synthetic`: the manifest
  entry's `recall.queries` lists, per question, its exchange, the exchange of its fact (or of the speech that
  holds the answer: the same exchange for "repeat what I said") and the answer): one item per question, the
  answer tokens being the reply's shortest ending that holds the answer, without the final punctuation and
  end-of-turn; `recall.facts` is how many facts the dialogue holds at once; the manifest `domain` is the task;
- a recall dialogue (`domain` "recall") without one (corpora made before the table): the code given in the
  first exchange is asked for in the last, whose reply repeats it; the answer tokens are the common tail of the
  two replies' targets.
For each item (inside whatever session the stage packed it into) the probe reports the teacher-forced loss of the
answer tokens, whether every answer token is the greedy (argmax) prediction (exact match), and the distance to the
fact in turns and in positions, by distance, by facts held and as a needle grid (distance x facts -> exact match);
and the paired gap between two runs on the same answer tokens (e.g. TTT state reset every turn minus carried), with
a bootstrap interval over items.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from omnittt.core.constants import IGNORE_INDEX
from omnittt.evaluation.statistics import StatOptions, TokenScores, summarize

RECALL_DOMAIN = "recall"
# Position-distance bins of the probe (from the fact exchange's first token to the first answer token).
DISTANCE_EDGES = (0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True)
class RecallItem:
    """One recall dialogue inside a loader conversation (session) `conv`: the fact is stated in exchange
    `fact_exchange`, asked for in `answer_exchange`; `answer_ordinals` are the target ordinals of the code tokens
    inside the answer exchange."""

    dialogue_id: str
    conv: int
    fact_exchange: int
    answer_exchange: int
    answer_ordinals: tuple[int, ...]
    answer_text: str
    facts: int = 1  # facts the dialogue holds at once
    task: str = RECALL_DOMAIN  # the dialogue's domain: recall, repeat, numbers, ...


def _targets(labels: Any) -> list[int]:
    """Target token ids in the order the scorer numbers them (labels shifted by one, as the loss)."""
    return [int(t) for t in labels[1:].tolist() if int(t) != IGNORE_INDEX]


def _trimmed(answer: list[int], start: int, end: int, tokenizer: Any) -> tuple[int, int]:
    """[start, end) narrowed past tokens that are special or only punctuation/space."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def empty(token: int) -> bool:
        text = tokenizer.decode([token], skip_special_tokens=True).strip()
        return token in special or not any(ch.isalnum() for ch in text)

    while end > start and empty(answer[end - 1]):
        end -= 1
    while start < end and empty(answer[start]):
        start += 1
    return start, end


def _answer_span(fact: list[int], answer: list[int], tokenizer: Any) -> tuple[int, int]:
    """[start, end) in `answer` of the code: the common tail of both replies' targets, trimmed."""
    tail = 0
    while tail < min(len(fact), len(answer)) and fact[-1 - tail] == answer[-1 - tail]:
        tail += 1
    return _trimmed(answer, len(answer) - tail, len(answer), tokenizer)


def _answer_ending(answer: list[int], text: str, tokenizer: Any) -> tuple[int, int]:
    """[start, end) in `answer` of the shortest trimmed ending whose decoded text holds `text` (empty if none)."""
    start, end = _trimmed(answer, 0, len(answer), tokenizer)
    wanted = " ".join(text.split()).lower()
    if wanted not in " ".join(tokenizer.decode(answer[start:end]).split()).lower():
        return start, start
    while start + 1 < end and wanted in " ".join(tokenizer.decode(answer[start + 1:end]).split()).lower():
        start += 1
    return start, end


def _item(store: Any, tokenizer: Any, dialogue: str, conv: int, fact: tuple[int, int], ask: tuple[int, int],
          entry: dict[str, Any], answer_text: str | None) -> RecallItem | None:
    """The item asking in exchange `ask` (exchange in session, sample id) for the fact of exchange `fact`; the
    answer located by its text, or (None) as the tail the two replies share."""
    answer = _targets(store.load(ask[1])["labels"])
    if answer_text is not None:
        start, end = _answer_ending(answer, answer_text, tokenizer)
    else:
        start, end = _answer_span(_targets(store.load(fact[1])["labels"]), answer, tokenizer)
    if end <= start:
        return None
    facts = int((entry.get("recall") or {}).get("facts", 1))
    return RecallItem(dialogue, conv, fact[0], ask[0], tuple(range(start, end)),
                      tokenizer.decode(answer[start:end]).strip(), facts, str(entry.get("domain", RECALL_DOMAIN)))


def _dialogue_items(store: Any, tokenizer: Any, dialogue: str, conv: int, exchanges: list[tuple[int, int]],
                    entry: dict[str, Any]) -> list[RecallItem]:
    queries = (entry.get("recall") or {}).get("queries")
    if not queries:
        item = _item(store, tokenizer, dialogue, conv, exchanges[0], exchanges[-1], entry, None)
        return [item] if item else []
    found = (_item(store, tokenizer, dialogue, conv, exchanges[q["fact_exchange"]], exchanges[q["exchange"]],
                   entry, str(q["answer"])) for q in queries)
    return [item for item in found if item is not None]


def find_recall_items(dataset: Any, tokenizer: Any) -> list[RecallItem]:
    """Every question of every complete recall dialogue of a `ConversationDataset` (all its exchanges inside one
    loader conversation), found through the index and the manifest."""
    store = dataset.store
    entries = {entry.get("conversation_id"): entry for entry in store.manifest}
    items = []
    for c, conv in enumerate(dataset.conversations):
        runs: dict[str, list[tuple[int, int]]] = {}  # dialogue -> [(exchange in session, sample id)]
        for k, ref in enumerate(conv.exchanges):
            entry = store.entry(ref.sample_id)
            runs.setdefault(entry["conversation_id"], []).append((k, ref.sample_id))
        for dialogue, exchanges in runs.items():
            entry = entries.get(dialogue) or {}
            probed = (entry.get("recall") or {}).get("queries") or (entry.get("domain") == RECALL_DOMAIN
                                                                     and len(exchanges) >= 2)
            if not probed or len(exchanges) != int(entry.get("num_turns", 0)):
                continue
            items += _dialogue_items(store, tokenizer, dialogue, c, exchanges, entry)
    return items


def _answer_tokens(item: RecallItem, scores: TokenScores) -> np.ndarray:
    select = (scores.conv == item.conv) & (scores.exchange == item.answer_exchange)
    return np.flatnonzero(select & np.isin(scores.ordinal, item.answer_ordinals))


def _distance_label(d: int) -> str:
    for a, b in zip(DISTANCE_EDGES, DISTANCE_EDGES[1:], strict=False):
        if a <= d < b:
            return f"{a}-{b}"
    return f"{DISTANCE_EDGES[-1]}+"


def recall_probe(items: list[RecallItem], names: list[str], scores: list[TokenScores], options: StatOptions,
                 pairs: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Per run: answer loss and exact match, by turn distance and by position distance; per pair (a, b) of
    run indices: the paired gap loss(b) - loss(a) on the same answer tokens with its interval over dialogues."""
    if not items:
        return {"dialogues": 0, "note": "no recall dialogues in this data (make them with omnittt download synthetic)"}
    index = [_answer_tokens(item, scores[0]) for item in items]
    kept = [(item, idx) for item, idx in zip(items, index, strict=True) if len(idx) == len(item.answer_ordinals)]
    dialogue = np.concatenate([np.full(len(idx), d) for d, (_, idx) in enumerate(kept)])
    token_index = np.concatenate([idx for _, idx in kept])
    first = {d: scores[0].exchange_starts[(item.conv, item.fact_exchange)] for d, (item, _) in enumerate(kept)}
    turn_distance = np.array([item.answer_exchange - item.fact_exchange for item, _ in kept])
    position_distance = np.array([int(scores[0].position[idx[0]]) - first[d] for d, (_, idx) in enumerate(kept)])
    groups: dict[str, list[tuple[str, np.ndarray]]] = {"by_turns": [], "by_positions": []}
    for t in sorted(set(turn_distance.tolist())):
        groups["by_turns"].append((str(t), turn_distance == t))
    labels = [_distance_label(int(d)) for d in position_distance]
    for label in sorted(set(labels), key=lambda s: int(s.split("-")[0].rstrip("+"))):
        groups["by_positions"].append((label, np.array([x == label for x in labels])))
    facts = np.array([item.facts for item, _ in kept])
    groups["by_facts"] = [(str(f), facts == f) for f in sorted(set(facts.tolist()))]
    tasks = np.array([item.task for item, _ in kept])
    groups["by_task"] = [(str(t), tasks == t) for t in sorted(set(tasks.tolist()))]
    groups["all"] = [("all", np.ones(len(kept), dtype=bool))]
    out: dict[str, Any] = {
        "dialogues": len(kept), "answer_tokens": int(len(token_index)),
        "examples": [item.answer_text for item, _ in kept[:3]],
        "turn_distance": {"min": int(turn_distance.min()), "max": int(turn_distance.max())},
        "position_distance": {"min": int(position_distance.min()), "max": int(position_distance.max())},
        "runs": [], "gaps": [],
    }
    answers = [score.take(token_index) for score in scores]  # the answer tokens of every run, in `dialogue` order
    for name, answer in zip(names, answers, strict=True):
        rows = {key: [_row(label, sel, dialogue, answer, options) for label, sel in spec]
                for key, spec in groups.items()}
        out["runs"].append({"name": name, **rows, "needle": _needle(labels, facts, _exact(dialogue, answer.correct))})
    for a, b in pairs or []:
        em_a, em_b = _exact(dialogue, answers[a].correct), _exact(dialogue, answers[b].correct)
        gap = {key: [_row(label, sel, dialogue, answers[a], options, other=answers[b]) for label, sel in spec]
               for key, spec in groups.items()}
        out["gaps"].append({"name": f"{names[b]} - {names[a]}", "a": names[a], "b": names[b],
                            "meaning": f"answer-token loss of {names[b]} minus {names[a]} (> 0: {names[a]} "
                                       "recalls better); exact_match_gain: exact-match rate of a minus b",
                            "exact_match_gain": float(em_a.mean() - em_b.mean()), **gap})
    return out


def _needle(labels: list[str], facts: np.ndarray, exact: np.ndarray) -> list[dict[str, Any]]:
    """Exact-match rate per (position-distance bin, facts held) cell: the needle-in-a-haystack grid."""
    cells = []
    for label in sorted(set(labels), key=lambda s: int(s.split("-")[0].rstrip("+"))):
        for f in sorted(set(facts.tolist())):
            select = np.array([x == label for x in labels]) & (facts == f)
            if select.any():
                cells.append({"distance": label, "facts": int(f), "items": int(select.sum()),
                              "exact_match": float(exact[select].mean())})
    return cells


def _exact(dialogue: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per dialogue: every answer token greedy-correct."""
    n = int(dialogue.max()) + 1
    wrong = np.bincount(dialogue, weights=(~correct).astype(np.float64), minlength=n)
    return wrong == 0


def _row(label: str, dialogues_selected: np.ndarray, dialogue: np.ndarray, answers: TokenScores,
         options: StatOptions, other: TokenScores | None = None) -> dict[str, Any]:
    """One distance row over the selected dialogues: the answer-token loss (with `other`: the paired gap
    other - answers) with its interval over dialogues (`summarize`), and for a run its token accuracy and
    exact-match rate; no number over fewer than `min_dialogues` dialogues."""
    select = dialogues_selected[dialogue]
    keys = dialogue[select]
    n = int(len(np.unique(keys)))
    row: dict[str, Any] = {"distance": label, "dialogues": n, "tokens": int(select.sum()), "loss": None, "ci": None}
    if n < options.min_dialogues:
        row["note"] = f"too few dialogues ({n} < {options.min_dialogues})"
        return row
    stats = summarize(select, answers, replace(options, min_tokens=0), other=other, groups=dialogue)
    row["loss"], row["ci"] = stats["loss"], stats["ci"]
    if other is None:
        row["token_accuracy"] = stats["accuracy"]
        row["exact_match"] = float(_exact(dialogue, answers.correct)[np.unique(keys)].mean())
    return row
