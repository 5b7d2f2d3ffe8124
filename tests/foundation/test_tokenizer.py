"""The default offline tokenizer and the tokenizer fingerprint."""

from __future__ import annotations

from omnittt.core.constants import PAD_TOKEN
from omnittt.core.tokenizer import (
    build_default_tokenizer,
    chat_tokens,
    load_tokenizer,
    tokenizer_fingerprint,
    tokenizer_settings,
)


def test_default_tokenizer_is_deterministic_and_round_trips(tmp_path, tokenizer):
    again = build_default_tokenizer()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)
    text = "Hello, I\u2019m Anna. The code is 3-7-9; caf\u00e9!"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text

    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    # save_pretrained may rewrite files; the fingerprint is about behaviour, not bytes
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
    assert len(loaded) == len(tokenizer) == tokenizer_settings(tokenizer)["vocab_size"]


def test_pad_is_a_real_distinct_token(tokenizer):
    ids = chat_tokens(tokenizer)
    assert ids.pad == tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    assert ids.pad != 0 and len({ids.bos, ids.eot, ids.pad, ids.start_header, ids.end_header}) == 5


def test_fingerprint_changes_with_the_chat_template(tokenizer):
    other = build_default_tokenizer()
    other.chat_template = other.chat_template.replace("system", "System")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_fingerprint_changes_with_the_vocab(tokenizer):
    assert tokenizer_fingerprint(build_default_tokenizer(vocab_size=400)) != tokenizer_fingerprint(tokenizer)


def test_missing_directory_is_a_user_error(tmp_path):
    import pytest

    from omnittt.errors import UserError

    with pytest.raises(UserError, match="no tokenizer here"):
        load_tokenizer(tmp_path / "nope")
