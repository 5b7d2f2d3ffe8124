"""Common Voice (docs/data_format.md `commonvoice`): per locale

    <locale>/clips/*.mp3
    <locale>/{train,dev,test,validated,invalidated,other}.tsv    client_id, path, sentence, up_votes, ...

The TSV is read with no quoting (sentences hold unbalanced `"`), as the Hugging Face loaders do. Clips have
no conversations: one speaker's clips (`client_id`), in TSV order, are grouped `--group-size` at a time into
pseudo-conversations `<locale>/<split>/<client_id[:16]>-<k>`, group `<locale>`. Only the ASR task applies.
INPUT is a locale folder or a release folder holding several (`cv-corpus-*/<locale>/`); `--split` names the
TSV (default `train`). A clip that is missing or does not decode skips that clip alone.

The clips are MP3, which libsndfile decodes from version 1.1.0 on (built with mpg123). `discover` checks that
first (`mp3_unsupported`) and stops in one line naming the libsndfile version, instead of reporting every clip
as `unreadable_audio`.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

DEFAULT_SPLIT = "train"
_REQUIRED = ("client_id", "path", "sentence")
_KEPT = ("age", "gender", "accents", "accent", "locale", "variant")
ID_CHARS = 16
MP3_SINCE = (1, 1)  # libsndfile 1.1.0 added MP3 (mpg123 / lame)


def mp3_unsupported(version: str, formats: Iterable[str]) -> str | None:
    """Why libsndfile `version` with major `formats` (soundfile.__libsndfile_version__ and
    soundfile.available_formats()) cannot decode MP3, or None when it can."""
    match = re.search(r"(\d+)\.(\d+)", version or "")
    old = match is not None and (int(match.group(1)), int(match.group(2))) < MP3_SINCE
    if "MP3" in {str(name).upper() for name in formats} and not old:
        return None
    if old:
        return f"libsndfile {version} cannot decode MP3 (it needs libsndfile >= 1.1.0)"
    return f"libsndfile {version or '(unknown version)'} was built without MP3 support"


def require_mp3(where: Path, version: str, formats: Iterable[str]) -> None:
    """Raise the one-line UserError for `where` (the clips folder) when MP3 cannot be decoded."""
    reason = mp3_unsupported(version, formats)
    if reason:
        raise UserError(f"{where}: the Common Voice clips are MP3, but {reason}",
                        fix="pip install -U 'soundfile>=0.12' (its wheels bundle libsndfile 1.2 with MP3), or "
                            "convert the clips to FLAC/WAV")


def locales(root: Path) -> list[Path]:
    if (root / "clips").is_dir():
        return [root]
    return [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "clips").is_dir()]


def looks_like(root: Path) -> str | None:
    for locale in locales(root)[:3]:
        tsvs = sorted(p.name for p in locale.glob("*.tsv"))
        if tsvs:
            return f"Common Voice locale folder{'' if locale == root else 's'} (clips/ + {', '.join(tsvs[:3])})"
    return None


def _rows(tsv: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(tsv, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or any(col not in header for col in _REQUIRED):
            raise UserError(f"{tsv}: not a Common Voice TSV (needs columns {', '.join(_REQUIRED)})",
                            fix="point INPUT at a Common Voice locale folder")
        # a short row (a cut-off line) keeps what it has: its empty sentence is reported as missing_text
        return [dict(zip(header, row + [""] * (len(header) - len(row)), strict=False)) for row in reader if row]


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    options = options or SourceOptions()
    split = options.split or DEFAULT_SPLIT
    if options.group_size <= 0:
        raise UserError("--group-size must be positive", fix="e.g. --group-size 16")
    found = locales(root)
    if not found:
        raise UserError(f"{root}: no Common Voice locale here (no clips/ folder)",
                        fix="point INPUT at a locale folder (clips/ + train.tsv) or a release folder")

    require_mp3(found[0] / "clips", sf.__libsndfile_version__, sf.available_formats())
    refs = []
    for locale in found:
        tsv = locale / f"{split}.tsv"
        if not tsv.is_file():
            have = ", ".join(sorted(p.stem for p in locale.glob("*.tsv"))) or "none"
            raise UserError(f"{tsv}: not found (TSVs here: {have})",
                            fix="pick one with --split, e.g. --split validated")
        by_speaker: dict[str, list[tuple[tuple[str, str], ...]]] = {}
        for row in _rows(tsv):
            kept = tuple((k, row[k]) for k in ("path", "sentence", *_KEPT) if row.get(k))
            by_speaker.setdefault(row["client_id"], []).append(kept)
        for client, clips in by_speaker.items():
            for k in range(0, len(clips), options.group_size):
                conv_id = f"{locale.name}/{split}/{client[:ID_CHARS]}-{k // options.group_size:04d}"
                refs.append(ConversationRef(conv_id, str(tsv), tuple(clips[k:k + options.group_size])))
    return sorted(refs, key=lambda ref: ref.conversation_id)


def read(root: Path, ref: ConversationRef, source: str = "commonvoice") -> Conversation:
    tsv = Path(ref.path)
    locale = tsv.parent
    speaker = ref.conversation_id.split("/")[-1].rsplit("-", 1)[0]
    conv = Conversation(conversation_id=ref.conversation_id, source=source, group=locale.name, path=str(tsv),
                        independent_turns=True, metadata={"locale": locale.name, "split": tsv.stem})
    for index, clip in enumerate(ref.items):
        row = dict(clip)
        turn = Turn(index=index, speaker=speaker, text=row.get("sentence", "").strip() or None,
                    metadata={k: row[k] for k in _KEPT if k in row})
        conv.turns.append(turn)
        name = row.get("path", "")
        path = locale / "clips" / name
        if name and not path.exists() and not Path(name).suffix:
            path = path.with_name(name + ".mp3")  # early releases list clips without the extension
        if not name or not path.exists():
            turn.problem, turn.problem_path = "missing_audio", str(path)
        elif not is_inside(root, path):
            turn.problem, turn.problem_path = "path_outside_input", str(path)
        else:
            turn.audio_path = path
            if turn.text is None:
                turn.problem, turn.problem_path = "missing_text", str(path)
    return conv
