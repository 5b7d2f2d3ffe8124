"""`omnittt download`: fetch a corpus into the folder `omnittt preprocess SOURCE` reads by default.

- DeepDialogue-xtts (`SALT-Research/DeepDialogue-xtts`, ~173 GB) through huggingface_hub: the raw files (the
  parquet conversion holds no audio), `--subset GLOB` = model folders (`dialogues_phi4-mini`,
  `dialogues_llama3-*`), listed with their sizes first so the disk-space check knows what is coming; files
  already complete are skipped without a request, a half-fetched file resumes (huggingface_hub keeps it as
  `.incomplete`); our own rich progress bar (bytes, files, ETA).
- LibriSpeech (openslr.org/12) over plain HTTP: `<split>.tar.gz` into `<to>/.download/` as `.part`, resumed
  with a Range request after an interruption, checked against the publisher's md5 (a damaged archive is deleted
  and the rerun fetches it again), then extracted safely (tarfile's `data` filter) into a temp folder and
  renamed to `<to>/<split>/`.
- LibriLight (github.com/facebookresearch/libri-light) over plain HTTP: `<subset>.tar` (small ~35 GB, medium,
  large, duplicate) the same way, but no checksums are published, so the size is what is checked: a HEAD request
  gives the server's Content-Length (what --dry-run lists), the `.part` is named after it (a file that changed
  size on the server never resumes an old part), and a download that ends at another size is deleted and
  refused. Extracted into `<to>/<subset>/<speaker>/<book>/` (the raw layout `omnittt preprocess librilight`
  reads).

Offline (no network, or HF_HUB_OFFLINE=1) is one line naming what could not be reached. Nothing here runs
unless a user asks for it: tests use a local server.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from huggingface_hub.utils import disable_progress_bars, enable_progress_bars, filter_repo_objects

from omnittt.errors import UserError

DEEPDIALOGUE_REPO = "SALT-Research/DeepDialogue-xtts"
DEEPDIALOGUE_GB = 173  # the dataset card's figure (one user reports 189 GB)
# the dataset's loading script's config list and the authors' demo script; --dry-run lists the real ones
DEEPDIALOGUE_FOLDERS = (
    "dialogues_cohere7B", "dialogues_gemma3-4B", "dialogues_gemma3-27B", "dialogues_llama3-8B",
    "dialogues_llama3-70B", "dialogues_phi4-14B", "dialogues_phi4-mini", "dialogues_qwen2.5-32B",
    "dialogues_qwen2.5-72B", "dialogues_cohere7B_gemma3-4B", "dialogues_llama3-8B_cohere7B",
    "dialogues_llama3-8B_gemma3-4B", "dialogues_phi4-14B_gemma3-27B", "dialogues_qwen2.5-32B_gemma3-27B",
    "dialogues_qwen2.5-32B_phi4-14B", "dialogues_llama3-70B_qwen2.5-72B",
)

LIBRISPEECH_URL = "https://www.openslr.org/resources/12"
LIBRILIGHT_URL = "https://dl.fbaipublicfiles.com/librilight/data"


@dataclass(frozen=True)
class Archive:
    size: int  # bytes, as openslr.org lists them (rounded; only dev-clean's is exact): for --list and the
    # disk-space check; the download itself is checked against Content-Length and the md5
    md5: str  # the publisher's md5sum.txt (https://www.openslr.org/resources/12/md5sum.txt)
    hours: float  # approximate


LIBRISPEECH: dict[str, Archive] = {
    "dev-clean": Archive(337_926_286, "42e2234ba48799c1f50f24a7926300a1", 5.4),
    "dev-other": Archive(314_000_000, "c8d0bcc9cca99d4f8b62fcc847357931", 5.3),
    "test-clean": Archive(346_000_000, "32fa31d27d2e1cad72775fee3f4849a9", 5.4),
    "test-other": Archive(328_000_000, "fb5a50374b501bb3bac4815ee91d3135", 5.1),
    "train-clean-100": Archive(6_300_000_000, "2a93770f6d5c6c964bc36631d331a522", 100.6),
    "train-clean-360": Archive(23_000_000_000, "c0e676e450a7ff2f54aeade5171606fa", 363.6),
    "train-other-500": Archive(30_000_000_000, "d1a0fd59409feb2c614ce4d30c387708", 496.7),
}
# libri-light's data_preparation/README.md (sizes rounded: the download is checked against Content-Length)
LIBRILIGHT: dict[str, tuple[int, float]] = {
    "small": (35_000_000_000, 577),
    "medium": (321_000_000_000, 5193),
    "large": (3_050_000_000_000, 51934),
    "duplicate": (274_000_000_000, 4500),
}
CHUNK = 1 << 20
DISK_MARGIN = 1 << 30  # leave 1 GB free


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def catalog() -> list[dict[str, str]]:
    """What `omnittt download --list` shows."""
    rows = [{"source": "deepdialogue", "what": f"{DEEPDIALOGUE_REPO} (Hugging Face): {len(DEEPDIALOGUE_FOLDERS)} "
             "model folders, 40,150 dialogues, 24 kHz WAV", "size": f"~{DEEPDIALOGUE_GB} GB (all); "
             "--subset dialogues_phi4-mini --dry-run gives a folder's exact size",
             "command": "omnittt download deepdialogue --subset dialogues_phi4-mini"}]
    for split, archive in LIBRISPEECH.items():
        rows.append({"source": "librispeech", "what": f"LibriSpeech {split} ({archive.hours:g} h read speech, FLAC)",
                     "size": human(archive.size) + " (+ as much extracted)",
                     "command": f"omnittt download librispeech --split {split}"})
    for subset, (size, hours) in LIBRILIGHT.items():
        rows.append({"source": "librilight", "what": f"LibriLight {subset} ({hours:g} h untranscribed read speech, "
                     "FLAC + VAD .json)", "size": f"~{human(size)} (+ as much extracted)",
                     "command": f"omnittt download librilight --subset {subset}"})
    rows.append({"source": "synthetic", "what": "espeak-ng dialogues made here, offline (number, name, recall)",
                 "size": "small (made locally)", "command": "omnittt download synthetic --dialogues 20"})
    return rows


def check_disk_space(target: Path, needed: int, what: str) -> None:
    """Refuse before fetching what will not fit (leaving DISK_MARGIN free)."""
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_MARGIN > free:
        raise UserError(f"{what} needs {human(needed)} but {probe} has {human(free)} free",
                        fix="free some space, choose --to on a larger disk, or fetch less (--subset / --split)")


# ------------------------------------------------------------------------------------------------ HTTP


def file_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - the publisher's checksum is md5
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _open(request: urllib.request.Request, url: str, name: str, timeout: float) -> Any:
    """urlopen, its failures as one line (HTTPError 416 is re-raised: the caller knows what it means)."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs we build
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}",
                        fix="check the split/subset name and the --mirror URL, or try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        host = urllib.parse.urlsplit(url).netloc
        raise UserError(f"cannot reach {host} to fetch {name} ({reason}): offline?",
                        fix="check the network (or use --mirror URL), then rerun: it resumes") from None


def http_size(url: str, timeout: float = 30.0, description: str | None = None) -> int | None:
    """The server's Content-Length for `url` (a HEAD request), or None when it gives none."""
    request = urllib.request.Request(url, method="HEAD")
    with _open(request, url, description or url.rsplit("/", 1)[-1], timeout) as response:
        length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def part_path(target: Path, size: int | None) -> Path:
    """Where `http_download` keeps an unfinished download: `<name>.part`, or `<name>.<size>.part` when the size
    is known, so that a part of an older file of another size is never resumed."""
    return target.with_name(f"{target.name}.{size}.part" if size is not None else f"{target.name}.part")


def http_download(url: str, target: Path, md5: str | None, progress: Any = None, timeout: float = 30.0,
                  description: str | None = None, size: int | None = None) -> Path:
    """Fetch `url` to `target` through a `.part` file, resuming a part left by an interrupted run with a Range
    request; check the md5 (a mismatch deletes the file and fails) and, when `size` (the server's
    Content-Length, see `http_size`) is given, the size (likewise). Returns `target`."""
    name = description or target.name
    if target.exists():
        return target
    part = part_path(target, size)
    start = _resume_point(target, part, size, name)
    if size is None or start < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        response = None
        try:
            response = _open(request, url, name, timeout)
        except urllib.error.HTTPError as exc:  # 416: nothing after `start`, the part is complete
            if not start:
                raise UserError(f"{url}: HTTP {exc.code} {exc.reason}", fix="try again later") from None
        if response is not None:
            with response:
                _receive(response, part, start, size, name, progress)
    _check_part(part, size, md5, name)
    os.replace(part, target)
    return target


def _resume_point(target: Path, part: Path, size: int | None, name: str) -> int:
    """Bytes already in `part` (0 for a new download); parts of the file at another size are deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:  # parts of the file at another size (it changed on the server) are of no use
        for stale in target.parent.glob(f"{glob_escape(target.name)}.*.part"):
            if stale != part:
                stale.unlink()
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        part.unlink()
        raise UserError(f"{name}: the partial download holds {start} bytes, more than the server's {size}; "
                        "it was deleted", fix="rerun to fetch it again")
    return start


def _receive(response: Any, part: Path, start: int, size: int | None, name: str, progress: Any) -> None:
    """Append the response's body to `part` (from scratch if the server ignored the Range)."""
    if start and response.status != 206:  # the server ignored the Range: start over
        start = 0
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    if size is not None and total is not None and total != size:  # nothing of it is written
        raise UserError(f"{name}: the server now sends {total} bytes, but its Content-Length was {size}",
                        fix="rerun (if it fails again, try another --mirror)")
    task = progress.add_task(name, total=total, completed=start) if progress is not None else None
    try:
        with open(part, "ab" if start else "wb") as handle:
            while block := response.read(CHUNK):
                handle.write(block)
                if task is not None:
                    progress.update(task, advance=len(block))
    except (OSError, ValueError) as exc:  # connection reset, timeout, IncompleteRead
        raise UserError(f"download of {name} interrupted after {human(part.stat().st_size)} "
                        f"({exc.__class__.__name__})", fix="rerun the same command: it resumes") from None
    if total is not None and part.stat().st_size != total:
        raise UserError(f"download of {name} interrupted after {human(part.stat().st_size)} of "
                        f"{human(total)}", fix="rerun the same command: it resumes")


def _check_part(part: Path, size: int | None, md5: str | None, name: str) -> None:
    """A finished part must have the server's size and the published md5; otherwise it is deleted."""
    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        part.unlink()
        raise UserError(f"{name}: {got} bytes fetched, but the server's Content-Length is {size}; the download "
                        "was deleted", fix="rerun to fetch it again (if it fails again, try another --mirror)")
    if md5 is not None:
        got = file_md5(part)
        if got != md5:
            part.unlink()
            raise UserError(f"{name}: md5 {got} differs from the published {md5}; the damaged download was deleted",
                            fix="rerun to fetch it again (if it fails again, try another --mirror)")


# ------------------------------------------------------------------------------------------ LibriSpeech


@dataclass
class LibriSpeechSummary:
    split: str
    path: Path
    files: int
    downloaded: bool  # False: it was already there


def download_librispeech(split: str, to: str | os.PathLike, mirror: str = LIBRISPEECH_URL, md5: str | None = None,
                         keep_archive: bool = False, progress: Any = None, timeout: float = 30.0) -> LibriSpeechSummary:
    """`<mirror>/<split>.tar.gz` -> `<to>/<split>/<speaker>/<chapter>/...` (+ README/SPEAKERS files in `<to>`).
    `to` is the LibriSpeech folder `omnittt preprocess librispeech` reads (default `./LibriSpeech`)."""
    if split not in LIBRISPEECH:
        raise UserError(f"unknown LibriSpeech split {split!r}", fix=f"use one of: {', '.join(LIBRISPEECH)}")
    to = Path(to).resolve()
    final = to / split
    if final.is_dir():
        return LibriSpeechSummary(split, final, sum(1 for _ in final.rglob("*.flac")), downloaded=False)
    staging = to / ".download"
    archive = staging / f"{split}.tar.gz"
    if not archive.exists():
        have = (staging / f"{split}.tar.gz.part")
        already = have.stat().st_size if have.exists() else 0
        size = LIBRISPEECH[split].size
        check_disk_space(to, max(size - already, 0) + size, f"LibriSpeech {split} (archive + extracted)")
    http_download(f"{mirror.rstrip('/')}/{split}.tar.gz", archive, md5 or LIBRISPEECH[split].md5,
                  progress=progress, timeout=timeout, description=f"{split}.tar.gz")
    files = _extract(archive, to, split, progress)
    if not keep_archive:
        archive.unlink()
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()
    return LibriSpeechSummary(split, final, files, downloaded=True)


def _extract(archive: Path, to: Path, split: str, progress: Any, top: str | None = "LibriSpeech") -> int:
    """Members `<top>/<split>/...` (LibriSpeech) or `<split>/...` (`top` None: LibriLight) into a temp folder,
    renamed to `<to>/<split>` when complete; with a `top`, its own files (README, SPEAKERS, CHAPTERS, BOOKS,
    LICENSE) beside it. Returns the number of .flac files."""
    scratch = to / ".download" / f"extract-{split}"
    if scratch.exists():  # a killed extraction
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    task = progress.add_task(f"extract {split}", total=None) if progress is not None else None
    files = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = [part for part in member.name.split("/") if part not in ("", ".")]
                if top is not None:
                    if not parts or parts[0] != top or len(parts) < 2:
                        continue
                    parts = parts[1:]
                    if len(parts) > 1 and parts[0] != split:
                        continue  # only this split's folder (an archive of another split is refused below)
                elif not parts or parts[0] != split:
                    continue
                member.name = "/".join(parts)
                tar.extract(member, scratch, filter="data")
                files += int(member.name.endswith(".flac"))
                if task is not None:
                    progress.update(task, advance=1)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        archive.unlink(missing_ok=True)
        raise UserError(f"{archive}: cannot extract ({exc.__class__.__name__}: {exc}); the archive was deleted",
                        fix="rerun to fetch it again") from None
    if not (scratch / split).is_dir():
        shutil.rmtree(scratch, ignore_errors=True)
        folder = f"{top}/{split}" if top else split
        raise UserError(f"{archive}: holds no {folder}/ folder", fix="check --mirror and --split/--subset")
    for extra in scratch.iterdir():
        if extra.is_file() and not (to / extra.name).exists():
            os.replace(extra, to / extra.name)
    os.replace(scratch / split, to / split)
    shutil.rmtree(scratch, ignore_errors=True)
    return files


# ------------------------------------------------------------------------------------------- LibriLight


@dataclass
class LibriLightSummary:
    subset: str
    path: Path  # <to>/<subset>
    url: str
    bytes: int | None  # the server's Content-Length (None: already there, or the server gave none)
    files: int  # flac files extracted (0 on a dry run)
    downloaded: bool  # False: already there, or a dry run
    dry_run: bool = False
    partial: int = 0  # bytes of an unfinished download a rerun resumes from


def librilight_subsets(subset: str | None) -> list[str]:
    """`--subset small,medium` -> the names, checked (default: small)."""
    names = [name.strip() for name in (subset or "small").split(",") if name.strip()]
    unknown = [name for name in names if name not in LIBRILIGHT]
    if unknown or not names:
        raise UserError(f"unknown LibriLight subset {', '.join(unknown) or repr(subset)}",
                        fix=f"use one of: {', '.join(LIBRILIGHT)} (comma-separated for several)")
    return list(dict.fromkeys(names))


def download_librilight(subset: str, to: str | os.PathLike, mirror: str = LIBRILIGHT_URL,
                        keep_archive: bool = False, dry_run: bool = False, progress: Any = None,
                        timeout: float = 30.0) -> LibriLightSummary:
    """`<mirror>/<subset>.tar` -> `<to>/<subset>/<speaker>/<book>/<file>.flac + .json`. No checksums are
    published: the download is checked against the server's Content-Length (HEAD), resumed after an
    interruption, and extracted only when complete. `dry_run`: the HEAD alone (the size), nothing written."""
    (subset,) = librilight_subsets(subset)
    to = Path(to).resolve()
    final = to / subset
    url = f"{mirror.rstrip('/')}/{subset}.tar"
    if final.is_dir():
        return LibriLightSummary(subset, final, url, None, sum(1 for _ in final.rglob("*.flac")), downloaded=False,
                                 dry_run=dry_run)
    size = http_size(url, timeout=timeout, description=f"{subset}.tar")
    archive = to / ".download" / f"{subset}.tar"
    part = part_path(archive, size)
    have = part.stat().st_size if part.exists() else 0
    if dry_run:
        return LibriLightSummary(subset, final, url, size, 0, downloaded=False, dry_run=True, partial=have)
    if not archive.exists():
        expected = size if size is not None else LIBRILIGHT[subset][0]
        check_disk_space(to, max(expected - have, 0) + expected, f"LibriLight {subset} (archive + extracted)")
    http_download(url, archive, None, progress=progress, timeout=timeout, description=f"{subset}.tar", size=size)
    files = _extract(archive, to, subset, progress, top=None)
    if not keep_archive:
        archive.unlink()
        staging = archive.parent
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()
    return LibriLightSummary(subset, final, url, size, files, downloaded=True)


# --------------------------------------------------------------------------------------- DeepDialogue


@dataclass
class HubSummary:
    path: Path
    folders: list[str]
    files: int
    bytes: int
    skipped_files: int  # already complete
    downloaded_bytes: int
    dry_run: bool
    per_folder: dict[str, tuple[int, int]] = field(default_factory=dict)  # folder -> (files, bytes)
    elapsed_sec: float = 0.0


def subset_patterns(subset: str | None) -> str:
    """`--subset` -> a glob under data/: the folder name first (`phi4-mini` means `dialogues_phi4-mini`), then
    optionally the files inside (`dialogues_phi4-mini/cars_*`, huggingface_hub's allow-pattern rules)."""
    glob = (subset or "*").strip().strip("/")
    glob = glob[len("data/"):] if glob.startswith("data/") else glob
    return glob if glob.startswith(("dialogues_", "*", "?", "[")) else f"dialogues_{glob}"


def _hub_error(exc: BaseException, endpoint: str, what: str = "") -> UserError | None:
    """The one-line error for an unreachable / refusing Hub (`what`: the file concerned), or None for anything
    else. huggingface_hub wraps a failed file lookup in LocalEntryNotFoundError; its cause says why."""
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__
    where = f" ({what})" if what else ""
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"cannot reach {endpoint}: offline mode is on (HF_HUB_OFFLINE=1)",
                         fix="unset HF_HUB_OFFLINE on a machine with internet access, then rerun: it resumes")
    # huggingface_hub's HTTP client is httpx2 in 2.x, httpx before: whichever is installed
    transport: tuple[type[BaseException], ...] = (LocalEntryNotFoundError, ConnectionError, TimeoutError)
    for client in ("httpx2", "httpx"):
        try:
            transport += (importlib.import_module(client).TransportError,)
        except (ImportError, AttributeError):
            pass
    if isinstance(exc, transport):
        return UserError(f"cannot reach {endpoint} ({exc.__class__.__name__}){where}: offline?",
                         fix="check the network (or set HF_ENDPOINT to a mirror), then rerun: finished files are kept")
    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)):
        return UserError(f"{DEEPDIALOGUE_REPO} on {endpoint}: {str(exc).splitlines()[0]}",
                         fix="log in with `hf auth login` if the dataset needs it, or check HF_ENDPOINT")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return UserError(f"{endpoint} answered HTTP {status}{where}: {str(exc).splitlines()[0][:160]}",
                         fix="try again later; the rerun keeps the finished files")
    return None


def _check_reachable(endpoint: str, offline: bool) -> None:
    """Fail at once, in one line, when the Hub cannot be reached (huggingface_hub itself retries with
    backoff for half a minute first). Skipped behind a proxy, where a direct connection says nothing."""
    if offline:
        raise _hub_error(OfflineModeIsEnabled("HF_HUB_OFFLINE is set"), endpoint) or AssertionError
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                             "ALL_PROXY", "all_proxy")):
        return
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=10).close()
    except OSError as exc:
        raise UserError(f"cannot reach {endpoint} ({exc.__class__.__name__}): offline?",
                        fix="check the network (or set HF_ENDPOINT to a mirror), then rerun: finished files "
                            "are kept") from None


def _hub_call(endpoint: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        error = _hub_error(exc, endpoint)
        if error is None:
            raise
        raise error from None


def _complete(to: Path, path: str, size: int) -> bool:
    """Finished by an earlier run: the right size and huggingface_hub's download record beside it."""
    local = to / path
    record = to / ".cache" / "huggingface" / "download" / f"{path}.metadata"
    return local.is_file() and local.stat().st_size == size and record.is_file()


def download_deepdialogue(to: str | os.PathLike, subset: str | None = None, endpoint: str | None = None,
                          workers: int = 8, dry_run: bool = False, progress: Any = None,
                          repo_id: str = DEEPDIALOGUE_REPO, revision: str | None = None) -> HubSummary:
    """Fetch the `data/<folder>/` trees matching `subset` (all by default) and README.md into `to`."""
    # HF_ENDPOINT read now, not at import (a mirror set after start-up still counts)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    _check_reachable(endpoint, hf_constants.HF_HUB_OFFLINE)
    to = Path(to).resolve()
    chosen, files, per_folder = _hub_files(HfApi(endpoint=endpoint), endpoint, repo_id, revision, subset)
    todo = [(p, s) for p, s in files if not _complete(to, p, s)]
    total, needed = sum(s for _, s in files), sum(s for _, s in todo)
    summary = HubSummary(to, chosen, len(files), total, len(files) - len(todo), needed, dry_run, per_folder)
    if dry_run or not todo:
        return summary
    check_disk_space(to, needed, f"{len(todo)} files of {repo_id} ({', '.join(chosen[:3])}"
                                 f"{', ...' if len(chosen) > 3 else ''})")
    task = progress.add_task("deepdialogue", total=needed) if progress is not None else None
    started = time.monotonic()

    def fetch(item: tuple[str, int]) -> int:
        path, size = item
        try:
            hf_hub_download(repo_id, path, repo_type="dataset", local_dir=str(to), endpoint=endpoint,
                            revision=revision)
        except Exception as exc:
            error = _hub_error(exc, endpoint, path)
            if error is None:
                raise
            raise error from None
        return size

    disable_progress_bars()  # one rich bar instead of a tqdm bar per file
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            _hub_call(endpoint, lambda: _fetch_all(pool, fetch, todo, progress, task))
    finally:
        enable_progress_bars()
    summary.elapsed_sec = time.monotonic() - started
    return summary


def _hub_files(api: Any, endpoint: str, repo_id: str, revision: str | None, subset: str | None,
               ) -> tuple[list[str], list[tuple[str, int]], dict[str, tuple[int, int]]]:
    """(the folders `subset` chooses, (path, size) of every file to have with README.md first, per folder
    (files, bytes))."""
    glob = subset_patterns(subset)

    def tree(path: str | None, recursive: bool = False) -> list[Any]:
        return _hub_call(endpoint, lambda: list(api.list_repo_tree(
            repo_id, path_in_repo=path, recursive=recursive, repo_type="dataset", revision=revision)))

    top = tree("data")
    folders = sorted(item.path.split("/", 1)[1] for item in top if isinstance(item, RepoFolder))
    folder_glob, _, inside = glob.partition("/")
    chosen = [name for name in folders if fnmatch.fnmatchcase(name, folder_glob)]
    if not chosen:
        raise UserError(f"--subset {subset!r} matches no folder of {repo_id} (folders: {', '.join(folders)})",
                        fix="use a folder name or a glob, e.g. --subset dialogues_phi4-mini or 'dialogues_llama3-*'")
    # the card (licence, citation) comes along
    files = [(item.path, item.size) for item in tree(None) if isinstance(item, RepoFile) and item.path == "README.md"]
    per_folder = {}
    for name in chosen:
        folder_files = [(item.path, item.size) for item in tree(f"data/{name}", recursive=True)
                        if isinstance(item, RepoFile)]
        if inside:
            folder_files = list(filter_repo_objects(folder_files, allow_patterns=f"data/{glob}", key=lambda f: f[0]))
        per_folder[name] = (len(folder_files), sum(size for _, size in folder_files))
        files.extend(folder_files)
    files = [f for f in files if "/" not in f[0]] + sorted(f for f in files if "/" in f[0])
    return chosen, files, per_folder


def _fetch_all(pool: Any, fetch: Callable[[tuple[str, int]], int], todo: list[tuple[str, int]], progress: Any,
               task: Any) -> None:
    """Run `fetch` over `todo` in the pool; the first failure cancels what has not started and is raised."""
    futures = [pool.submit(fetch, item) for item in todo]
    try:
        for future in as_completed(futures):
            size = future.result()
            if task is not None:
                progress.update(task, advance=size)
    finally:
        for future in futures:
            future.cancel()
