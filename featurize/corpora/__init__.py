"""Corpus readers: a registry mapping a corpus name to a reader.

A reader is ``read(path, **options) -> (list[Utterance], CorpusReport)``; it reads the corpus in
place and never crashes on a broken entry (it skips it and records why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from featurize.records import CorpusReport, Utterance

Reader = Callable[..., tuple[list[Utterance], CorpusReport]]
READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return wrap


def read_corpus(name: str, path: str | Path, **options) -> tuple[list[Utterance], CorpusReport]:
    _load_all()
    if name not in READERS:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(sorted(READERS))}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus path {path} does not exist")
    return READERS[name](path, **options)


def _load_all() -> None:
    # Importing each module registers its reader; one file per corpus.
    from featurize.corpora import iemocap, iemocap_text, manifest, ravdess  # noqa: F401
