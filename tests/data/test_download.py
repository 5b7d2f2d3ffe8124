"""`omnittt download` against local servers on 127.0.0.1 only: LibriSpeech over HTTP (interrupted then resumed
with a Range request, a server ignoring Range, a bad checksum, offline, disk space) and DeepDialogue-xtts
through huggingface_hub's own API on a local Hub endpoint (subset, rerun fetching nothing, dry run, offline)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from fake_corpora import write_dialogue
from local_servers import closed_port, serve
from source_corpora import make_librilight, make_librispeech
from typer.testing import CliRunner

from omnittt.data import download
from omnittt.data.download import download_deepdialogue, download_librispeech
from omnittt.errors import UserError

REPO = "SALT-Research/DeepDialogue-xtts"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A LibriSpeech dev-clean archive as openslr packs it (members `LibriSpeech/...`)."""
    base = tmp_path_factory.mktemp("ls_src")
    make_librispeech(base)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(base / "LibriSpeech" / "README.TXT", "LibriSpeech/README.TXT")
        tar.add(base / "LibriSpeech" / "dev-clean", "LibriSpeech/dev-clean")
    data = buffer.getvalue()
    return base / "LibriSpeech" / "dev-clean", data, hashlib.md5(data).hexdigest()  # noqa: S324


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interrupted_download_resumes_with_a_range_request(archive, tmp_path):
    source, data, md5 = archive
    to = tmp_path / "LibriSpeech"
    with serve({"dev-clean.tar.gz": data}) as (url, state):
        state.cut_after["dev-clean.tar.gz"] = len(data) // 3
        with pytest.raises(UserError, match="interrupted") as err:
            download_librispeech("dev-clean", to, mirror=url, md5=md5, timeout=5)
        assert "rerun" in err.value.fix
        part = to / ".download" / "dev-clean.tar.gz.part"
        assert part.stat().st_size == len(data) // 3
        summary = download_librispeech("dev-clean", to, mirror=url, md5=md5, timeout=5)
        gets = [r for r in state.requests if r[0] == "GET"]
    assert [r[2] for r in gets] == [None, f"bytes={len(data) // 3}-"]
    assert summary.downloaded and summary.files == len(list(source.glob("*/*/*.flac")))
    assert _tree(to / "dev-clean") == _tree(source)
    assert (to / "README.TXT").exists() and not (to / ".download").exists()  # archive removed after extraction
    again = download_librispeech("dev-clean", to, mirror="http://127.0.0.1:9", md5=md5)  # no network needed
    assert not again.downloaded
    from omnittt.data.sources import detect

    assert detect(to)[0] == "librispeech"


def test_server_ignoring_range_restarts_cleanly(archive, tmp_path):
    _, data, md5 = archive
    to = tmp_path / "LibriSpeech"
    with serve({"dev-clean.tar.gz": data}) as (url, state):
        state.cut_after["dev-clean.tar.gz"] = 1000
        state.honour_range = False
        with pytest.raises(UserError, match="interrupted"):
            download_librispeech("dev-clean", to, mirror=url, md5=md5, timeout=5, keep_archive=True)
        download_librispeech("dev-clean", to, mirror=url, md5=md5, timeout=5, keep_archive=True)
    assert (to / ".download" / "dev-clean.tar.gz").read_bytes() == data


def test_bad_checksum_is_detected_and_the_file_deleted(archive, tmp_path):
    _, data, md5 = archive
    damaged = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    to = tmp_path / "LibriSpeech"
    with serve({"dev-clean.tar.gz": damaged}) as (url, _):
        with pytest.raises(UserError, match="md5 .* differs from the published"):
            download_librispeech("dev-clean", to, mirror=url, md5=md5, timeout=5)
    assert not list((to / ".download").glob("dev-clean*")) and not (to / "dev-clean").exists()


def test_offline_and_disk_space_are_one_line(tmp_path, monkeypatch):
    from omnittt.cli.app import app

    runner = CliRunner()
    port = closed_port()
    result = runner.invoke(app, ["download", "librispeech", "--split", "dev-clean", "--to", str(tmp_path / "ls"),
                                 "--mirror", f"http://127.0.0.1:{port}"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"cannot reach 127.0.0.1:{port}" in lines[0] and "offline?" in lines[0]
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: type("U", (), {"free": 10 << 20})())
    with pytest.raises(UserError, match=r"needs 675\.9 MB but .* has 10\.5 MB free"):
        download_librispeech("dev-clean", tmp_path / "ls2", mirror=f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["download", "librispeech", "--split", "dev-cleen"])
    assert result.exit_code == 2 and "unknown LibriSpeech split" in result.output


def test_list_shows_what_can_be_fetched_and_its_size():
    from omnittt.cli.app import app

    result = CliRunner().invoke(app, ["download", "--list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for split in download.LIBRISPEECH:
        assert split in result.output
    assert "337.9 MB" in result.output and "30.0 GB" in result.output
    assert "deepdialogue" in result.output and "~173 GB" in result.output and "synthetic" in result.output
    assert "LibriLight small" in result.output and "~35.0 GB" in result.output


# ------------------------------------------------------------------------------------- the Hub path


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    """The repo's files as the Hub holds them: README, data/<folder>/<stem>.json + segments, two folders."""
    base = tmp_path_factory.mktemp("hub")
    for folder, stems in (("dialogues_phi4-mini", ("cars_5_4", "music_3_2")), ("dialogues_llama3-8B", ("food_1_2",))):
        for stem in stems:
            n = int(stem.rsplit("_", 1)[1])
            write_dialogue(base / "data" / folder, stem, [f"{stem} turn {i}" for i in range(n)], seconds=0.2)
    files = {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    files["README.md"] = b"---\nlicense: cc-by-nc-4.0\n---\n# DeepDialogue-xtts\n"
    files["dataset.py"] = b"# loader script\n"
    return files


def test_hub_subset_download_through_huggingface_hub(hub_files, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's guard; the endpoint here is 127.0.0.1
    to = tmp_path / "deepdialogue-xtts"
    wanted = {p: d for p, d in hub_files.items() if p.startswith("data/dialogues_phi4-mini/") or p == "README.md"}
    with serve(hub_files, hub_repo=REPO) as (url, state):
        dry = download_deepdialogue(to, subset="phi4-mini", endpoint=url, dry_run=True)
        assert (dry.files, dry.bytes) == (len(wanted), sum(map(len, wanted.values())))
        readme = len(hub_files["README.md"])
        assert dry.per_folder == {"dialogues_phi4-mini": (len(wanted) - 1, dry.bytes - readme)}
        assert not to.exists()
        cars = download_deepdialogue(to, subset="phi4-mini/cars_*", endpoint=url, dry_run=True)  # allow pattern
        assert cars.files == 1 + sum(1 for p in wanted if p.startswith("data/dialogues_phi4-mini/cars_5_4"))
        with monkeypatch.context() as patch:
            patch.setattr(download.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
            with pytest.raises(UserError, match=f"{len(wanted)} files of {REPO} .* needs"):
                download_deepdialogue(to, subset="phi4-mini", endpoint=url)
        full = "data/dialogues_phi4-mini/cars_5_4/cars_5_4_full.wav"
        state.cut_after[full] = 1000  # a connection lost mid-file: huggingface_hub retries it
        summary = download_deepdialogue(to, subset="dialogues_phi4-*", endpoint=url, workers=2)
        assert sum(1 for r in state.requests if r[0] == "GET" and r[1].endswith(full)) == 2
        fetched = {p.relative_to(to).as_posix(): p.read_bytes() for p in to.rglob("*")
                   if p.is_file() and ".cache" not in p.parts}
        assert fetched == wanted
        assert summary.skipped_files == 0 and summary.downloaded_bytes == dry.bytes
        before = len(state.requests)
        again = download_deepdialogue(to, subset="phi4-mini", endpoint=url)
        resolves = [r for r in state.requests[before:] if "/resolve/" in r[1]]
        assert again.skipped_files == again.files and resolves == []  # a rerun fetches nothing
        with pytest.raises(UserError, match="matches no folder .* dialogues_llama3-8B, dialogues_phi4-mini"):
            download_deepdialogue(to, subset="qwen*", endpoint=url)
    from omnittt.data.preprocess import PreprocessOptions, preprocess

    summary = preprocess(PreprocessOptions(source="auto", input_dir=str(to), output=str(tmp_path / "out")))
    assert summary.stats["source"] == "deepdialogue" and summary.stats["samples"] == 3 and not summary.stats["errors"]


def test_hub_failed_run_then_rerun_fetches_only_what_is_missing(hub_files, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    to = tmp_path / "dd"
    with serve(hub_files, hub_repo=REPO) as (url, state):
        last = max(p for p in hub_files if p.startswith("data/dialogues_llama3-8B/"))
        state.unavailable.add(last)
        with pytest.raises(UserError, match=f"{url} answered HTTP 404 \\({last}\\)") as err:
            download_deepdialogue(to, subset="llama3-8B", endpoint=url, workers=1)
        assert "rerun" in err.value.fix
        assert not (to / last).exists() and (to / "README.md").exists()
        state.unavailable.clear()
        before = len(state.requests)
        summary = download_deepdialogue(to, subset="llama3-8B", endpoint=url, workers=1)
        fetched = [r[1] for r in state.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]
    assert summary.skipped_files == summary.files - 1 and fetched == [f"/datasets/{REPO}/resolve/main/{last}"]
    assert (to / last).read_bytes() == hub_files[last]


def test_hub_offline_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from omnittt.cli.app import app

    runner = CliRunner()
    port = closed_port()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # so that the closed port is what fails
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["download", "deepdialogue", "--subset", "phi4-mini", "--to", str(tmp_path / "d")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"cannot reach http://127.0.0.1:{port}" in lines[0] and "offline?" in lines[0]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="offline mode is on"):
        download_deepdialogue(tmp_path / "d", subset="phi4-mini")
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------- LibriLight


@pytest.fixture(scope="module")
def librilight_tar(tmp_path_factory):
    """LibriLight's small.tar as published: an uncompressed tar of `small/<speaker>/<book>/<file>.flac + .json`."""
    base = tmp_path_factory.mktemp("ll_src")
    info = make_librilight(base)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(info["root"] / "small", "small")
    return info["root"] / "small", buffer.getvalue()


class _ChangesAfterHead(dict):
    """A mirror whose file is replaced between the HEAD and the GET (the GET sends fewer bytes)."""

    def __init__(self, files: dict[str, bytes], name: str) -> None:
        super().__init__(files)
        self.name, self.reads = name, 0

    def __getitem__(self, key: str) -> bytes:
        data = super().__getitem__(key)
        if key == self.name:
            self.reads += 1
            return data if self.reads == 1 else data[:-512]
        return data


def test_librilight_dry_run_then_interrupted_download_resumes(librilight_tar, tmp_path):
    from omnittt.cli.app import app

    source, data = librilight_tar
    to = tmp_path / "LibriLight"
    runner = CliRunner()
    with serve({"small.tar": data}) as (url, state):
        result = runner.invoke(app, ["download", "librilight", "--subset", "small", "--to", str(to), "--mirror", url,
                                     "--dry-run"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert f"{len(data):,} bytes" in result.output and "would fetch" in result.output
        assert [r[0] for r in state.requests] == ["HEAD"] and not to.exists()  # nothing fetched, nothing written
        state.cut_after["small.tar"] = len(data) // 3
        with pytest.raises(UserError, match="interrupted") as err:
            download.download_librilight("small", to, mirror=url, timeout=5)
        assert "resumes" in err.value.fix
        part = to / ".download" / f"small.tar.{len(data)}.part"
        assert part.stat().st_size == len(data) // 3 and not (to / "small").exists()
        result = runner.invoke(app, ["download", "librilight", "--to", str(to), "--mirror", url], terminal_width=200)
        assert result.exit_code == 0, result.output
        gets = [r[2] for r in state.requests if r[0] == "GET"]
    assert gets == [None, f"bytes={len(data) // 3}-"]  # the rerun asked only for the rest
    assert "fetched" in result.output and "omnittt preprocess librilight" in result.output
    assert _tree(to / "small") == _tree(source) and not (to / ".download").exists()
    again = download.download_librilight("small", to, mirror="http://127.0.0.1:9")  # no network needed
    assert not again.downloaded and again.files == len(list(source.rglob("*.flac")))
    from omnittt.data.sources import detect

    assert detect(to)[0] == "librilight"


def test_librilight_size_mismatch_is_refused_and_nothing_is_half_written(librilight_tar, tmp_path):
    from omnittt.cli.app import app

    _, data = librilight_tar
    to = tmp_path / "LibriLight"
    with serve(_ChangesAfterHead({"small.tar": data}, "small.tar")) as (url, _):
        result = CliRunner().invoke(app, ["download", "librilight", "--to", str(to), "--mirror", url])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"small.tar: the server now sends {len(data) - 512} bytes, but its Content-Length was {len(data)}" \
        in lines[0]
    assert not [p for p in to.rglob("*") if p.is_file()] and not (to / "small").exists()


def test_librilight_part_of_another_size_is_not_resumed(librilight_tar, tmp_path):
    source, data = librilight_tar
    to = tmp_path / "LibriLight"
    stale = to / ".download" / "small.tar.4096.part"  # an older small.tar of another size, cut off
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)
    with serve({"small.tar": data}) as (url, state):
        summary = download.download_librilight("small", to, mirror=url, keep_archive=True, timeout=5)
        gets = [r[2] for r in state.requests if r[0] == "GET"]
    assert gets == [None] and not stale.exists()
    assert (to / ".download" / "small.tar").read_bytes() == data and summary.bytes == len(data)
    assert _tree(to / "small") == _tree(source)
    with pytest.raises(UserError, match="unknown LibriLight subset tiny"):
        download.librilight_subsets("small,tiny")
