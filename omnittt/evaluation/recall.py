"""The recall probe on the synthetic recall dialogues (`omnittt.data.synthetic`, domain "recall"): the user gives
a code in the dialogue's first exchange ("Please remember this code: three one four."), filler exchanges follow,
and the last reply repeats it ("The code you gave me was three one four."). The answer tokens are the code in
that last reply: the common tail of the two replies' target tokens, without the final punctuation and
end-of-turn. For each dialogue (inside whatever session the stage packed it into) the probe reports the
teacher-forced loss of the answer tokens, whether every answer token is the greedy (argmax) prediction (exact
match), and the distance to the fact in turns and in positions; and the paired gap between two runs on the same
answer tokens (e.g. TTT state reset every turn minus carried), with a bootstrap interval over dialogues.
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


def _targets(labels: Any) -> list[int]:
    """Target token ids in the order the scorer numbers them (labels shifted by one, as the loss)."""
    return [int(t) for t in labels[1:].tolist() if int(t) != IGNORE_INDEX]


def _answer_span(fact: list[int], answer: list[int], tokenizer: Any) -> tuple[int, int]:
    """[start, end) in `answer` of the code: the common tail of both replies' targets, trimmed of tokens that
    are special or only punctuation/space."""
    tail = 0
    while tail < min(len(fact), len(answer)) and fact[-1 - tail] == answer[-1 - tail]:
        tail += 1
    start, end = len(answer) - tail, len(answer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def empty(token: int) -> bool:
        text = tokenizer.decode([token], skip_special_tokens=True).strip()
        return token in special or not any(ch.isalnum() for ch in text)

    while end > start and empty(answer[end - 1]):
        end -= 1
    while start < end and empty(answer[start]):
        start += 1
    return start, end


def find_recall_items(dataset: Any, tokenizer: Any) -> list[RecallItem]:
    """Every complete recall dialogue of a `ConversationDataset` (its first and last exchange inside one
    loader conversation), found through the index and the manifest's `domain`."""
    store = dataset.store
    domain = {entry.get("conversation_id"): entry.get("domain") for entry in store.manifest}
    turns_of = {entry.get("conversation_id"): int(entry.get("num_turns", 0)) for entry in store.manifest}
    items = []
    for c, conv in enumerate(dataset.conversations):
        runs: dict[str, list[tuple[int, int]]] = {}  # dialogue -> [(exchange in session, sample id)]
        for k, ref in enumerate(conv.exchanges):
            entry = store.entry(ref.sample_id)
            runs.setdefault(entry["conversation_id"], []).append((k, ref.sample_id))
        for dialogue, exchanges in runs.items():
            if domain.get(dialogue) != RECALL_DOMAIN or len(exchanges) < 2 or len(exchanges) != turns_of.get(dialogue):
                continue
            (k0, fact_id), (k1, answer_id) = exchanges[0], exchanges[-1]
            fact, answer = _targets(store.load(fact_id)["labels"]), _targets(store.load(answer_id)["labels"])
            start, end = _answer_span(fact, answer, tokenizer)
            if end <= start:
                continue
            items.append(RecallItem(dialogue, c, k0, k1, tuple(range(start, end)),
                                    tokenizer.decode(answer[start:end]).strip()))
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
        out["runs"].append({"name": name, **rows})
    for a, b in pairs or []:
        em_a, em_b = _exact(dialogue, answers[a].correct), _exact(dialogue, answers[b].correct)
        gap = {key: [_row(label, sel, dialogue, answers[a], options, other=answers[b]) for label, sel in spec]
               for key, spec in groups.items()}
        out["gaps"].append({"name": f"{names[b]} - {names[a]}", "a": names[a], "b": names[b],
                            "meaning": f"answer-token loss of {names[b]} minus {names[a]} (> 0: {names[a]} "
                                       "recalls better); exact_match_gain: exact-match rate of a minus b",
                            "exact_match_gain": float(em_a.mean() - em_b.mean()), **gap})
    return out


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
