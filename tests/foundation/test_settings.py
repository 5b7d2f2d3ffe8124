"""Typed settings: YAML round trip, strict keys, overrides; atomic writes."""

from __future__ import annotations

import dataclasses
import os

import pytest

from omnittt.atomic import atomic_directory, atomic_write, atomic_write_json, atomic_write_text
from omnittt.config import Settings, model_overrides, parse_dotted_overrides
from omnittt.errors import UserError


@dataclasses.dataclass
class Inner(Settings):
    lr: float = 1e-4
    warmup: int = 10


@dataclasses.dataclass
class Outer(Settings):
    name: str = "run"
    ttt_layers: list[int] = dataclasses.field(default_factory=lambda: [2, 3])
    attention_window: int | None = None
    optim: Inner = dataclasses.field(default_factory=Inner)


def test_yaml_round_trip(tmp_path):
    cfg = Outer(name="x", optim=Inner(lr=3e-5))
    cfg.dump_yaml(tmp_path / "c.yaml")
    assert Outer.load_yaml(tmp_path / "c.yaml") == cfg


def test_unknown_key_is_a_user_error(tmp_path):
    (tmp_path / "c.yaml").write_text("name: a\nlearning_rate: 3\n")
    with pytest.raises(UserError, match="learning_rate"):
        Outer.load_yaml(tmp_path / "c.yaml")
    with pytest.raises(UserError, match="no such file"):
        Outer.load_yaml(tmp_path / "missing.yaml")


def test_overrides_dotted_and_none_keeps_default():
    cfg = Outer().with_overrides({"optim.lr": 0.5, "name": None, **parse_dotted_overrides(["optim.warmup=3"])})
    assert cfg.optim == Inner(lr=0.5, warmup=3) and cfg.name == "run"
    with pytest.raises(UserError):
        Outer().with_overrides({"optim.nope": 1})
    with pytest.raises(UserError):
        parse_dotted_overrides(["novalue"])


def test_model_overrides_maps_only_model_keys():
    assert model_overrides(Outer()) == {"ttt_layers": [2, 3]}
    assert model_overrides(Outer(attention_window=128)) == {"ttt_layers": [2, 3], "attention_window": 128}


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"k": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "hello"

    def fail_midway(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "c.txt", fail_midway)
    with pytest.raises(ZeroDivisionError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "f").write_text("partial")
        1 / 0  # noqa: B018
    assert not (tmp_path / "d").exists()
    with atomic_directory(tmp_path / "e") as tmp:
        (tmp / "f").write_text("done")
    assert (tmp_path / "e" / "f").read_text() == "done"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "e"]


def test_atomic_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
