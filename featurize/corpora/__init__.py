"""Corpus readers: a registry mapping a corpus name to a reader.

A reader is ``read(path, **options) -> (list[Utterance], CorpusReport)``; it reads the corpus in
place and never crashes on a broken entry (it skips it and records why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from featurize.records import CorpusReport, Utterance
from featurize.registry import Registry

Reader = Callable[..., tuple[list[Utterance], CorpusReport]]
READERS: Registry[Reader] = Registry("corpus", __name__)


def register(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        return READERS.add(name, fn)

    return wrap


def read_corpus(name: str, path: str | Path, **options) -> tuple[list[Utterance], CorpusReport]:
    reader = READERS.get(name)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus path {path} does not exist")
    return reader(path, **options)


def first_of_id(seen: dict[str, int], utt: Utterance, source: str, line: int, report: CorpusReport,
                hint: str = "") -> bool:
    """Whether ``utt`` is the first entry with its id (``seen``: id -> line); a later one is a named skip, since
    ids key the feature store and two entries on one id would silently overwrite each other."""
    if utt.utt_id in seen:
        report.skip("duplicate utterance id", f"{source} line {line}: {utt.utt_id!r} (first on line "
                    f"{seen[utt.utt_id]}){hint}")
        return False
    seen[utt.utt_id] = line
    return True
