"""omnittt chat: a conversation from audio files of any rate/channels, state that grows, resets, saves and loads
exactly, and TTT state equal to the training forward of the same exchanges (an untrained tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from omnittt.core.constants import IGNORE_INDEX
from omnittt.core.prompt import Exchange
from omnittt.core.speech import padding_for, sample_positions, split_segments
from omnittt.errors import UserError

MINI_BATCH = 16  # small, so exchanges end inside mini-batches and cross several boundaries
SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from omnittt.core.features import build_feature_extractor
    from omnittt.core.presets import build_model
    from omnittt.core.tokenizer import build_default_tokenizer

    torch.manual_seed(0)
    model = build_model("tiny", ttt_mini_batch_size=MINI_BATCH)
    path = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(path)
    build_default_tokenizer().save_pretrained(path)
    build_feature_extractor(model.config.speech_config.num_mel_bins).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> list[Path]:
    """Three user turns in three formats, rates and channel counts."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)

    def voiced(seconds: float, rate: int, pitch: float) -> np.ndarray:
        t = np.arange(int(seconds * rate)) / rate
        return (0.3 * np.sin(2 * np.pi * pitch * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)

    files = [
        (folder / "one.wav", np.stack([voiced(0.9, 24000, 180), voiced(0.9, 24000, 190)], axis=1), 24000),
        (folder / "two.flac", voiced(0.7, 44100, 240), 44100),
        (folder / "three.ogg", np.stack([voiced(1.1, 8000, 150), 0.05 * rng.standard_normal(8800)], axis=1)
         .astype(np.float32), 8000),
    ]
    for path, data, rate in files:
        sf.write(path, data, rate)
    return [path for path, _, _ in files]


@pytest.fixture(scope="module")
def chat(model_dir):
    """A factory of sessions on one loaded model (greedy, short replies)."""
    from omnittt.chat import open_chat

    session, _ = open_chat(model_dir=model_dir, device="cpu",
                           generation={"temperature": 0.0, "max_new_tokens": 3})

    def fresh():
        session.reset()
        return session

    return fresh


def ttt_states(cache) -> dict[str, torch.Tensor]:
    return {f"{idx}.{key}": value for idx, layer in cache.ttt_layers() for key, value in layer.state.items()}


def next_turn_logits(session, text: str) -> torch.Tensor:
    """Logits of the next user turn's prompt, on a copy of the session's cache (the session is left as is)."""
    import copy

    prompt = session.builder.generation_prompt(Exchange(0, text), first=session.turns == 0)
    with torch.no_grad():
        out = session.model(input_ids=torch.tensor([prompt]), past_key_values=copy.deepcopy(session.cache),
                            use_cache=True)
    return out.logits


# -- the scripted conversation ------------------------------------------------------------------------------------
def test_script_runs_three_audio_turns_with_reset_save_and_load(model_dir, audio_files, tmp_path):
    from omnittt.cli.app import app

    script = tmp_path / "talk.txt"
    names = [str(p) for p in audio_files]
    script.write_text("\n".join([
        "# three turns from files of different rates and channels",
        names[0], names[1], "/state", names[2], "/state", "/save saved.safetensors",
        "/reset", "/state", "/load saved.safetensors", "/state", "and one typed turn", "/quit",
        "never reached",
    ]) + "\n")
    transcript = tmp_path / "transcript.jsonl"
    result = CliRunner().invoke(app, ["chat", "--model", str(model_dir), "--script", str(script), "--temperature",
                                      "0", "--max-new-tokens", "3", "--device", "cpu", "--transcript",
                                      str(transcript)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    turns = [e for e in events if e["event"] == "turn"]
    states = [e for e in events if e["event"] == "state"]
    assert [t["user"].split()[1] for t in turns[:3]] == ["one.wav", "two.flac", "three.ogg"]
    assert turns[3]["user"] == "and one typed turn"
    # positions seen grow turn by turn, in attention and in every TTT layer's stream
    positions = [t["positions"] for t in turns[:3]]
    assert positions[0] > 0 and positions == sorted(set(positions))
    assert [s["positions"] for s in states[:2]] == [positions[1], positions[2]]
    streams = [[layer["stream_position"] for layer in s["layers"] if "stream_position" in layer] for s in states]
    assert all(a < b for a, b in zip(streams[0], streams[1], strict=True))
    assert all(p % MINI_BATCH == 0 for p in streams[1])  # each exchange closed on a mini-batch boundary
    # /reset: counters back to zero, state back to the learned init; /load: exactly the saved conversation
    assert states[2]["positions"] == 0 and states[2]["turns"] == 0
    assert all(layer.get("initial", True) for layer in states[2]["layers"])
    assert all(layer.get("kv_positions", 0) == 0 for layer in states[2]["layers"])
    assert states[3] == states[1]
    assert turns[3]["turn"] == 4 and turns[3]["positions"] > positions[2]
    assert "never reached" not in result.output
    assert "one.wav" in result.output and "assistant" in result.output


def test_save_then_load_restores_identical_next_turn_logits(chat, audio_files, model_dir, tmp_path):
    from omnittt.chat import open_chat

    session = chat()
    session.user_turn(audio=audio_files[1])
    session.user_turn(text="and then?")
    expected = next_turn_logits(session, "what did I say?")
    summary = session.state_summary()
    session.save(tmp_path / "state.safetensors")

    other, _ = open_chat(model_dir=model_dir, device="cpu", generation={"temperature": 0.0, "max_new_tokens": 3})
    assert not torch.equal(next_turn_logits(other, "what did I say?"), expected)  # a fresh state differs
    other.load(tmp_path / "state.safetensors")
    assert torch.equal(next_turn_logits(other, "what did I say?"), expected)
    assert other.state_summary() == summary
    assert other.history == session.history
    # and the conversation continues identically
    a, b = session.user_turn(text="go on"), other.user_turn(text="go on")
    assert a.token_ids == b.token_ids
    assert torch.equal(ttt_states(session.cache)["2.W1"], ttt_states(other.cache)["2.W1"])


def test_the_saved_state_is_safetensors_with_a_json_header(chat, tmp_path):
    from safetensors import safe_open

    session = chat()
    session.user_turn(text="hello")
    session.save(tmp_path / "s.safetensors")
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["omnittt_chat"])
        keys = set(handle.keys())
    assert header["format"] == "omnittt-chat-state" and header["model"]["ttt_mini_batch_size"] == MINI_BATCH
    assert {"layers.2.state.W1", "layers.3.state.b2", "layers.0.keys", "real_tokens"} <= keys
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_load_refuses_a_state_of_another_model_or_no_state(chat, model_dir, tmp_path):
    from omnittt.chat import open_chat

    session = chat()
    session.user_turn(text="hello")
    session.save(tmp_path / "s.safetensors")
    windowed, _ = open_chat(model_dir=model_dir, device="cpu", attention_window=32)
    with pytest.raises(UserError, match="saved with another model .*attention_window"):
        windowed.load(tmp_path / "s.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="junk.safetensors"):
        session.load(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="no such file"):
        session.load(tmp_path / "missing.safetensors")


# -- chat state == training state -----------------------------------------------------------------------------------
def training_forward(model, builder, feature_extractor, exchanges) -> object:
    """The exchanges as training sees them: one padded sample each (the preprocess layout: ids, labels, alignment
    pads with mask 0), collated by the training collator and fed with the trainer's inputs, cache carried."""
    from omnittt.core.exchange_stream import model_inputs
    from omnittt.data.dataset import ExchangeCollator

    collator = ExchangeCollator(builder.tokens.pad, feature_extractor)
    mode = model.config.speech_positions
    cache = model.new_cache()
    for k, (wave, text, reply_ids) in enumerate(exchanges):
        segments = split_segments(len(wave)) if wave is not None else []
        prompt = builder.generation_prompt(Exchange(len(segments), text), first=k == 0)
        ids = prompt + reply_ids + [builder.tokens.eot]
        labels = [IGNORE_INDEX] * len(prompt) + reply_ids + [builder.tokens.eot]
        pad = padding_for(sample_positions(len(ids), segments, mode), MINI_BATCH)
        speech = torch.from_numpy(wave if wave is not None else np.zeros(0, dtype=np.float32))[:, None]
        row = {"input_ids": torch.tensor(ids + [builder.tokens.pad] * pad),
               "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
               "labels": torch.tensor(labels + [IGNORE_INDEX] * pad),
               "num_positions": sample_positions(len(ids), segments, mode) + pad,
               "speech": speech, "speech_lengths": torch.tensor(segments, dtype=torch.long)}
        step = collator([row], [k], ["c"])
        with torch.no_grad():
            cache = model(**model_inputs(step, torch.device("cpu")), past_key_values=cache, use_cache=True
                          ).past_key_values
    return cache


@pytest.mark.parametrize("window", [None, 24])
def test_state_after_scripted_exchanges_equals_the_training_forward(model_dir, audio_files, window):
    from omnittt.chat import open_chat
    from omnittt.data.audio import load_audio

    session, _ = open_chat(model_dir=model_dir, device="cpu", attention_window=window,
                           generation={"temperature": 0.0, "max_new_tokens": 5})
    eot = session.builder.tokens.eot
    turns = [(audio_files[0], ""), (None, "a typed question"), (audio_files[2], "with a note")]
    replies = []
    for k, (path, text) in enumerate(turns):
        # the middle reply ends on its own <eot>, the others are cut by max_new_tokens: both close the same way
        extra = {"forced_eos_token_id": eot} if k == 1 else {}
        reply = session.user_turn(audio=path, text=text, **extra)
        assert reply.stop_reason == ("eot" if k == 1 else "max_new_tokens")
        replies.append(reply.token_ids)
    waves = [load_audio(path).samples if path is not None else None for path, _ in turns]
    exchanges = [(w, text, r) for w, (_, text), r in zip(waves, turns, replies, strict=True)]
    trained = training_forward(session.model, session.builder, session.feature_extractor, exchanges)

    chat_states, train_states = ttt_states(session.cache), ttt_states(trained)
    assert chat_states.keys() == train_states.keys() and chat_states
    for key, value in chat_states.items():
        assert (value - train_states[key]).abs().max() <= 1e-5, key
    for (_, a), (_, b) in zip(session.cache.ttt_layers(), trained.ttt_layers(), strict=True):
        assert a.grads is None and b.grads is None
        assert torch.equal(a.stream_position, b.stream_position)
    assert torch.equal(session.cache.real_tokens, trained.real_tokens)
    if window is not None:  # the window bounds the KV held, whatever the conversation's length
        held = [layer["kv_positions"] for layer in session.state_summary()["layers"] if "kv_positions" in layer]
        assert held and max(held) == window - 1 < session.positions
    # the stream really ended inside mini-batches (end_turn did work), and the state moved
    ends = [0] + [h["positions"] for h in session.history]
    assert any((b - a) % MINI_BATCH for a, b in zip(ends, ends[1:], strict=False))
    # the next turn sees the same model state either way (attention KV included; training's pads stay masked)
    prompt = session.builder.generation_prompt(Exchange(0, "next"), first=False)
    with torch.no_grad():
        chat_logits = session.model(input_ids=torch.tensor([prompt]), past_key_values=session.cache).logits
        train_logits = session.model(input_ids=torch.tensor([prompt]), past_key_values=trained).logits
    assert (chat_logits - train_logits).abs().max() <= 1e-4


def test_chat_never_pads_into_the_state_between_exchanges(chat):
    """The seed zero-padded every decoded token; here the stream only jumps to the boundary at end_turn."""
    session = chat()
    reply = session.user_turn(text="count the positions")
    stream = session.state_summary()["layers"][2]["stream_position"]
    fed = session.positions  # real positions: prompt + reply + closing <eot>
    assert fed == reply.prompt_positions + len(reply.token_ids) + 1
    assert stream == fed + padding_for(fed, MINI_BATCH)
    assert session.state_summary()["positions_fed"] == fed  # no pad position ever went through the model


# -- reset, inputs ----------------------------------------------------------------------------------------------
def test_reset_starts_a_new_conversation(chat):
    session = chat()
    first = next_turn_logits(session, "hi")
    session.user_turn(text="hi")
    assert session.positions > 0 and session.turns == 1
    session.reset()
    assert session.positions == 0 and session.turns == 0
    assert all(layer.get("initial", True) for layer in session.state_summary()["layers"])
    assert torch.equal(next_turn_logits(session, "hi"), first)  # BOS + system prompt again, learned init state


def test_waveform_input_any_rate_and_channels(chat):
    session = chat()
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32) * 0.2
    reply = session.user_turn(audio=stereo, sample_rate=22050, label="mic")
    assert reply.user == "mic (1.0 s)"
    # exactly the text prompt's tokens plus the positions the speech arithmetic gives 1 s at 16 kHz (trim: 10)
    from omnittt.data.audio import prepare_waveform

    wave, _ = prepare_waveform(stereo, 22050)
    assert len(wave) == SAMPLE_RATE and split_segments(len(wave)) == [SAMPLE_RATE]
    prompt = session.builder.generation_prompt(Exchange(1, ""), first=True)  # one placeholder, one segment
    text_tokens = len(prompt) - 1
    mode = session.model.config.speech_positions
    assert mode == "trim" and sample_positions(len(prompt), [SAMPLE_RATE], mode) == text_tokens + 10
    assert reply.prompt_positions == text_tokens + 10


def test_streamed_text_is_the_reply(chat):
    session = chat()
    pieces: list[str] = []
    reply = session.user_turn(text="stream please", on_text=pieces.append)
    assert "".join(pieces).strip() == reply.text and pieces


def test_bad_inputs_are_one_line_errors(chat, tmp_path):
    session = chat()
    with pytest.raises(UserError, match="missing.wav: missing audio"):
        session.user_turn(audio=tmp_path / "missing.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(UserError, match="broken.wav"):
        session.user_turn(audio=tmp_path / "broken.wav")
    with pytest.raises(UserError, match="needs audio or text"):
        session.user_turn(text="   ")
    assert session.turns == 0 and session.positions == 0  # nothing reached the state


def test_line_parsing(tmp_path):
    from omnittt.cli.chat import parse_line

    (tmp_path / "my file.wav").write_bytes(b"x")
    assert parse_line("/save  a.safetensors").argument == "a.safetensors"
    assert parse_line("/QUIT").value == "/quit"
    assert parse_line("'my file.wav'", tmp_path).value == str(tmp_path / "my file.wav")
    assert parse_line("my\\ file.wav", tmp_path).kind == "audio"
    assert parse_line("typo.wav", tmp_path).kind == "audio"  # reported as missing, not sent as text
    assert parse_line("hello there").kind == "text"
    assert parse_line("   ").kind == "empty"
    with pytest.raises(UserError, match="unknown command /frobnicate"):
        parse_line("/frobnicate")


def test_cli_errors_are_one_red_line(model_dir, tmp_path):
    from omnittt.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["chat", "--model", str(tmp_path / "nowhere"), "--script", "x"])
    assert result.exit_code == 2 and "no such script" in result.output
    script = tmp_path / "s.txt"
    script.write_text("missing.wav\n")
    result = runner.invoke(app, ["chat", "--model", str(tmp_path / "nowhere"), "--script", str(script)])
    assert result.exit_code == 2 and "no such model directory" in result.output
    result = runner.invoke(app, ["chat", "--model", str(model_dir), "--script", str(script), "--device", "cpu"])
    assert result.exit_code == 2 and "missing.wav: missing audio" in result.output
    assert "Traceback" not in result.output


def test_mic_without_sounddevice_is_a_clear_error(model_dir):
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice is installed here")
    from omnittt.cli.app import app

    result = CliRunner().invoke(app, ["chat", "--model", str(model_dir), "--mic"])
    assert result.exit_code == 2 and "sounddevice" in result.output


def test_generation_defaults_come_from_the_saved_generation_config(model_dir, tmp_path):
    import shutil

    from transformers import GenerationConfig

    from omnittt.chat import GenerationSettings, generation_defaults

    assert generation_defaults(model_dir) == GenerationSettings()  # nothing set explicitly: our defaults
    target = tmp_path / "m"
    shutil.copytree(model_dir, target)
    GenerationConfig(do_sample=True, temperature=0.3, top_p=0.8, max_new_tokens=12).save_pretrained(target)
    assert generation_defaults(target) == GenerationSettings(temperature=0.3, top_p=0.8, max_new_tokens=12)
    assert generation_defaults(target).with_overrides({"temperature": 0.0, "top_p": None}).temperature == 0.0
    with pytest.raises(UserError, match="top_p"):
        GenerationSettings(top_p=0)


def test_open_chat_on_a_run_directory_checks_its_recorded_settings(model_dir, tmp_path):
    from omnittt.chat import open_chat
    from omnittt.core.features import build_feature_extractor
    from omnittt.core.loading import load_model
    from omnittt.core.tokenizer import load_tokenizer, tokenizer_settings
    from omnittt.train.checkpoint import save_checkpoint
    from omnittt.train.run_dir import RunDir

    model = load_model(model_dir).model
    tokenizer = load_tokenizer(model_dir)
    run = RunDir(tmp_path / "run")
    save_checkpoint(run, 7, model, {"stage": "none"}, extra_pretrained=(tokenizer, build_feature_extractor(80)))
    dataset = {"mini_batch_size": MINI_BATCH, "speech_positions": "trim", **tokenizer_settings(tokenizer)}
    run.write_config({"dataset": dataset})
    session, source = open_chat(run=run.path, device="cpu", generation={"max_new_tokens": 2})
    assert source.step == 7 and source.run == str(run.path)
    assert session.user_turn(text="hello").positions > 0
    run.write_config({"dataset": {**dataset, "mini_batch_size": 64}})
    with pytest.raises(UserError, match="mini-batch size 64"):
        open_chat(run=run.path, device="cpu")


def test_interrupt_ends_the_reply_and_closes_the_exchange(chat):
    session = chat()
    reply = session.user_turn(text="talk a lot", on_text=lambda _piece: session.interrupt(), max_new_tokens=50)
    assert reply.stop_reason == "interrupted" and 1 <= len(reply.token_ids) < 50
    assert session.positions == reply.prompt_positions + len(reply.token_ids) + 1  # reply + the closing <eot>
    assert session.state_summary()["layers"][2]["pending"] == 0  # committed by end_turn
    assert session.user_turn(text="next").stop_reason == "max_new_tokens"  # the interrupt does not linger


def test_interactive_turns_and_commands_keep_going_after_an_error(model_dir):
    from omnittt.cli.app import app

    result = CliRunner().invoke(app, ["chat", "--model", str(model_dir), "--device", "cpu", "--temperature", "0",
                                      "--max-new-tokens", "2"], input="hello\n/frobnicate\nmissing.wav\n/state\n")
    assert result.exit_code == 0, result.output
    assert "unknown command /frobnicate" in result.output and "missing.wav: missing audio" in result.output
    # the loop went on after the errors, and end of input quits
    assert "turn 1 · hello" in result.output and "conversation state: 1 turn," in result.output


def test_a_turn_that_fails_inside_generation_blocks_the_session_until_reset(chat):
    session = chat()
    with pytest.raises(ValueError):  # transformers refuses a streamer with beam search, after the prompt went in
        session.user_turn(text="hello", num_beams=2)
    with pytest.raises(UserError, match="conversation state is unusable"):
        session.user_turn(text="again")
    session.reset()
    assert session.user_turn(text="again").positions > 0
