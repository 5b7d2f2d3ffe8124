"""The multi-turn prompt builder: placeholders, label spans, the rendered template, per-exchange samples."""

from __future__ import annotations

import pytest

from omnittt.core.constants import IGNORE_INDEX, SPEECH_TOKEN_INDEX
from omnittt.core.prompt import (
    Exchange,
    PromptBuilder,
    concatenate,
    decode_with_speech,
    pair_turns,
    render_conversation,
)
from omnittt.core.tokenizer import chat_tokens

CONVERSATION = [
    Exchange(speech_segments=1, reply="Hello! I\u2019m fine, thanks."),
    Exchange(text="What is two plus two?", reply="Four."),
    Exchange(speech_segments=2, reply="See you tomorrow at 7."),
]


def _llama3_style_tokenizer(with_speech_token: bool):
    """A second, independently trained Llama-3-style tokenizer (optionally with a `<speech>` token, as
    LLaMA-Omni2's has), to show the builder never depends on the default one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|finetune_right_pad_id|>"] + (["<speech>"] if with_speech_token else [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Four. What is two plus two? See you tomorrow. Hello, thanks!"] * 3
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>")


@pytest.fixture(params=["default", "llama3-no-speech", "llama3-with-speech"])
def any_tokenizer(request, tokenizer):
    if request.param == "default":
        return tokenizer
    return _llama3_style_tokenizer(with_speech_token=request.param == "llama3-with-speech")


def _assistant_spans(tok, ids):
    """Independent oracle: indices of assistant bodies + their <eot>, found by scanning for headers."""
    t = chat_tokens(tok)
    trained, i = set(), 0
    while i < len(ids):
        if ids[i] == t.start_header:
            end = ids.index(t.end_header, i)
            role = tok.decode(ids[i + 1:end])
            body_start = end + 1 + len(tok.encode("\n\n", add_special_tokens=False))
            eot = ids.index(t.eot, body_start)
            if role == "assistant":
                trained.update(range(body_start, eot + 1))
            i = eot + 1
        else:
            i += 1
    return trained


def test_three_exchanges_placeholders_labels_and_template(any_tokenizer):
    tok = any_tokenizer
    builder = PromptBuilder(tok)
    whole = concatenate(builder.conversation(CONVERSATION))

    # one -200 per speech segment, and never a vocabulary id for <speech>
    assert whole.input_ids.count(SPEECH_TOKEN_INDEX) == 3
    speech_id = tok.get_vocab().get("<speech>")
    assert speech_id is None or speech_id not in whole.input_ids
    assert all(i >= 0 for i in whole.input_ids if i != SPEECH_TOKEN_INDEX)

    # every trained label is an assistant token or its <eot>; nothing else
    trained = {i for i, label in enumerate(whole.labels) if label != IGNORE_INDEX}
    assert trained == _assistant_spans(tok, whole.input_ids)
    assert all(whole.labels[i] == whole.input_ids[i] for i in trained)
    assert decode_with_speech(tok, [whole.input_ids[i] for i in sorted(trained)]).count("<|eot_id|>") == 3

    # decoding with -200 shown as <speech> gives exactly the rendered chat template
    assert decode_with_speech(tok, whole.input_ids) == render_conversation(tok, CONVERSATION)


def test_per_exchange_samples_concatenate_to_the_whole(any_tokenizer):
    builder = PromptBuilder(any_tokenizer)
    samples = builder.conversation(CONVERSATION)
    assert samples[0].prefix_len == len(builder.prefix()) > 0
    assert [s.prefix_len for s in samples[1:]] == [0, 0]
    # the whole conversation built independently: prefix + each exchange's turns
    ids = list(builder.prefix())
    for ex in CONVERSATION:
        ids += builder.generation_prompt(ex, first=False)
        ids += any_tokenizer.encode(ex.reply, add_special_tokens=False) + [chat_tokens(any_tokenizer).eot]
    assert concatenate(samples).input_ids == ids
    assert samples[1].input_ids[0] == chat_tokens(any_tokenizer).start_header  # no BOS after exchange 0


def test_generation_prompt_ends_in_assistant_header(tokenizer):
    builder = PromptBuilder(tokenizer)
    ids = builder.generation_prompt(Exchange(speech_segments=1), first=True)
    text = decode_with_speech(tokenizer, ids)
    assert text == render_conversation(tokenizer, [Exchange(speech_segments=1)], add_generation_prompt=True)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_empty_user_turn_and_missing_reply_are_refused(tokenizer):
    builder = PromptBuilder(tokenizer)
    with pytest.raises(ValueError):
        builder.exchange(Exchange(reply="hi"), first=True)
    with pytest.raises(ValueError):
        builder.exchange(Exchange(speech_segments=1), first=True)


@pytest.mark.parametrize(
    "roles, exchanges, dropped",
    [
        (["user", "assistant", "user", "assistant"], [(0, 1), (2, 3)], []),
        (["user", "assistant", "user"], [(0, 1)], [(2, "no_reply")]),
        (["assistant", "user", "assistant"], [(1, 2)], [(0, "no_user_turn")]),
        (["user", "user", "assistant"], [(1, 2)], [(0, "no_reply")]),
        (["user", "assistant", "assistant"], [(0, 1)], [(2, "no_user_turn")]),
        ([], [], []),
    ],
)
def test_pair_turns(roles, exchanges, dropped):
    paired = pair_turns(roles)
    assert paired.exchanges == exchanges
    assert paired.dropped == dropped
