"""Evaluation protocols: which utterances train, validate and test in each fold.

Every protocol except `stratified` and `utterance-kfold` is speaker-independent: no speaker of the test set is seen in
training or validation, and the validation set is drawn from training speakers, never from the
test fold (see docs/benchmarks.md). `check_fold` enforces that on every fold a protocol makes.

Protocols (the name picks the fold scheme only; the caller filters utterances to the label set):

- ``loso``: leave one session out; fold k tests the k-th session, validation is the next session
  in cyclic order.
- ``holdout`` (alias ``iemo-text``): one test fold; the corpus's official split when the
  utterances carry one, else the sessions in ``test_sessions`` with a seeded ~10% of the training
  speakers for validation.
- ``rav4`` / ``rav8``: RAVDESS, 5 folds by actor; fold k tests actors with (actor - 1) mod 5 = k,
  validation is fold (k + 1) mod 5.
- ``speaker-kfold``: k folds over the sorted speakers dealt round-robin, validation = next fold.
- ``stratified``: a seeded 70/20/10 split per label, NOT speaker-independent.
- ``utterance-kfold``: k folds over the utterances, each label shuffled (seeded) and dealt round-robin,
  validation = next fold; NOT speaker-independent. The "five-fold cross validation" a paper reports without
  saying how it split (FG-CME on RAVDESS) may be this; it exists to measure how much such a split adds.

Ids in `Fold.train`, `Fold.valid` and `Fold.test` are sorted, so a fold depends on the utterance
set and the seed only, not on the order the corpus reader yielded them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from featurize.records import Utterance

PROTOCOLS = ("loso", "holdout", "iemo-text", "rav4", "rav8", "speaker-kfold", "stratified", "utterance-kfold")
SPEAKER_DEPENDENT = {"stratified", "utterance-kfold"}  # protocols whose folds share speakers between train and test
RAVDESS_FOLDS = 5
SPLITS = ("train", "valid", "test")


@dataclass
class Fold:
    """One train/valid/test partition, as utterance ids.

    `speaker_independent` is False only for `stratified` and `utterance-kfold`; `overlap_speakers` then lists the
    speakers found in the test set and in train or valid, so a report can say how leaky it is.
    """

    name: str
    train: list[str]
    valid: list[str]
    test: list[str]
    speaker_independent: bool = True
    overlap_speakers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def natural_key(text: str) -> list:
    """Sort key that orders digit runs by value, so ``Actor_2`` sorts before ``Actor_10``."""
    # Tag each piece so ints and strings never get compared with each other.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def check_fold(fold: Fold, utts: Sequence[Utterance]) -> Fold:
    """Raise ValueError if `fold` leaks across its sets; return it (with overlap recorded) otherwise.

    Always checked: every id is a known utterance, no set is empty, no utterance is in two sets.
    For a speaker-independent fold, a speaker in both test and train/valid is an error naming the
    speakers (that also covers valid and test sharing a speaker). For a speaker-dependent fold
    (`stratified`) that overlap is written into `fold.overlap_speakers` instead.
    """
    speaker_of = {u.utt_id: u.speaker for u in utts}
    sets = {"train": fold.train, "valid": fold.valid, "test": fold.test}
    for name, ids in sets.items():
        if not ids:
            raise ValueError(f"fold {fold.name}: {name} set is empty")
        unknown = [i for i in ids if i not in speaker_of]
        if unknown:
            raise ValueError(f"fold {fold.name}: {len(unknown)} unknown utterance ids in {name}, e.g. {unknown[:3]}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"fold {fold.name}: duplicate utterance ids in {name}")
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = set(sets[a]) & set(sets[b])
        if shared:
            raise ValueError(
                f"fold {fold.name}: {len(shared)} utterances in both {a} and {b}, e.g. {sorted(shared)[:3]}"
            )

    test_speakers = {speaker_of[i] for i in fold.test}
    seen_speakers = {speaker_of[i] for i in fold.train} | {speaker_of[i] for i in fold.valid}
    overlap = sorted(test_speakers & seen_speakers, key=natural_key)
    if fold.speaker_independent:
        if overlap:
            raise ValueError(f"fold {fold.name}: speakers in both test and train/valid: {', '.join(overlap)}")
    else:
        fold.overlap_speakers = overlap
    return fold


def split_dialogues(fold: Fold, utts: Sequence[Utterance]) -> list[str]:
    """The dialogues with utterances both in the fold's test set and in its training or validation set. A
    dialogue head reads whole dialogues as context, so in training it would read those test utterances'
    features (not their labels)."""
    dialog_of = {u.utt_id: u.dialog for u in utts if u.dialog is not None}
    test = {dialog_of[i] for i in fold.test if i in dialog_of}
    seen = {dialog_of[i] for i in (*fold.train, *fold.valid) if i in dialog_of}
    return sorted(test & seen, key=natural_key)


def make_folds(protocol: str, utts: Sequence[Utterance], seed: int = 0, **options: object) -> list[Fold]:
    """The folds of `protocol` over `utts`, each checked by `check_fold`.

    Options: ``holdout`` takes ``test_sessions`` (default: the last session), ``valid_fraction``
    (default 0.1) and ``use_split`` (default True); ``speaker-kfold`` and ``utterance-kfold`` take ``k`` (default 5);
    ``stratified`` takes ``fractions`` (default (0.7, 0.2, 0.1)). An unknown option is an error,
    so a typo cannot silently fall back to a default. `seed` only matters where something is
    drawn at random (holdout's validation speakers, stratified, utterance-kfold); the other schemes are fixed.
    """
    builders: dict[str, tuple[Callable[..., list[Fold]], set[str]]] = {
        "loso": (_loso, set()),
        "holdout": (_holdout, {"test_sessions", "valid_fraction", "use_split"}),
        "iemo-text": (_holdout, {"test_sessions", "valid_fraction", "use_split"}),
        "rav4": (_ravdess, set()),
        "rav8": (_ravdess, set()),
        "speaker-kfold": (_speaker_kfold, {"k"}),
        "stratified": (_stratified, {"fractions"}),
        "utterance-kfold": (_utterance_kfold, {"k"}),
    }
    if protocol not in builders:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    build, allowed = builders[protocol]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"protocol {protocol!r} takes no option(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    if "k" in options and (not isinstance(options["k"], int) or isinstance(options["k"], bool)):
        raise ValueError(f"protocol {protocol!r}: k is a number of folds, got {options['k']!r}")
    if "valid_fraction" in options and not isinstance(options["valid_fraction"], (int, float)):
        raise ValueError(f"protocol {protocol!r}: valid_fraction is a fraction, got {options['valid_fraction']!r}")
    if not utts:
        raise ValueError("no utterances")
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate utterance ids in the input")

    folds = build(list(utts), seed, **options)
    return [check_fold(fold, utts) for fold in folds]


def _ids(utts: Iterable[Utterance]) -> list[str]:
    return sorted(u.utt_id for u in utts)


def _sessions(utts: Sequence[Utterance], protocol: str) -> list[str]:
    missing = [u.utt_id for u in utts if u.session is None]
    if missing:
        what = ("leaves one session out" if protocol == "loso"
                else "tests on a session (or on the corpus's official split, which these utterances lack)")
        raise ValueError(
            f"{protocol} {what}, but {len(missing)} of {len(utts)} utterances have no session "
            f"(e.g. {', '.join(missing[:3])}): give the manifest a `session` column, or use "
            f"--protocol speaker-kfold (folds of speakers)")
    return sorted({u.session for u in utts}, key=natural_key)


def _loso(utts: list[Utterance], seed: int) -> list[Fold]:
    sessions = _sessions(utts, "loso")
    if len(sessions) < 3:
        raise ValueError(f"loso needs at least 3 sessions (test, valid, train); got {sessions}")
    folds = []
    for k, test_session in enumerate(sessions):
        # The next session in cyclic order: a whole group of training speakers, so validation
        # scores speakers the model has not trained on, just like the test fold.
        valid_session = sessions[(k + 1) % len(sessions)]
        folds.append(
            Fold(
                name=test_session,
                train=_ids(u for u in utts if u.session not in (test_session, valid_session)),
                valid=_ids(u for u in utts if u.session == valid_session),
                test=_ids(u for u in utts if u.session == test_session),
            )
        )
    return folds


def _holdout(
    utts: list[Utterance],
    seed: int,
    test_sessions: Sequence[str] | str | None = None,
    valid_fraction: float = 0.1,
    use_split: bool = True,
) -> list[Fold]:
    with_split = [u for u in utts if u.split is not None]
    if use_split and with_split:
        if test_sessions is not None:
            # Both would define the test set; refuse rather than silently ignore one.
            raise ValueError("test_sessions given but the utterances carry an official split; pass use_split=False")
        if len(with_split) != len(utts):
            # Mixed input means the official split cannot be trusted to cover the corpus.
            raise ValueError(f"{len(utts) - len(with_split)} utterances carry no split while others do")
        bad = sorted({u.split for u in utts} - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split values {bad}; expected {SPLITS}")
        return [
            Fold(
                name="official",
                train=_ids(u for u in utts if u.split == "train"),
                valid=_ids(u for u in utts if u.split == "valid"),
                test=_ids(u for u in utts if u.split == "test"),
            )
        ]

    sessions = _sessions(utts, "holdout")
    if test_sessions is None:
        test_sessions = [sessions[-1]]
    elif isinstance(test_sessions, str):
        test_sessions = [test_sessions]
    absent = sorted(set(test_sessions) - set(sessions))
    if absent:
        raise ValueError(f"test sessions {absent} not in the corpus sessions {sessions}")
    test = [u for u in utts if u.session in test_sessions]
    rest = [u for u in utts if u.session not in test_sessions]
    speakers = sorted({u.speaker for u in rest}, key=natural_key)
    if len(speakers) < 2:
        raise ValueError(f"holdout needs at least 2 training speakers to hold one out for validation; got {speakers}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1); got {valid_fraction}")
    # Whole speakers, at least one, and never all of them.
    n_valid = min(max(1, round(valid_fraction * len(speakers))), len(speakers) - 1)
    valid_speakers = set(random.Random(seed).sample(speakers, n_valid))
    name = "+".join(sorted(test_sessions, key=natural_key))
    return [
        Fold(
            name=name,
            train=_ids(u for u in rest if u.speaker not in valid_speakers),
            valid=_ids(u for u in rest if u.speaker in valid_speakers),
            test=_ids(test),
        )
    ]


def _actor_number(utt: Utterance) -> int:
    """The RAVDESS actor number: from `session` (the reader stores it there) or `Actor_XX`."""
    if utt.session is not None and utt.session.isdigit():
        return int(utt.session)
    match = re.fullmatch(r"Actor_(\d+)", utt.speaker)
    if match is None:
        raise ValueError(f"{utt.utt_id}: no actor number in session {utt.session!r} or speaker {utt.speaker!r}")
    return int(match.group(1))


def _folds_from_groups(utts: list[Utterance], group_of: dict[str, int], n_folds: int) -> list[Fold]:
    """Fold k tests group k and validates on group (k + 1) mod n; the rest trains."""
    folds = []
    for k in range(n_folds):
        v = (k + 1) % n_folds
        folds.append(
            Fold(
                name=f"fold{k}",
                train=_ids(u for u in utts if group_of[u.utt_id] not in (k, v)),
                valid=_ids(u for u in utts if group_of[u.utt_id] == v),
                test=_ids(u for u in utts if group_of[u.utt_id] == k),
            )
        )
    return folds


def _ravdess(utts: list[Utterance], seed: int) -> list[Fold]:
    group_of = {u.utt_id: (_actor_number(u) - 1) % RAVDESS_FOLDS for u in utts}
    return _folds_from_groups(utts, group_of, RAVDESS_FOLDS)


def _speaker_kfold(utts: list[Utterance], seed: int, k: int = 5) -> list[Fold]:
    speakers = sorted({u.speaker for u in utts}, key=natural_key)
    if k < 3:
        raise ValueError(f"speaker-kfold needs k >= 3 (test, valid, train folds); got {k}")
    if len(speakers) < k:
        raise ValueError(f"speaker-kfold with k={k} needs at least {k} speakers; got {len(speakers)}")
    fold_of_speaker = {s: i % k for i, s in enumerate(speakers)}
    group_of = {u.utt_id: fold_of_speaker[u.speaker] for u in utts}
    return _folds_from_groups(utts, group_of, k)


def _shuffled_by_label(utts: list[Utterance], seed: int) -> list[list[str]]:
    """Each label's utterance ids, labels in sorted order, each list shuffled by one seeded generator. The ids
    are sorted before the shuffle, so the draw depends on the seed, not on the input order."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for u in utts:
        by_label.setdefault(str(u.label), []).append(u.utt_id)
    shuffled = []
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        rng.shuffle(ids)
        shuffled.append(ids)
    return shuffled


def _utterance_kfold(utts: list[Utterance], seed: int, k: int = 5) -> list[Fold]:
    """k folds over utterances, each label's shuffled (seeded) and dealt round-robin (carried on from the last
    label's, so the folds' sizes differ by one at most), validation = next fold. NOT speaker-independent: every
    speaker is in every fold, as in a random k-fold cross-validation; and a dialogue head reads a test
    utterance's neighbours (unlabelled context) in training too, so on a corpus of dialogues it measures more
    than speaker overlap."""
    if k < 3:
        raise ValueError(f"utterance-kfold needs k >= 3 (test, valid, train folds); got {k}")
    group_of: dict[str, int] = {}
    dealt = 0
    for ids in _shuffled_by_label(utts, seed):
        for utt_id in ids:
            group_of[utt_id] = dealt % k
            dealt += 1
    folds = _folds_from_groups(utts, group_of, k)
    for fold in folds:
        fold.speaker_independent = False
    return folds


def _stratified(utts: list[Utterance], seed: int, fractions: Sequence[float] = (0.7, 0.2, 0.1)) -> list[Fold]:
    """Seeded train/valid/test split per label.

    NOT speaker-independent: the same speakers appear in every set, so it measures something
    easier than the other protocols. It exists to reproduce the USC report's numbers; its fold is
    flagged ``speaker_independent=False`` so the CLI and the report can say so.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1; got {fractions}")
    train: list[str] = []
    valid: list[str] = []
    test: list[str] = []
    for ids in _shuffled_by_label(utts, seed):
        n_train = round(fractions[0] * len(ids))
        n_valid = round(fractions[1] * len(ids))
        train += ids[:n_train]
        valid += ids[n_train : n_train + n_valid]
        test += ids[n_train + n_valid :]
    return [
        Fold(name="stratified", train=sorted(train), valid=sorted(valid), test=sorted(test), speaker_independent=False)
    ]
