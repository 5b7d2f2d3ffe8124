"""Tokenizers: load any Hugging Face tokenizer from a local directory, or build the default offline one
(byte-level BPE with Llama-3 special tokens and LLaMA-Omni's chat template; deterministic, no download).

The model's vocabulary size is `len(tokenizer)`. `tokenizer_fingerprint` identifies a tokenizer by what it
does (vocab, merges, added tokens, chat template), not by its file bytes, so datasets, runs and models can
refuse to mix tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from omnittt.core.constants import (
    BOS_TOKEN,
    END_HEADER_TOKEN,
    EOS_TOKEN,
    EOT_TOKEN,
    PAD_TOKEN,
    START_HEADER_TOKEN,
    SYSTEM_PROMPT,
)
from omnittt.errors import UserError

DEFAULT_TOKENIZER_NAME = "omnittt-bpe"
DEFAULT_VOCAB_SIZE = 2048
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, EOT_TOKEN, PAD_TOKEN]

# LLaMA-Omni's `conv_llama_3`: BOS, one system block (LLaMA-Omni's prompt unless the messages bring one),
# then `<|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>` per message. No "Cutting Knowledge
# Date" block (that is Hugging Face's Llama-3.1 template, not what LLaMA-Omni was trained with).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '" + SYSTEM_PROMPT + "' %}{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- '" + START_HEADER_TOKEN + "system" + END_HEADER_TOKEN + "\\n\\n' + system_message | trim + '"
    + EOT_TOKEN + "' }}"
    "{%- for message in loop_messages %}"
    "{{- '" + START_HEADER_TOKEN + "' + message['role'] + '" + END_HEADER_TOKEN
    + "\\n\\n' + message['content'] | trim + '" + EOT_TOKEN + "' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + START_HEADER_TOKEN + "assistant" + END_HEADER_TOKEN
    + "\\n\\n' }}{%- endif %}"
)

# Text the default BPE is trained on: conversational English, the system prompt, digits and names, so the
# synthetic corpus and short replies tokenise compactly. Changing it changes the fingerprint.
_CORPUS = [
    SYSTEM_PROMPT,
    "Hello! How are you today? I am fine, thank you. What is your name? My name is Anna.",
    "Can you tell me the weather for tomorrow? It will be sunny in the morning and rainy at night.",
    "I would like to book a table for two people at seven o'clock this evening, please.",
    "The number you said was forty two. Please remember the code: three, seven, nine.",
    "What did I tell you at the start of our conversation? You said your favourite colour is blue.",
    "Sure, I can help with that. Let me think about it for a moment. Here is what I found.",
    "Yes. No. Maybe. Of course! Thanks a lot. You're welcome. Goodbye, see you later.",
    "zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
    "sixty seventy eighty ninety hundred thousand first second third last",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December morning afternoon evening night today tomorrow yesterday",
    "Alice Bob Carol David Emma Frank Grace Henry Isabel Jack Kate Leo Maria Noah Olivia Paul Rosa Sam "
    "Tom Victor London Paris Berlin Madrid Rome Tokyo cars music travel food health sports movies books",
    "red green blue yellow orange purple black white cat dog bird fish apple bread coffee tea water",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "I remember that. You mentioned it earlier. The answer is in what you said before. Let me recall.",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 50% $20 #1 (yes) [no] {ok} \"quoted\" 'single' - / : ; , . ! ?",
]


@dataclass(frozen=True)
class ChatTokens:
    """Ids of the special tokens the prompt builder needs, resolved once per tokenizer."""

    bos: int
    start_header: int
    end_header: int
    eot: int
    pad: int


def build_default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Any:
    """The offline default: byte-level BPE trained on a fixed corpus (deterministic), Llama-3 special
    tokens, LLaMA-Omni's chat template and a real pad token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        name_or_path=DEFAULT_TOKENIZER_NAME,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Load a Hugging Face tokenizer from a local directory (never the hub)."""
    path = Path(path)
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        raise UserError(
            f"{path}: no tokenizer here (tokenizer.json / tokenizer_config.json missing)",
            fix="point --tokenizer at a local Hugging Face tokenizer directory, or leave it out for the default",
        )
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    chat_tokens(tok)  # fail early, naming the missing special token
    return tok


def tokenizer_name(tok: Any) -> str:
    return Path(str(getattr(tok, "name_or_path", "") or DEFAULT_TOKENIZER_NAME)).name or DEFAULT_TOKENIZER_NAME


def chat_tokens(tok: Any) -> ChatTokens:
    """Resolve the Llama-3 special tokens; the pad is the tokenizer's pad token if it is a real, distinct
    token, else `<|finetune_right_pad_id|>` (never id 0 by accident)."""
    vocab = tok.get_vocab()

    def need(token: str) -> int:
        if token not in vocab:
            raise UserError(
                f"tokenizer {tokenizer_name(tok)!r} has no {token} token",
                fix="use a Llama-3-style tokenizer (or the default one)",
            )
        return vocab[token]

    pad = tok.pad_token_id
    if pad is None or tok.pad_token in (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN):
        pad = need(PAD_TOKEN)
    return ChatTokens(
        bos=need(BOS_TOKEN),
        start_header=need(START_HEADER_TOKEN),
        end_header=need(END_HEADER_TOKEN),
        eot=need(EOT_TOKEN),
        pad=int(pad),
    )


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of a canonical JSON of vocab, merges, added/special tokens and chat template."""
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend.get("model", {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", []) or []]
    added = sorted(
        (int(i), t.content, bool(t.special)) for i, t in getattr(tok, "added_tokens_decoder", {}).items()
    )
    canonical = {
        "vocab": sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0])),
        "merges": merges,
        "added_tokens": added,
        "special_tokens": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
        "chat_template": tok.chat_template or "",
    }
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokenizer_settings(tok: Any) -> dict[str, Any]:
    """The tokenizer facts a dataset, run or model records (docs/data_format.md: `preprocessing_stats.json`
    settings)."""
    return {
        "tokenizer_name": tokenizer_name(tok),
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
    }
