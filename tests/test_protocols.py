"""Fold protocols: speaker independence, validation placement, the RAVDESS rule, determinism."""

from __future__ import annotations

import random

import pytest

from featurize.records import Utterance
from train.protocols import Fold, check_fold, make_folds

LABELS4 = ("neutral", "happy", "sad", "angry")


def ravdess_like(n_actors: int = 24, per_actor: int = 8) -> list[Utterance]:
    """Like the RAVDESS reader's output: speaker Actor_XX, session = the actor number."""
    return [
        Utterance(
            utt_id=f"ravdess/{a:02d}-{i:02d}",
            corpus="ravdess",
            speaker=f"Actor_{a:02d}",
            session=str(a),
            label=LABELS4[i % 4],
        )
        for a in range(1, n_actors + 1)
        for i in range(per_actor)
    ]


def iemocap_like(per_speaker: int = 6) -> list[Utterance]:
    """5 sessions x 2 speakers (F, M), like the IEMOCAP reader (speaker Ses01_F, session Ses01)."""
    return [
        Utterance(
            utt_id=f"iemocap/Ses0{s}{g}_impro01_{g}{i:03d}",
            corpus="iemocap",
            speaker=f"Ses0{s}_{g}",
            session=f"Ses0{s}",
            dialog=f"Ses0{s}{g}_impro01",
            label=LABELS4[i % 4],
        )
        for s in range(1, 6)
        for g in "FM"
        for i in range(per_speaker)
    ]


def split_carrying() -> list[Utterance]:
    """Like the IEMOCAP transcript corpus: sessions 1-4 train/valid by dialogue, session 5 test."""
    utts = []
    for s in range(1, 6):
        for d in range(4):
            dialog = f"Ses0{s}F_impro0{d}"
            split = "test" if s == 5 else ("valid" if d == 3 else "train")
            for turn in range(6):
                who = "FM"[turn % 2]
                utts.append(
                    Utterance(
                        utt_id=f"iemocap/{dialog}_{turn:03d}",
                        corpus="iemocap-text",
                        speaker=f"Ses0{s}_{who}",
                        session=f"Ses0{s}",
                        dialog=dialog,
                        turn=turn,
                        label=LABELS4[turn % 4],
                        split=split,
                    )
                )
    return utts


def speakers(utts: list[Utterance], ids: list[str]) -> set[str]:
    by_id = {u.utt_id: u.speaker for u in utts}
    return {by_id[i] for i in ids}


def assert_partition(fold: Fold, utts: list[Utterance]) -> None:
    """Sets pairwise disjoint and, for a speaker-independent fold, no test speaker seen elsewhere."""
    train, valid, test = set(fold.train), set(fold.valid), set(fold.test)
    assert train and valid and test
    assert not train & valid and not train & test and not valid & test
    if fold.speaker_independent:
        assert not speakers(utts, fold.test) & speakers(utts, fold.train + fold.valid)


CASES = [
    ("rav4", ravdess_like, {}),
    ("rav8", ravdess_like, {}),
    ("loso", iemocap_like, {}),
    ("loso", ravdess_like, {}),
    ("holdout", iemocap_like, {}),
    ("holdout", ravdess_like, {}),
    ("holdout", split_carrying, {}),
    ("iemo-text", split_carrying, {}),
    ("holdout", split_carrying, {"use_split": False}),
    ("speaker-kfold", iemocap_like, {}),
    ("speaker-kfold", ravdess_like, {"k": 4}),
]


@pytest.mark.parametrize(("protocol", "corpus", "options"), CASES)
def test_every_protocol_is_speaker_independent(protocol, corpus, options):
    utts = corpus()
    folds = make_folds(protocol, utts, seed=3, **options)
    assert folds
    for fold in folds:
        assert fold.speaker_independent
        assert_partition(fold, utts)


@pytest.mark.parametrize(("protocol", "corpus", "options"), CASES)
def test_deterministic_per_seed_and_input_order(protocol, corpus, options):
    utts = corpus()
    shuffled = list(utts)
    random.Random(1).shuffle(shuffled)
    assert make_folds(protocol, utts, seed=7, **options) == make_folds(protocol, shuffled, seed=7, **options)


@pytest.mark.parametrize("protocol", ["rav4", "rav8"])
def test_ravdess_folds_follow_the_actor_rule(protocol):
    utts = ravdess_like()
    folds = make_folds(protocol, utts)
    assert [f.name for f in folds] == [f"fold{k}" for k in range(5)]
    for k, fold in enumerate(folds):
        test_actors = {int(s.split("_")[1]) for s in speakers(utts, fold.test)}
        valid_actors = {int(s.split("_")[1]) for s in speakers(utts, fold.valid)}
        assert test_actors == {a for a in range(1, 25) if (a - 1) % 5 == k}
        assert valid_actors == {a for a in range(1, 25) if (a - 1) % 5 == (k + 1) % 5}
    # Every utterance is tested exactly once across the folds.
    tested = [i for f in folds for i in f.test]
    assert sorted(tested) == sorted(u.utt_id for u in utts)


def test_ravdess_actor_from_speaker_when_session_missing():
    utts = ravdess_like()
    for u in utts:
        u.session = None
    assert make_folds("rav4", utts) == make_folds("rav4", ravdess_like())


def test_ravdess_after_label_filtering_keeps_the_rule():
    # The caller filters to the 4-class set first; the fold scheme must not change.
    utts = [u for u in ravdess_like() if u.label in ("happy", "sad")]
    for k, fold in enumerate(make_folds("rav4", utts)):
        assert all((int(s.split("_")[1]) - 1) % 5 == k for s in speakers(utts, fold.test))


def test_loso_tests_each_session_and_validates_on_the_next():
    utts = iemocap_like()
    folds = make_folds("loso", utts)
    sessions = [f"Ses0{s}" for s in range(1, 6)]
    assert [f.name for f in folds] == sessions
    session_of = {u.utt_id: u.session for u in utts}
    for k, fold in enumerate(folds):
        assert {session_of[i] for i in fold.test} == {sessions[k]}
        assert {session_of[i] for i in fold.valid} == {sessions[(k + 1) % 5]}
        assert sessions[k] not in {session_of[i] for i in fold.train}
        assert len(fold.train) + len(fold.valid) + len(fold.test) == len(utts)


def test_loso_orders_numeric_sessions_naturally():
    folds = make_folds("loso", ravdess_like(n_actors=12))
    assert [f.name for f in folds] == [str(a) for a in range(1, 13)]


def test_holdout_defaults_to_last_session_and_whole_validation_speakers():
    utts = iemocap_like()
    fold = make_folds("holdout", utts, seed=0)[0]
    session_of = {u.utt_id: u.session for u in utts}
    assert {session_of[i] for i in fold.test} == {"Ses05"}
    valid_speakers = speakers(utts, fold.valid)
    assert len(valid_speakers) == 1  # 10% of 8 training speakers, at least one
    assert not valid_speakers & speakers(utts, fold.train)
    assert not valid_speakers & {"Ses05_F", "Ses05_M"}


def test_holdout_validation_speakers_depend_on_seed():
    utts = ravdess_like()
    drawn = {tuple(sorted(speakers(utts, make_folds("holdout", utts, seed=s)[0].valid))) for s in range(10)}
    assert len(drawn) > 1
    for valid in drawn:
        assert len(valid) == 2  # round(0.1 * 23 training actors)


def test_holdout_explicit_test_sessions():
    utts = iemocap_like()
    fold = make_folds("holdout", utts, test_sessions=["Ses01", "Ses02"])[0]
    assert speakers(utts, fold.test) == {"Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"}
    with pytest.raises(ValueError, match="not in the corpus"):
        make_folds("holdout", utts, test_sessions=["Ses09"])


def test_holdout_uses_the_official_split():
    utts = split_carrying()
    fold = make_folds("holdout", utts)[0]
    split_of = {u.utt_id: u.split for u in utts}
    assert fold.name == "official"
    for name in ("train", "valid", "test"):
        assert {split_of[i] for i in getattr(fold, name)} == {name}
    with pytest.raises(ValueError, match="official split"):
        make_folds("holdout", utts, test_sessions=["Ses05"])


def test_holdout_rejects_partial_split():
    utts = split_carrying()
    utts[0].split = None
    with pytest.raises(ValueError, match="carry no split"):
        make_folds("holdout", utts)


def test_official_split_that_leaks_a_test_speaker_is_refused():
    utts = split_carrying()
    # A Ses05 dialogue moved into training: its speakers are also in the test set.
    for u in utts:
        if u.dialog == "Ses05F_impro00":
            u.split = "train"
    with pytest.raises(ValueError, match="Ses05_F"):
        make_folds("holdout", utts)


def test_speaker_kfold_round_robin_over_sorted_speakers():
    utts = ravdess_like(n_actors=10)
    folds = make_folds("speaker-kfold", utts, k=5)
    # Natural order Actor_01 .. Actor_10, dealt round-robin: fold 0 gets Actor_01 and Actor_06.
    assert speakers(utts, folds[0].test) == {"Actor_01", "Actor_06"}
    assert speakers(utts, folds[0].valid) == {"Actor_02", "Actor_07"}
    assert speakers(utts, folds[4].valid) == {"Actor_01", "Actor_06"}


def test_stratified_is_flagged_and_records_overlap():
    utts = iemocap_like(per_speaker=20)
    fold = make_folds("stratified", utts, seed=1)[0]
    assert fold.speaker_independent is False
    assert fold.overlap_speakers  # same speakers everywhere: recorded, not raised
    assert_partition(fold, utts)
    assert len(fold.train) + len(fold.valid) + len(fold.test) == len(utts)
    label_of = {u.utt_id: u.label for u in utts}
    for label in LABELS4:
        n = sum(1 for u in utts if u.label == label)  # 50 per label
        assert sum(1 for i in fold.train if label_of[i] == label) == round(0.7 * n)
        assert sum(1 for i in fold.valid if label_of[i] == label) == round(0.2 * n)
    assert make_folds("stratified", utts, seed=1) == make_folds("stratified", utts, seed=1)
    assert make_folds("stratified", utts, seed=1) != make_folds("stratified", utts, seed=2)


def test_utterance_kfold_is_flagged_and_balances_each_label_over_the_folds():
    utts = ravdess_like(n_actors=6, per_actor=20)  # 30 per label
    folds = make_folds("utterance-kfold", utts, seed=0)
    assert len(folds) == 5 and all(not f.speaker_independent and f.overlap_speakers for f in folds)
    label_of = {u.utt_id: u.label for u in utts}
    for k, fold in enumerate(folds):
        assert_partition(fold, utts)
        assert fold.valid == folds[(k + 1) % 5].test  # validation is the next fold, never this fold's test
        assert all(sum(label_of[i] == label for i in fold.test) == 6 for label in LABELS4)
    assert sorted(i for f in folds for i in f.test) == sorted(u.utt_id for u in utts)  # each tested once
    assert make_folds("utterance-kfold", utts, seed=0) == folds
    assert make_folds("utterance-kfold", utts, seed=1) != folds
    assert len(make_folds("utterance-kfold", utts, k=3)) == 3
    with pytest.raises(ValueError, match="k >= 3"):
        make_folds("utterance-kfold", utts, k=2)


def test_check_fold_names_the_leaking_speakers():
    utts = iemocap_like()
    ids = {s: [u.utt_id for u in utts if u.speaker == s] for s in {u.speaker for u in utts}}
    bad = Fold(
        name="bad",
        train=ids["Ses01_F"] + ids["Ses02_M"][:3],
        valid=ids["Ses03_F"],
        test=ids["Ses02_M"][3:],
    )
    with pytest.raises(ValueError, match="Ses02_M"):
        check_fold(bad, utts)


def test_check_fold_rejects_valid_test_speaker_overlap():
    utts = iemocap_like()
    ids = {s: [u.utt_id for u in utts if u.speaker == s] for s in {u.speaker for u in utts}}
    bad = Fold(name="bad", train=ids["Ses01_F"], valid=ids["Ses04_M"][:2], test=ids["Ses04_M"][2:])
    with pytest.raises(ValueError, match="Ses04_M"):
        check_fold(bad, utts)


def test_check_fold_rejects_shared_utterances_even_when_speaker_dependent():
    utts = iemocap_like()
    ids = [u.utt_id for u in utts]
    bad = Fold(name="bad", train=ids[:10], valid=ids[10:20], test=ids[19:30], speaker_independent=False)
    with pytest.raises(ValueError, match="both valid and test"):
        check_fold(bad, utts)


def test_check_fold_rejects_unknown_ids_and_empty_sets():
    utts = iemocap_like()
    ids = [u.utt_id for u in utts]
    with pytest.raises(ValueError, match="unknown"):
        check_fold(Fold(name="x", train=ids[:5], valid=ids[5:6], test=["nope"]), utts)
    with pytest.raises(ValueError, match="empty"):
        check_fold(Fold(name="x", train=ids[:5], valid=[], test=ids[-5:]), utts)


def test_bad_protocol_and_options():
    utts = iemocap_like()
    with pytest.raises(ValueError, match="unknown protocol"):
        make_folds("nope", utts)
    with pytest.raises(ValueError, match="test_session"):
        make_folds("holdout", utts, test_session="Ses05")  # typo of test_sessions
    utts[0].session = None
    with pytest.raises(ValueError, match="no session"):
        make_folds("loso", utts)
