"""IEMOCAP transcripts with 6-class labels and the official split (the COSMIC `iemocap.pkl`).

Text only: no audio, no timings and no real utterance ids, so ids are built from the dialogue
and the position in it (`iemocap/Ses01F_impro01_007`); they never collide with the full
release's ids, which carry the speaker letter before the number (`..._F007`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from featurize.corpora import register
from featurize.corpora.iemocap import LABEL_SETS  # noqa: F401 - same label sets, importable from here
from featurize.records import CorpusReport, DamagedFile, Utterance

CORPUS = "iemocap-text"
PKL_NAME = "iemocap.pkl"
LABEL_CODES = {0: "hap", 1: "sad", 2: "neu", 3: "ang", 4: "exc", 5: "fru"}

_DIALOG = re.compile(r"^(Ses\d\d)[FM]_\w+$")


@register(CORPUS)
def read(path: Path) -> tuple[list[Utterance], CorpusReport]:
    """Read `iemocap.pkl` (`path` is the file or the folder holding it)."""
    path = Path(path)
    pkl = path / PKL_NAME if path.is_dir() else path
    if not pkl.exists():
        raise FileNotFoundError(f"{path}: no {PKL_NAME} there (the iemocap-text corpus is the pickle of the "
                                "fusion study's text features)" if pkl != path else f"{pkl}: no such file")
    with pkl.open("rb") as f:
        try:
            # Written by Python 2: latin-1 maps its byte strings to str one byte per character.
            data = pickle.load(f, encoding="latin1")
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:  # cut short, or another file
            raise DamagedFile(f"{pkl}: not a readable pickle ({type(e).__name__}: {e})") from None
    try:
        speakers, labels, sentences, train_ids, test_ids, valid_ids = data[:6]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{pkl}: expected (speakers, labels, sentences, train, test, valid) ids") from e

    split_of = {}
    for split, ids in (("train", train_ids), ("valid", valid_ids), ("test", test_ids)):
        split_of.update(dict.fromkeys(ids, split))
    report = CorpusReport()
    utterances: list[Utterance] = []
    for dialog in sorted(speakers):
        match = _DIALOG.match(dialog)
        lengths = {len(speakers[dialog]), len(labels.get(dialog, ())), len(sentences.get(dialog, ()))}
        if match is None or len(lengths) != 1:
            report.skip("malformed dialogue", dialog)
            continue
        session = match.group(1)
        rows = zip(speakers[dialog], labels[dialog], sentences[dialog], strict=True)  # lengths checked above
        for turn, (who, label, text) in enumerate(rows):
            utt_id = f"iemocap/{dialog}_{turn:03d}"
            # Labels are ints; speakers are the letter of the speaking actor ('M'/'F'), as in the
            # full release's utterance ids.
            code = LABEL_CODES.get(label)
            if code is None or who not in ("M", "F"):
                report.skip("bad label or speaker", utt_id)
                continue
            utterances.append(
                Utterance(
                    utt_id=utt_id,
                    corpus=CORPUS,
                    speaker=f"{session}_{who}",
                    label=code,
                    session=session,
                    dialog=dialog,
                    turn=turn,
                    text=str(text).strip(),
                    split=split_of.get(dialog),
                )
            )
    return utterances, report
