"""LibriSpeech (openslr.org/12), the real layout (docs/data_format.md `librispeech`):

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac
    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt     `<utt-id> <TRANSCRIPT>` lines

A chapter is one pseudo-conversation (its utterances are consecutive readings of one speaker), id
`<subset>/<speaker>-<chapter>`, group `<subset>/<speaker>` (sessions join a speaker's chapters). INPUT may be
the folder holding `LibriSpeech/`, `LibriSpeech/` itself or one subset folder; `--split dev-clean,test-clean`
picks subsets. Only the ASR task applies (read speech has no replies). A flac without a transcript line is
`missing_text`, a transcript line without its flac `missing_audio`; either skips that utterance alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omnittt.data.conversation import Conversation, Turn
from omnittt.data.sources import ConversationRef, SourceOptions, is_inside
from omnittt.errors import UserError

SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
           "train-other-500")
_UTTERANCE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _digit_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted((Path(e.path) for e in entries if e.name.isdigit() and e.is_dir()), key=lambda p: p.name)


def _is_subset(folder: Path) -> bool:
    """`<speaker>/<chapter>/` folders holding a `.trans.txt` or `.flac` (the first few speakers suffice)."""
    for speaker in _digit_dirs(folder)[:3]:
        for chapter in _digit_dirs(speaker)[:2]:
            if any(p.suffix in (".txt", ".flac") for p in chapter.iterdir()):
                return True
    return False


def corpus_root(root: Path) -> Path:
    return root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root


def subsets(root: Path, split: str | None = None) -> list[Path]:
    """The subset folders under INPUT (or INPUT itself when it is one), filtered by `split`."""
    base = corpus_root(root)
    found = [base] if _is_subset(base) else [p for p in sorted(base.iterdir()) if p.is_dir() and _is_subset(p)]
    if not found:
        raise UserError(f"{root}: no LibriSpeech subset here (no <speaker>/<chapter>/*.flac folders)",
                        fix="point INPUT at LibriSpeech/ or one subset folder such as LibriSpeech/dev-clean")
    if split:
        wanted = [name.strip() for name in split.split(",") if name.strip()]
        missing = [name for name in wanted if name not in {p.name for p in found}]
        if missing:
            raise UserError(f"{root}: no subset {', '.join(missing)} here (found: {', '.join(p.name for p in found)})",
                            fix="use --split with one of the subsets found, or download it: "
                                f"omnittt download librispeech --split {missing[0]}")
        found = [p for p in found if p.name in wanted]
    return found


def looks_like(root: Path) -> str | None:
    base = corpus_root(root)
    if _is_subset(base):
        return "a LibriSpeech subset folder (<speaker>/<chapter>/*.flac + .trans.txt)"
    named = [p.name for p in base.iterdir() if p.is_dir() and p.name in SUBSETS and _is_subset(p)]
    if named:
        return f"LibriSpeech subset folders ({', '.join(sorted(named))})"
    return None


def discover(root: Path, options: SourceOptions | None = None) -> list[ConversationRef]:
    refs = []
    for subset in subsets(root, (options or SourceOptions()).split):
        for speaker in _digit_dirs(subset):
            for chapter in _digit_dirs(speaker):
                refs.append(ConversationRef(f"{subset.name}/{speaker.name}-{chapter.name}", str(chapter)))
    return sorted(refs, key=lambda ref: ref.conversation_id)


def read(root: Path, ref: ConversationRef, source: str = "librispeech") -> Conversation:
    chapter = Path(ref.path)
    speaker, subset = chapter.parent.name, chapter.parent.parent.name
    trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
    conv = Conversation(conversation_id=ref.conversation_id, source=source, group=f"{subset}/{speaker}",
                        path=str(trans), independent_turns=True,
                        metadata={"subset": subset, "speaker": speaker, "chapter": chapter.name})
    texts: dict[str, str] = {}
    try:
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt:
                texts[utt] = text.strip()
    except FileNotFoundError:
        pass  # every flac is then reported missing_text, naming the flac
    except (OSError, UnicodeDecodeError) as exc:
        conv.problem, conv.problem_detail = "bad_transcript", f"{exc.__class__.__name__}: {exc}"[:200]
        return conv
    flacs = {p.stem for p in chapter.iterdir() if p.suffix == ".flac"}
    prefix = f"{speaker}-{chapter.name}-"
    utterances = sorted((u for u in texts.keys() | flacs if u.startswith(prefix) and _UTTERANCE.match(u)),
                        key=lambda u: int(u.rsplit("-", 1)[1]))
    for index, utt in enumerate(utterances):
        path = chapter / f"{utt}.flac"
        turn = Turn(index=index, speaker=speaker, text=texts.get(utt) or None, metadata={"utterance": utt})
        conv.turns.append(turn)
        if utt not in flacs:
            turn.problem, turn.problem_path = "missing_audio", str(path)
            continue
        turn.audio_path = path
        if turn.text is None:
            turn.problem, turn.problem_path = "missing_text", str(path)
        elif not is_inside(root, path):
            turn.problem, turn.problem_path = "path_outside_input", str(path)
    return conv
