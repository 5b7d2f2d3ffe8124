"""Recall dialogues that scale: the memory task, thousands of conversations in seconds, in the `conversations`
layout (`omnittt preprocess conversations`), with text user turns or (`spoken`) user turns spoken by espeak-ng.

A dialogue states `facts` facts in its first exchanges ("Remember: the red door code is 4 7 1 9." -> "Noted."),
then `filler` exchanges of random words (or a number of them drawn from `min_filler..filler`: a mix of distances,
which a tiny model needs in order to discover retrieval at all), then asks for `queries` of the facts in a random
order ("What is the red door code?" -> "4 7 1 9"): multi-query associative recall, as in the Zoology benchmark;
facts never asked are the distractors. A code's digits appear nowhere else in the dialogue (fillers hold no
digits), so only what the model kept from the fact's exchange can answer. The reply to a question is the code
alone, so every answer token is scored. Each dialogue's `metadata.json` carries `recall.queries`: for each question
its exchange, the exchange of its fact and the answer text, which the manifest keeps and the recall probe reads.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from omnittt.atomic import atomic_directory, atomic_write_json
from omnittt.data.synthetic import CORPUS_RATE, VOICES, speak
from omnittt.errors import UserError

RECALL_DOMAIN = "recall"
MARKER = "recall_corpus.json"
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white", "brown", "grey")
THINGS = ("door", "box", "car", "safe", "gate", "locker", "bike", "phone", "case", "desk")
# filler vocabulary: common words, no digits and no number words, so no code leaks into the filler
FILLER_WORDS = ("apple", "river", "garden", "window", "music", "coffee", "letter", "summer", "table", "forest",
                "cloud", "market", "pencil", "bridge", "yellow", "morning", "silver", "paper", "island", "candle",
                "mountain", "kitchen", "doctor", "winter", "bottle", "street", "flower", "ocean", "chair", "story")
FILLER_REPLY = "Okay."
FACT_REPLY = "Noted."
STYLES = ("facts", "code")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class RecallCorpusSpec:
    """What the corpus holds. Distance from a fact to its question grows with `filler` (exchanges) and
    `filler_words` (words per filler user turn)."""

    dialogues: int = 1000
    seed: int = 0
    facts: int = 1
    queries: int | None = None  # facts asked per dialogue (None: all); the others are distractors
    filler: int = 4
    min_filler: int | None = None  # filler exchanges drawn uniformly from min_filler..filler (None: always filler)
    filler_words: int = 8
    digits: int = 4
    spoken: bool = False
    style: str = "facts"  # "facts": keyed facts and questions (above); "code": one code in number words (below)

    def check(self) -> None:
        if self.dialogues < 1:
            raise UserError("--dialogues must be at least 1", fix="e.g. --dialogues 1000")
        if not 1 <= self.facts <= len(COLOURS) * len(THINGS):
            raise UserError(f"--facts must be 1..{len(COLOURS) * len(THINGS)}, got {self.facts}", fix="e.g. --facts 4")
        if self.queries is not None and not 1 <= self.queries <= self.facts:
            raise UserError(f"--queries must be 1..{self.facts} (the facts stated), got {self.queries}",
                            fix="ask at most as many questions as there are facts")
        if self.style not in STYLES:
            raise UserError(f"--style must be one of {', '.join(STYLES)}, got {self.style!r}", fix="e.g. --style code")
        if self.style == "code" and (self.facts != 1 or self.queries not in (None, 1)):
            raise UserError("--style code states one code per dialogue", fix="drop --facts/--queries, or --style facts")
        if self.filler < 0 or self.filler_words < 1 or self.digits < 1:
            raise UserError("--filler must be >= 0, --filler-words and --digits >= 1", fix="e.g. --filler 4")
        if self.min_filler is not None and not 0 <= self.min_filler <= self.filler:
            raise UserError(f"--min-filler must be 0..{self.filler} (--filler), got {self.min_filler}",
                            fix="e.g. --min-filler 0 --filler 4 for distances mixed from short to long")


@dataclass(frozen=True)
class RecallDialogue:
    exchanges: list[tuple[str, str]]  # (user text, assistant reply)
    queries: list[dict[str, Any]]  # {"exchange", "fact_exchange", "answer", "key"}


def recall_dialogue(rng: random.Random, spec: RecallCorpusSpec) -> RecallDialogue:
    """One dialogue: the facts, the filler, the questions (in a random order)."""
    keys = rng.sample([f"{c} {t}" for c in COLOURS for t in THINGS], spec.facts)
    codes = [" ".join(str(rng.randrange(10)) for _ in range(spec.digits)) for _ in keys]
    exchanges = [(f"Remember: the {key} code is {code}.", FACT_REPLY) for key, code in zip(keys, codes, strict=True)]
    fillers = spec.filler if spec.min_filler is None else rng.randint(spec.min_filler, spec.filler)
    for _ in range(fillers):
        words = " ".join(rng.choice(FILLER_WORDS) for _ in range(spec.filler_words))
        exchanges.append((f"{words.capitalize()}.", FILLER_REPLY))
    asked = rng.sample(range(spec.facts), spec.queries or spec.facts)
    queries = []
    for fact in asked:
        queries.append({"exchange": len(exchanges), "fact_exchange": fact, "answer": codes[fact], "key": keys[fact]})
        exchanges.append((f"What is the {keys[fact]} code?", codes[fact]))
    return RecallDialogue(exchanges, queries)


def code_dialogue(rng: random.Random, spec: RecallCorpusSpec) -> RecallDialogue:
    """The `code` style, the synthetic corpus' recall dialogue in text: "Please remember this code: six six zero
    four." -> "Got it. I will remember six six zero four.", filler exchanges of random words, then "What was the
    code I gave you at the start?" -> "The code you gave me was six six zero four." The recall probe finds the code
    as the tail the two replies share (no query table)."""
    code = " ".join(rng.choice(NUMBER_WORDS) for _ in range(spec.digits))
    exchanges = [(f"Please remember this code: {code}.", f"Got it. I will remember {code}.")]
    fillers = spec.filler if spec.min_filler is None else rng.randint(spec.min_filler, spec.filler)
    for _ in range(fillers):
        words = " ".join(rng.choice(FILLER_WORDS) for _ in range(spec.filler_words))
        reply = " ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(3, 6)))
        exchanges.append((f"{words.capitalize()}.", f"{reply.capitalize()}."))
    exchanges.append(("What was the code I gave you at the start?", f"The code you gave me was {code}."))
    return RecallDialogue(exchanges, [])


def _write_dialogue(folder: Path, conversation_id: str, dialogue: RecallDialogue, spec: RecallCorpusSpec,
                    voice: str | None) -> None:
    folder.mkdir(parents=True)
    turns = []
    for k, (user, reply) in enumerate(dialogue.exchanges):
        turn: dict[str, Any] = {"turn_id": 2 * k, "speaker": "user", "role": "user", "text": user}
        if voice is not None:
            _speak_to(folder / f"turn_{2 * k}.wav", user, voice)
            turn["audio_file"] = f"turn_{2 * k}.wav"
        turns += [turn, {"turn_id": 2 * k + 1, "speaker": "assistant", "role": "assistant", "text": reply}]
    meta = {"conversation_id": conversation_id, "domain": RECALL_DOMAIN, "speakers": ["user", "assistant"],
            "recall": {"facts": spec.facts, **({"queries": dialogue.queries} if dialogue.queries else {})},
            "turns": turns}
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _speak_to(path: Path, text: str, voice: str) -> None:
    sf.write(path, speak(text, voice), CORPUS_RATE, subtype="PCM_16")


def make_recall_corpus(target: str | Path, spec: RecallCorpusSpec, progress: Any = None) -> int:
    """Write the corpus to `target` atomically (nothing under that name if interrupted); the same spec into the
    same folder again does nothing. Returns the number of dialogues."""
    spec.check()
    target = Path(target)
    if target.exists():
        marker = target / MARKER
        if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
            return spec.dialogues
        raise UserError(f"{target}: already exists and is not this recall corpus",
                        fix="choose another --to, or delete the folder")
    task = progress.add_task("recall dialogues", total=spec.dialogues) if progress is not None else None
    with atomic_directory(target) as tmp:
        for i in range(spec.dialogues):
            rng = random.Random(f"recall:{spec.seed}:{i}")
            conversation_id = f"recall_{i:06d}"
            voice = rng.choice(VOICES) if spec.spoken else None
            make = code_dialogue if spec.style == "code" else recall_dialogue
            _write_dialogue(tmp / "conversations" / conversation_id, conversation_id, make(rng, spec), spec, voice)
            if task is not None:
                progress.advance(task)
        atomic_write_json(tmp / MARKER, asdict(spec))
    return spec.dialogues
