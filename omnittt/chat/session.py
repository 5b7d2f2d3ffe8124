"""A spoken conversation with a trained model whose TTT state persists across turns (`omnittt chat`).

`ChatSession` holds the model, tokenizer, feature extractor and the conversation's `TTTCache`. A user turn (audio
and/or text) is laid out exactly as one training exchange (`PromptBuilder.generation_prompt`, BOS + system prompt
only on the first exchange), the reply is generated with the model's `generate()` continuing the cache, and then
the reply's final `<eot>` goes through the model and `cache.end_turn()` commits the pending partial mini-batch
exactly as the alignment padding of a training sample does (with a sliding attention window the masked pads are
fed as in training, because the window counts their slots). So after every exchange the TTT state and the
attention KV are the ones training produced for the same exchange (nothing is ever zero-padded into the state).
A reply cut by `max_new_tokens` or by `interrupt()` is closed the same way (its last token, then `<eot>`), so
the conversation stays in the training format.

`save(file)` / `load(file)` write and read the conversation state (TTT state, KV, counters, transcript) as
safetensors with a small JSON header: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from omnittt.atomic import atomic_write
from omnittt.chat.generation import GenerationSettings
from omnittt.core.constants import SYSTEM_PROMPT
from omnittt.core.exchange_stream import ExchangeStream
from omnittt.core.features import build_feature_extractor, log_mel
from omnittt.core.prompt import Exchange, PromptBuilder
from omnittt.core.speech import SAMPLE_RATE, padding_for, split_segments
from omnittt.core.tokenizer import tokenizer_fingerprint
from omnittt.core.ttt_cache import TTTCache
from omnittt.core.ttt_config import TTTConfig
from omnittt.data.audio import AudioError, load_audio, prepare_waveform
from omnittt.errors import UserError

STATE_FORMAT = "omnittt-chat-state"
STATE_VERSION = 1
HEADER_KEY = "omnittt_chat"  # safetensors metadata key holding the JSON header
# config keys a saved state depends on: a state only loads into a model that agrees on all of them
_STATE_CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                      *TTTConfig.STATE_KEYS, "vocab_size")


# -- results ----------------------------------------------------------------------------------------------------
@dataclass
class ChatReply:
    """One exchange as chat ran it."""

    user: str  # what the user turn held, for the transcript ("audio a.wav (2.1 s)", the typed text, or both)
    text: str  # the reply, without its final <eot>
    token_ids: list[int]
    stop_reason: str  # "eot" | "max_new_tokens" | "interrupted"
    prompt_positions: int  # LLM positions of the user turn (speech positions included)
    positions: int  # real positions of the conversation after this exchange
    seconds: float  # prompt + reply + closing the exchange
    first_token_seconds: float | None


class _Streamer(BaseStreamer):
    """Receives generate()'s tokens (the first `put` is the prompt, skipped) and reports text deltas; a piece
    ending in an incomplete UTF-8 sequence is held back until the next token completes it."""

    def __init__(self, tokenizer: Any, eot: int, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer = tokenizer
        self.eot = eot
        self.on_text = on_text
        self.tokens: list[int] = []
        self.shown = 0
        self.prompt_done = False
        self.first_token_time: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:
            self.prompt_done = True
            return
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist() if int(t) != self.eot)
        if self.on_text is None:
            return
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.shown:
            self.on_text(text[self.shown:])
            self.shown = len(text)

    def end(self) -> None:
        pass


class _Interrupted(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# -- the session ------------------------------------------------------------------------------------------------
class ChatSession:
    """One conversation (batch of one) with persistent TTT state. Build it with `open_chat(...)` or directly
    from a model, its tokenizer and feature extractor."""

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any = None,
                 generation: GenerationSettings | None = None, system_prompt: str = SYSTEM_PROMPT,
                 source: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor or build_feature_extractor(
            model.config.speech_config.num_mel_bins)
        self.generation = generation or GenerationSettings()
        self.builder = PromptBuilder(tokenizer, system_prompt)
        self.source = source
        # what training samples were padded to: the TTT mini-batch (open_chat takes a run's recorded dataset
        # setting, which for an attention-only baseline is the only place it is kept)
        self.alignment = int(model.config.text_config.ttt_mini_batch_size)
        self.device = next(model.parameters()).device
        self.stream = ExchangeStream(model)
        self.history: list[dict[str, Any]] = []  # per exchange: user, reply, stop_reason, positions
        self._interrupt = threading.Event()
        self._broken: str | None = None
        if self.generation.seed is not None:
            torch.manual_seed(self.generation.seed)

    # -- conversation ------------------------------------------------------------------------------------------
    @property
    def turns(self) -> int:
        """Exchanges in the state so far (0: the next user turn carries BOS + system prompt)."""
        return len(self.history)

    @property
    def cache(self) -> TTTCache:
        return self.stream.cache

    @property
    def positions(self) -> int:
        """Real positions of the conversation so far (what attention counts; the TTT stream position adds the
        end-of-exchange alignment)."""
        return self.cache.real_positions()

    def interrupt(self) -> None:
        """Stop the reply being generated after its current token (safe from a signal handler or another
        thread); the exchange is then closed as usual."""
        self._interrupt.set()

    def reset(self) -> None:
        """A new conversation: TTT state back to the learned init, KV and counters emptied."""
        self.cache.reset()
        self.history = []
        self._broken = None

    @torch.no_grad()
    def user_turn(self, audio: str | os.PathLike | np.ndarray | torch.Tensor | None = None, text: str = "",
                  sample_rate: int = SAMPLE_RATE, on_text: Callable[[str], None] | None = None,
                  label: str | None = None, **generate_overrides: Any) -> ChatReply:
        """Run one exchange: the user turn (`audio`: a file path of any format soundfile reads, any rate and
        channels, or a waveform at `sample_rate`, `[n]` or `[n, channels]`; and/or `text`), the reply streamed to
        `on_text` piece by piece, then the closing `<eot>` through the model and `end_turn()`. `label` names the
        audio in the transcript (default: the file name). `generate_overrides` go to `generate()` as they are."""
        if self._broken:
            raise UserError(f"the conversation state is unusable: {self._broken}", fix="/reset or /load a saved state")
        wave, described = self._speech(audio, sample_rate, label)
        text = (text or "").strip()
        if not len(wave) and not text:
            raise UserError("a user turn needs audio or text", fix="type a message or give an audio file")
        lengths = split_segments(len(wave)) if len(wave) else []
        chunks = list(np.split(wave, np.cumsum(lengths)[:-1])) if lengths else []
        prompt = self.builder.generation_prompt(Exchange(len(chunks), text), first=self.turns == 0)
        features = feature_lengths = None
        if chunks:
            features, feature_lengths = log_mel(chunks, self.feature_extractor)
            features, feature_lengths = features.to(self.device), feature_lengths.to(self.device)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        eot = self.builder.tokens.eot
        streamer = _Streamer(self.tokenizer, eot, on_text)
        kwargs = {**self.generation.generate_kwargs(), **generate_overrides}
        self._interrupt.clear()
        start = time.perf_counter()
        before = self.positions
        try:
            new = self.stream.generate(
                ids, input_features=features, feature_lengths=feature_lengths, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Interrupted(self._interrupt)]),
                eos_token_id=eot, pad_token_id=self.builder.tokens.pad, **kwargs,
            )[0].tolist()
            prompt_positions = self.positions - before - max(len(new) - 1, 0)
            # generate() never feeds its last token: feed it (unless it is the <eot> itself), then the <eot>
            # that closes the exchange, then commit the partial mini-batch as a training sample's padding does.
            if new and new[-1] == eot:
                reply, closing, reason = new[:-1], [eot], "eot"
            else:
                reply, closing = new, [*new[-1:], eot]
                reason = "interrupted" if self._interrupt.is_set() else "max_new_tokens"
            self.stream.feed_text(torch.tensor([closing], device=self.device), logits_to_keep=1)
            self._close_exchange()
        except BaseException as exc:
            # a failure inside the model leaves some layers updated and others not: refuse to go on silently
            self._broken = f"turn {self.turns + 1} failed inside the model ({exc.__class__.__name__})"
            raise
        finally:
            self._interrupt.clear()
        seconds = time.perf_counter() - start
        first = streamer.first_token_time - start if streamer.first_token_time is not None else None
        user = " + ".join(part for part in (described, text) if part)
        result = ChatReply(user=user, text=self.tokenizer.decode(reply, skip_special_tokens=True).strip(),
                           token_ids=reply, stop_reason=reason, prompt_positions=prompt_positions,
                           positions=self.positions, seconds=seconds, first_token_seconds=first)
        self.history.append({"user": user, "reply": result.text, "stop_reason": reason,
                             "positions": result.positions})
        return result

    def _close_exchange(self) -> None:
        """End the exchange where a training sample ends. `end_turn()` commits the TTT state exactly as the
        alignment pads would, and full attention never sees pads, so that is all it takes. A sliding attention
        window, however, counts the (masked) pad slots training put in the KV: there the pads are fed, masked,
        as training feeds them, so the window holds what it held in training (and TTT sees the same padding)."""
        if self.model.config.text_config.attention_window:
            pads = padding_for(self.cache.get_seq_length(), self.alignment)
            if pads:
                ids = torch.full((1, pads), self.builder.tokens.pad, dtype=torch.long, device=self.device)
                self.stream.feed_text(ids, torch.zeros_like(ids), logits_to_keep=1)
        self.cache.end_turn()

    def _speech(self, audio: Any, sample_rate: int, label: str | None) -> tuple[np.ndarray, str]:
        """(16 kHz mono float32 waveform, its description for the transcript)."""
        if audio is None:
            return np.zeros(0, dtype=np.float32), ""
        if isinstance(audio, (str, os.PathLike)):
            try:
                loaded = load_audio(audio)
            except AudioError as exc:
                raise UserError(f"{exc.path}: {exc.reason.replace('_', ' ')}"
                                + (f" ({exc.detail})" if exc.detail else ""),
                                fix="give a readable wav/flac/ogg/mp3 file") from None
            name = label or Path(audio).name
            return loaded.samples, f"audio {name} ({loaded.duration:.1f} s)"
        data = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        try:
            wave, _ = prepare_waveform(data, int(sample_rate))
        except ValueError as exc:
            raise UserError(f"{label or 'audio'}: {exc}", fix="record or load the audio again") from None
        if len(wave) == 0:
            raise UserError(f"{label or 'audio'}: no samples", fix="record for longer")
        return wave, f"{label or 'audio'} ({len(wave) / SAMPLE_RATE:.1f} s)"

    # -- inspection ----------------------------------------------------------------------------------------------
    def state_summary(self) -> dict[str, Any]:
        """Per layer: TTT state norms (the learned init before the first turn), dtype, stream position and pending
        tokens; attention KV positions held and bytes. Plus the conversation counters."""
        modules = self.model.language_model.model.ttt_modules()
        initial = {m.layer_idx: {k: getattr(m, k) for k in m.state_keys} for m in modules}
        summary = self.cache.summary(initial)
        for entry in summary["layers"]:
            if entry["kind"] == "ttt":
                entry["kind"] = f"ttt-{self.model.config.text_config.ttt_type}"
        return {"turns": self.turns, "positions": self.positions,
                "attention_window": self.model.config.text_config.attention_window, **summary}

    # -- save / load ---------------------------------------------------------------------------------------------
    def model_fingerprint(self) -> dict[str, Any]:
        text = self.model.config.text_config
        return {**{key: getattr(text, key, None) for key in _STATE_CONFIG_KEYS},
                "tokenizer": tokenizer_fingerprint(self.tokenizer)[:16],
                "weights": _weights_fingerprint(self.model)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation state (between turns) to `path` as safetensors, atomically."""
        try:
            tensors, cache_info = self.cache.state_dict()
        except ValueError as exc:
            raise UserError(f"cannot save: {exc}", fix="save between turns") from None
        header = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "model": self.model_fingerprint(),
            "history": self.history, **cache_info,
        }
        path = Path(path)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)}))
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Replace the conversation with the one saved in `path` (refused if it was saved with another model)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file", fix="give a file written by /save")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a safetensors file ({exc.__class__.__name__})",
                            fix="give a file written by /save") from None
        try:
            header = json.loads(metadata[HEADER_KEY])
        except (KeyError, json.JSONDecodeError):
            raise UserError(f"{path}: no chat-state header", fix="give a file written by /save") from None
        if header.get("format") != STATE_FORMAT or header.get("version") != STATE_VERSION:
            raise UserError(f"{path}: chat state format {header.get('format')} v{header.get('version')}, "
                            f"this omnittt reads {STATE_FORMAT} v{STATE_VERSION}",
                            fix="save it again with this omnittt")
        mine = self.model_fingerprint()
        differ = [f"{k} {header['model'].get(k)!r} vs {v!r}" for k, v in mine.items() if header["model"].get(k) != v]
        if differ:
            raise UserError(f"{path}: saved with another model ({'; '.join(differ[:3])})",
                            fix="load it into the model (and --attention-window) it was saved with")
        cache = self.model.new_cache()
        cache.load_state_dict(tensors, header, self.device)
        self.stream.cache = cache
        self.history = list(header.get("history", []))
        self._broken = None


def _weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the weights (a state saved with other weights would continue nonsense): sha256 over
    a few values of every parameter."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        picks = flat[:: max(1, flat.numel() // 8)][:8].float().cpu().numpy()
        digest.update(name.encode())
        digest.update(picks.tobytes())
    return digest.hexdigest()[:16]
