"""The multi-turn prompt builder (LLaMA-Omni's Llama-3 format, extended to many exchanges).

A conversation is a list of exchanges; exchange k is one user turn (speech segments and/or text) plus the
assistant reply. One sample = one exchange:

    [BOS + system block, only for k == 0] <user header> <speech>... <eot> <assistant header> reply <eot>

Each `<speech>` segment is the placeholder id -200 (never a vocabulary id, whatever the tokenizer holds).
Labels train only the assistant body and its `<eot>`. Ids are built piece by piece rather than by
tokenising the rendered template, so that concatenating per-exchange samples gives exactly the whole
conversation's ids (a property the tests check against the rendered template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omnittt.core.constants import (
    ASSISTANT_ROLE,
    DEFAULT_SPEECH_TOKEN,
    IGNORE_INDEX,
    SPEECH_TOKEN_INDEX,
    SYSTEM_PROMPT,
    SYSTEM_ROLE,
    USER_ROLE,
)
from omnittt.core.tokenizer import CHAT_TEMPLATE, chat_tokens


@dataclass(frozen=True)
class Exchange:
    """One user turn and the assistant's reply. `speech_segments` placeholders come first, then `text`."""

    speech_segments: int = 0
    text: str = ""
    reply: str | None = None

    def user_content(self) -> str:
        speech = DEFAULT_SPEECH_TOKEN * self.speech_segments
        return "\n".join(part for part in (speech, self.text.strip()) if part)


@dataclass
class PromptSample:
    """Token ids of one exchange (or a whole conversation) before speech splicing and padding."""

    input_ids: list[int]
    labels: list[int]
    prefix_len: int = 0  # leading BOS + system tokens (exchange 0 only)

    @property
    def n_speech(self) -> int:
        return sum(1 for i in self.input_ids if i == SPEECH_TOKEN_INDEX)


@dataclass
class PairedTurns:
    """Speaker turns grouped into exchanges, with the turns that could not be paired."""

    exchanges: list[tuple[int, int]] = field(default_factory=list)  # (user turn index, assistant turn index)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (turn index, "no_reply" | "no_user_turn")


def pair_turns(roles: Sequence[str]) -> PairedTurns:
    """Pair each user turn with the assistant turn right after it. A user turn not followed by a reply is
    dropped as `no_reply`; an assistant turn with no user turn before it as `no_user_turn`."""
    paired = PairedTurns()
    pending: int | None = None
    for index, role in enumerate(roles):
        if role == USER_ROLE:
            if pending is not None:
                paired.dropped.append((pending, "no_reply"))
            pending = index
        elif role == ASSISTANT_ROLE:
            if pending is None:
                paired.dropped.append((index, "no_user_turn"))
            else:
                paired.exchanges.append((pending, index))
                pending = None
        else:
            raise ValueError(f"unknown role {role!r}")
    if pending is not None:
        paired.dropped.append((pending, "no_reply"))
    return paired


class PromptBuilder:
    """Builds ids and labels for exchanges with one tokenizer (special ids resolved once)."""

    def __init__(self, tokenizer: Any, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.tokens = chat_tokens(tokenizer)
        self._header_cache: dict[str, list[int]] = {}

    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _header(self, role: str) -> list[int]:
        if role not in self._header_cache:
            t = self.tokens
            self._header_cache[role] = [t.start_header, *self._text(role), t.end_header, *self._text("\n\n")]
        return self._header_cache[role]

    def prefix(self) -> list[int]:
        """BOS + the system block: what exchange 0 carries in front."""
        return [self.tokens.bos, *self._header(SYSTEM_ROLE), *self._text(self.system_prompt.strip()),
                self.tokens.eot]

    def user_turn(self, exchange: Exchange) -> list[int]:
        ids = list(self._header(USER_ROLE))
        ids += [SPEECH_TOKEN_INDEX] * exchange.speech_segments
        text = exchange.text.strip()
        if text:
            ids += self._text(("\n" if exchange.speech_segments else "") + text)
        if not exchange.speech_segments and not text:
            raise ValueError("a user turn needs speech or text")
        return [*ids, self.tokens.eot]

    def exchange(self, exchange: Exchange, first: bool) -> PromptSample:
        """One exchange as a sample; `first` adds BOS + system prompt (exchange 0)."""
        if exchange.reply is None:
            raise ValueError("an exchange sample needs the assistant reply (use generation_prompt otherwise)")
        prefix = self.prefix() if first else []
        context = prefix + self.user_turn(exchange) + self._header(ASSISTANT_ROLE)
        body = self._text(exchange.reply.strip()) + [self.tokens.eot]
        return PromptSample(
            input_ids=context + body,
            labels=[IGNORE_INDEX] * len(context) + body,
            prefix_len=len(prefix),
        )

    def conversation(self, exchanges: Sequence[Exchange]) -> list[PromptSample]:
        """Per-exchange samples of a whole conversation (exchange 0 carries the prefix)."""
        return [self.exchange(ex, first=(k == 0)) for k, ex in enumerate(exchanges)]

    def generation_prompt(self, exchange: Exchange, first: bool) -> list[int]:
        """The user turn followed by the assistant header, for generating the reply."""
        prefix = self.prefix() if first else []
        return prefix + self.user_turn(exchange) + self._header(ASSISTANT_ROLE)


def concatenate(samples: Sequence[PromptSample]) -> PromptSample:
    ids: list[int] = []
    labels: list[int] = []
    for sample in samples:
        ids += sample.input_ids
        labels += sample.labels
    return PromptSample(ids, labels, samples[0].prefix_len if samples else 0)


def decode_with_speech(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode ids with every -200 shown as `<speech>` (special tokens kept)."""
    pieces: list[str] = []
    run: list[int] = []
    for token in ids:
        if token == SPEECH_TOKEN_INDEX:
            pieces.append(tokenizer.decode(run, skip_special_tokens=False) + DEFAULT_SPEECH_TOKEN)
            run = []
        else:
            run.append(int(token))
    pieces.append(tokenizer.decode(run, skip_special_tokens=False))
    return "".join(pieces)


def render_conversation(
    tokenizer: Any, exchanges: Sequence[Exchange], system_prompt: str = SYSTEM_PROMPT,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as text through the chat template (what `decode_with_speech` must reproduce)."""
    messages = [{"role": SYSTEM_ROLE, "content": system_prompt}]
    for ex in exchanges:
        messages.append({"role": USER_ROLE, "content": ex.user_content()})
        if ex.reply is not None:
            messages.append({"role": ASSISTANT_ROLE, "content": ex.reply})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=CHAT_TEMPLATE, add_generation_prompt=add_generation_prompt
    )
