"""RAVDESS speech, read from `Actor_XX/03-01-EE-II-SS-RR-AA.(wav|flac)` file names.

The file-name code carries everything (modality, vocal channel, emotion, intensity, statement,
repetition, actor), so `metadata.csv` is not needed. Only audio-only (03) speech (01) is read;
anything else in the folders (song, video, stray files) is skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from featurize.audio import AudioError, audio_duration
from featurize.corpora import register
from featurize.records import CorpusReport, Utterance

CORPUS = "ravdess"

EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

LABEL_SETS: dict[str, dict[str, str]] = {
    "rav8": {name: name for name in EMOTIONS.values()},
    "rav4": {name: name for name in ("neutral", "happy", "sad", "angry")},
}

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")
_AUDIO_SUFFIXES = {".wav", ".flac"}


@register(CORPUS)
def read(path: Path) -> tuple[list[Utterance], CorpusReport]:
    """Read RAVDESS speech from `path`, the folder holding `Actor_01` … `Actor_24`."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: a file; the ravdess corpus is the folder holding Actor_01 ... Actor_24")
    actor_dirs = sorted(d for d in path.iterdir() if d.is_dir() and _ACTOR_DIR.match(d.name))
    if not actor_dirs:
        raise ValueError(f"{path}: no Actor_XX folders; is this the RAVDESS folder?")
    report = CorpusReport()
    utterances: list[Utterance] = []
    seen: set[str] = set()
    for actor_dir in actor_dirs:
        folder_actor = int(_ACTOR_DIR.match(actor_dir.name).group(1))
        for file in sorted(actor_dir.iterdir()):
            if file.suffix.lower() not in _AUDIO_SUFFIXES or file.name.startswith("."):
                continue
            utt = _parse(file, folder_actor, report)
            if utt is None:
                continue
            if utt.utt_id in seen:  # the same recording as both .wav and .flac
                report.skip("duplicate recording", str(file))
                continue
            try:
                utt.duration = audio_duration(file)
            except AudioError:
                report.skip("unreadable audio", str(file))
                continue
            seen.add(utt.utt_id)
            utterances.append(utt)
    return utterances, report


def _parse(file: Path, folder_actor: int, report: CorpusReport) -> Utterance | None:
    match = _NAME.match(file.stem)
    if match is None:
        report.skip("malformed file name", str(file))
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality != "03":
        report.exclude("not audio-only (modality != 03)")
        return None
    if channel != "01":
        report.exclude("not speech (vocal channel != 01)")
        return None
    if int(actor) != folder_actor:  # a file moved to another actor's folder: which speaker is it?
        report.skip("actor in the file name differs from its folder's", str(file))
        return None
    if emotion not in EMOTIONS or intensity not in INTENSITIES or statement not in STATEMENTS or \
            repetition not in ("01", "02"):
        report.skip("malformed file name", str(file))
        return None
    number = int(actor)
    return Utterance(
        utt_id=f"{CORPUS}/{file.stem}",
        corpus=CORPUS,
        speaker=f"Actor_{actor}",
        label=EMOTIONS[emotion],
        # The actor is the fold group: the rav4/rav8 folds put actor a in fold (a - 1) mod 5.
        session=str(number),
        audio_path=str(file),
        text=STATEMENTS[statement],
        extra={
            "intensity": INTENSITIES[intensity],
            "statement": str(int(statement)),
            "repetition": str(int(repetition)),
            "gender": "male" if number % 2 == 1 else "female",
        },
    )
