"""IEMOCAP full release, read in place (layout: shared/docs/iemocap-layout.md).

Each labelled utterance comes from `Session*/dialog/EmoEvaluation/<dialog>.txt` (timing, consensus
code, per-annotator labels), its text from `transcriptions/<dialog>.txt`, its audio from
`sentences/wav/<dialog>/<utt>.wav` and its word timings from `sentences/ForcedAlignment`.
Broken entries are skipped and counted in the `CorpusReport`, never raised.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from featurize.corpora import register
from featurize.records import CorpusReport, Utterance, Word

CORPUS = "iemocap"

# Raw consensus code -> class for the label sets the papers use. Codes missing from a set (xxx, oth,
# sur, ...) are dropped by training, not here, so one read serves every set.
LABEL_SETS: dict[str, dict[str, str]] = {
    "4class": {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang"},
    "5class": {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang", "fru": "fru"},
    "6class": {"hap": "hap", "sad": "sad", "neu": "neu", "ang": "ang", "exc": "exc", "fru": "fru"},
}

# Annotator label words (the C- lines) -> the consensus codes, so soft labels share the label space.
ANNOTATOR_WORDS: dict[str, str] = {
    "neutral": "neu",
    "frustration": "fru",
    "anger": "ang",
    "happiness": "hap",
    "excited": "exc",
    "sadness": "sad",
    "surprise": "sur",
    "fear": "fea",
    "disgust": "dis",
    "other": "oth",
}

SESSIONS = (1, 2, 3, 4, 5)
FRAMES_PER_S = 100  # ForcedAlignment frames are 10 ms

# `Ses01F_impro01_F000`: session, then the dialogue, then the speaker letter and a 3-digit turn.
_UTT_ID = re.compile(r"^(Ses\d\d)[FM]_\w+_([FM])\d{3}$")
_EVAL_HEADER = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+([a-z]+)\s+\[.*\]\s*$")
_TRANSCRIPT = re.compile(r"^(\S+)\s+\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s*:\s?(.*)$")
_VARIANT = re.compile(r"\(\d+\)$")
_NOT_WORDS = {"<s>", "</s>", "<sil>"}


@dataclass
class _Evaluation:
    start: float
    end: float
    code: str
    soft: dict[str, float] | None


@register(CORPUS)
def read(path: Path, sessions: list[int] | None = None) -> tuple[list[Utterance], CorpusReport]:
    """Read IEMOCAP from `path` (the `IEMOCAP_full_release` folder, or a folder holding it).

    `sessions` picks a subset (e.g. ``[1, 2]``); by default every Session1..5 present is read.
    `turn` is the utterance's index among the read utterances of its dialogue, by start time.
    """
    root = _find_root(Path(path))
    report = CorpusReport()
    if sessions is None:
        sessions = [n for n in SESSIONS if (root / f"Session{n}").is_dir()]
    utterances: list[Utterance] = []
    for n in sorted(set(sessions)):
        session_dir = root / f"Session{n}"
        if not session_dir.is_dir():
            report.skip("missing session directory", str(session_dir))
            continue
        utterances.extend(_read_session(root, session_dir, report))
    _number_turns(utterances)
    return utterances, report


def _find_root(path: Path) -> Path:
    path = path.resolve()
    for candidate in (path, path / "IEMOCAP_full_release"):
        if any((candidate / f"Session{n}").is_dir() for n in SESSIONS):
            return candidate
    raise ValueError(f"{path}: no Session1..Session5 folders here or in {path / 'IEMOCAP_full_release'}")


def _read_session(root: Path, session_dir: Path, report: CorpusReport) -> list[Utterance]:
    dialog_dir = session_dir / "dialog"
    evaluations: dict[str, _Evaluation] = {}
    broken: set[str] = set()  # ids whose EmoEvaluation header was malformed (already reported)
    for file in _text_files(dialog_dir / "EmoEvaluation"):
        evaluations.update(_read_evaluation(file, root, report, broken))
    texts: dict[str, str] = {}
    for file in _text_files(dialog_dir / "transcriptions"):
        texts.update(_read_transcription(file, root, report))

    # Utterances the transcriptions know but no EmoEvaluation block labels (none in the release).
    for utt in sorted(texts.keys() - evaluations.keys() - broken):
        report.skip("no EmoEvaluation entry", utt)

    utterances = []
    for utt, ev in sorted(evaluations.items()):
        match = _UTT_ID.match(utt)
        if match is None:
            report.skip("malformed utterance id", utt)
            continue
        dialog = utt.rsplit("_", 1)[0]
        wav = session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
        if not wav.is_file():
            report.skip("no wav file", utt)
            continue
        wdseg = session_dir / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg"
        words = _read_wdseg(wdseg, root, report) if wdseg.is_file() else None
        utterances.append(
            Utterance(
                utt_id=f"{CORPUS}/{utt}",
                corpus=CORPUS,
                speaker=f"{match.group(1)}_{match.group(2)}",
                label=ev.code,
                session=match.group(1),
                dialog=dialog,
                audio_path=str(wav),
                text=texts.get(utt),
                soft_labels=ev.soft,
                words=words,
                word_source="forced_alignment" if words is not None else None,
                # The wav holds exactly the utterance, so its length is the annotated span.
                duration=round(ev.end - ev.start, 4),
                extra={"start_in_dialog": f"{ev.start:.4f}", "end_in_dialog": f"{ev.end:.4f}"},
            )
        )
    return utterances


def _number_turns(utterances: list[Utterance]) -> None:
    by_dialog: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        by_dialog[u.dialog].append(u)
    for members in by_dialog.values():
        # Ties in start time are broken by id so the order is reproducible.
        members.sort(key=lambda u: (float(u.extra["start_in_dialog"]), u.utt_id))
        for i, u in enumerate(members):
            u.turn = i
    utterances.sort(key=lambda u: (u.dialog, u.turn))


def _text_files(folder: Path) -> list[Path]:
    # Only the per-dialogue files directly inside (not Categorical/ etc.); dot-files are macOS debris.
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.startswith("."))


def _read_lines(file: Path) -> list[str]:
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # never fails: every byte is a latin-1 character
    return text.splitlines()


def _where(file: Path, root: Path, lineno: int) -> str:
    return f"{file.relative_to(root)}:{lineno}"


def _read_evaluation(
    file: Path, root: Path, report: CorpusReport, broken: set[str]
) -> dict[str, _Evaluation]:
    entries: dict[str, _Evaluation] = {}
    votes: dict[str, dict[str, float]] = {}
    current: str | None = None  # the utterance whose block we are in; None after a bad header
    for lineno, line in enumerate(_read_lines(file), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("%"):
            current = None
            continue
        if stripped.startswith("["):
            current = None
            match = _EVAL_HEADER.match(stripped)
            start, end = (float(match.group(1)), float(match.group(2))) if match else (0.0, 0.0)
            if match is None or end <= start:
                report.skip("malformed EmoEvaluation line", _where(file, root, lineno))
                # Remember the id if we can see one, so it is not reported a second time as unlabelled.
                broken.update(tok for tok in re.split(r"\s+", stripped) if tok.startswith("Ses"))
                continue
            current = match.group(3)
            entries[current] = _Evaluation(start, end, match.group(4), None)
            votes[current] = defaultdict(float)
        elif stripped.startswith("C-"):
            if current is not None:
                _add_votes(stripped, votes[current], report, _where(file, root, lineno))
        elif stripped.startswith("A-"):
            continue  # dimensional ratings: the header already carries their mean
        else:
            report.skip("malformed EmoEvaluation line", _where(file, root, lineno))

    for utt, entry in entries.items():
        total = sum(votes[utt].values())
        if total > 0:
            entry.soft = {code: v / total for code, v in sorted(votes[utt].items())}
    return entries


def _add_votes(line: str, votes: dict[str, float], report: CorpusReport, where: str) -> None:
    """Add one annotator's vote: several labels share it equally, so each annotator weighs 1."""
    _, _, rest = line.partition(":")
    rest = re.sub(r"\([^()]*\)\s*$", "", rest)  # the trailing free comment
    codes = []
    for item in rest.split(";"):
        # "Other" can carry the annotator's own word after it ("Other:amused"); keep the class only.
        word = re.split(r"[\s:,]+", item.strip(), maxsplit=1)[0].lower()
        if not word:
            continue
        code = ANNOTATOR_WORDS.get(word)
        if code is None:
            report.skip("unknown annotator label", f"{where} {word!r}")
        elif code not in codes:
            codes.append(code)
    for code in codes:
        votes[code] += 1 / len(codes)


def _read_transcription(file: Path, root: Path, report: CorpusReport) -> dict[str, str]:
    texts: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(file), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        match = _TRANSCRIPT.match(stripped)
        first = re.split(r"[\s:\[]", stripped, maxsplit=1)[0]
        if "XX" in first and first.startswith("Ses"):
            # Overlaps and noises: annotated in the transcript but never cut into a wav.
            report.skip("transcription id with XX", first)
        elif match is None and _UTT_ID.match(first):
            report.skip("transcription line without timing", first)
        elif match is None:
            report.skip("malformed transcription line", _where(file, root, lineno))
        else:
            texts[match.group(1)] = match.group(4).strip()
    return texts


def _read_wdseg(file: Path, root: Path, report: CorpusReport) -> list[Word] | None:
    """Word timings (relative to the utterance wav) from an HTK-style .wdseg file.

    A file with any unparsable line yields None (unaligned) rather than a silently gappy alignment.
    """
    words = []
    for lineno, line in enumerate(_read_lines(file), start=1):
        fields = line.split()
        if not fields or fields[0] == "SFrm" or line.strip().startswith("Total Score"):
            continue
        try:
            sfrm, efrm = int(fields[0]), int(fields[1])
            token = fields[3]
            if len(fields) != 4 or efrm < sfrm:
                raise ValueError
        except (ValueError, IndexError):
            report.skip("malformed wdseg line", _where(file, root, lineno))
            return None
        if token in _NOT_WORDS or (token.startswith("++") and token.endswith("++")):
            # ++LAUGHTER++, ++BREATHING++, ++GARBAGE++: the aligner's noise tokens, not words of the text.
            continue
        # Frame f covers [f, f+1) * 10 ms, so a word ends after its last frame. Dividing (rather than
        # multiplying by 0.01) gives the double nearest the decimal, e.g. exactly 0.33 for frame 33.
        start, end = sfrm / FRAMES_PER_S, (efrm + 1) / FRAMES_PER_S
        words.append(Word(_VARIANT.sub("", token).lower(), start, end))
    return words
