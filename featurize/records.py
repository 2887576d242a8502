"""The one utterance record every corpus reader yields (what the data is, not where features live)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


class DamagedFile(ValueError):
    """A file sercache reads (a corpus's index, a run's results, a model) that is cut short or is not what its
    name says; the message names it. The command lines exit with the data code (3) on it."""


def words_hash(words: Sequence[str]) -> int:
    """A 63-bit hash of a word list, stored beside word-level features so that a reader can tell whether
    the words it has times for are the words the vectors were computed from."""
    digest = hashlib.sha256("\x1f".join(words).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Word:
    """A word with its start and end time in seconds, relative to the utterance start."""

    word: str
    start: float
    end: float


@dataclass
class Utterance:
    """One utterance of a corpus.

    `utt_id` is prefixed by the corpus (``iemocap/Ses01F_impro01_F000``) so several corpora can
    share one store. `start`/`end` are set when the audio is a slice of a longer file; `channel` (0-based)
    when it is one channel of a multi-channel file (None: the mean of all its channels). `words` are
    relative to the utterance start; `word_source` says where they came from
    (``forced_alignment`` | ``asr`` | ``corpus``), so a later ASR pass never overwrites a forced
    alignment.
    """

    utt_id: str
    corpus: str
    speaker: str
    label: str | None = None
    session: str | None = None
    dialog: str | None = None
    turn: int | None = None
    audio_path: str | None = None
    start: float | None = None
    end: float | None = None
    channel: int | None = None
    text: str | None = None
    soft_labels: dict[str, float] | None = None
    words: list[Word] | None = None
    word_source: str | None = None
    split: str | None = None
    duration: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Utterance:
        d = dict(d)
        if d.get("words") is not None:
            d["words"] = [Word(**w) for w in d["words"]]
        return cls(**d)


@dataclass
class CorpusReport:
    """What a reader skipped and why, so a corpus with broken entries still reads.

    ``skipped``: entries that should have been utterances but are broken (a missing or unreadable file, a bad
    row): each is named (file, and line for manifests) and makes extraction end with a non-zero status.
    ``excluded``: entries left out by design (RAVDESS video files, song): counted, never an error."""

    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> what (file, line, detail)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str, what: str) -> None:
        self.skipped.setdefault(reason, []).append(what)

    def exclude(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def entries(self) -> list[tuple[str, str]]:
        """(what, reason) for every skipped entry."""
        return [(what, reason) for reason, whats in sorted(self.skipped.items()) for what in whats]

    def summary(self) -> str:
        parts = [f"{len(v)} skipped: {reason}" for reason, v in sorted(self.skipped.items())]
        parts += [f"{n} excluded: {reason}" for reason, n in sorted(self.excluded.items())]
        return "; ".join(parts) or "nothing skipped"
