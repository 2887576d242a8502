"""Metrics on hand-worked examples, cross-checked against scikit-learn (used in tests only)."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest

from train.metrics import compute_metrics, summarize

LABELS = ["a", "b", "c"]
# Imbalanced: 6 a, 2 b, 2 c, so accuracy (WA) and mean recall (UA) differ.
Y_TRUE = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
Y_PRED = ["a", "a", "a", "a", "a", "b", "b", "a", "a", "c"]


def test_hand_worked_imbalanced_example():
    m = compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["confusion"] == [[5, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert m["wa"] == pytest.approx(7 / 10)
    # recalls 5/6, 1/2, 1/2
    assert m["ua"] == pytest.approx((5 / 6 + 1 / 2 + 1 / 2) / 3)
    assert m["wa"] != pytest.approx(m["ua"])
    # precisions 5/7, 1/2, 1/1; F1 = 2tp / (support + predicted): 10/13, 2/4, 2/3
    assert m["per_class"]["a"]["precision"] == pytest.approx(5 / 7)
    assert m["per_class"]["c"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["f1"] == pytest.approx(10 / 13)
    assert m["per_class"]["b"]["f1"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((10 / 13 + 1 / 2 + 2 / 3) / 3)
    assert [m["per_class"][k]["support"] for k in LABELS] == [6, 2, 2]
    assert m["n"] == 10
    json.dumps(m)  # plain Python throughout


def test_indices_and_names_give_the_same_result():
    index = {k: i for i, k in enumerate(LABELS)}
    by_index = compute_metrics([index[y] for y in Y_TRUE], np.array([index[y] for y in Y_PRED]), LABELS)
    assert by_index == compute_metrics(Y_TRUE, Y_PRED, LABELS)


def test_class_with_no_support_and_no_predictions_is_excluded():
    with_extra = compute_metrics(Y_TRUE, Y_PRED, [*LABELS, "d"])
    plain = compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert with_extra["ua"] == pytest.approx(plain["ua"])
    assert with_extra["macro_f1"] == pytest.approx(plain["macro_f1"])
    assert with_extra["per_class"]["d"] == {"recall": None, "precision": None, "f1": None, "support": 0, "predicted": 0}


def test_predicted_but_absent_class_counts_zero_in_f1_not_in_ua():
    labels = ["a", "b", "c", "d"]
    y_pred = Y_PRED[:-1] + ["d"]  # the last c predicted as d, which never occurs
    m = compute_metrics(Y_TRUE, y_pred, labels)
    assert m["per_class"]["d"]["recall"] is None
    assert m["per_class"]["d"]["precision"] == 0.0
    assert m["per_class"]["d"]["f1"] == 0.0
    # UA over a, b, c (c now has recall 0); macro-F1 over a, b, c, d.
    assert m["ua"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
    assert m["macro_f1"] == pytest.approx((10 / 13 + 1 / 2 + 0 + 0) / 4)


def test_perfect_and_all_wrong():
    assert compute_metrics(["a", "b"], ["a", "b"], LABELS)["ua"] == 1.0
    m = compute_metrics(["a", "b"], ["b", "a"], LABELS)
    assert (m["wa"], m["ua"], m["macro_f1"]) == (0.0, 0.0, 0.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not in"):
        compute_metrics(["a"], ["z"], LABELS)
    with pytest.raises(ValueError, match="out of range"):
        compute_metrics([0], [3], LABELS)
    with pytest.raises(ValueError, match="items"):
        compute_metrics(["a", "b"], ["a"], LABELS)
    with pytest.raises(ValueError, match="no utterances"):
        compute_metrics([], [], LABELS)


@pytest.mark.parametrize("seed", range(20))
def test_matches_sklearn_on_random_predictions(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    labels = ["n", "h", "s", "a", "f"]
    # Skewed class draws, so some classes are rare or missing from y_true or y_pred.
    y_true = rng.choices(labels, weights=[8, 4, 2, 1, 0.3], k=rng.randint(5, 60))
    y_pred = [y if rng.random() < 0.5 else rng.choice(labels[:4]) for y in y_true]
    m = compute_metrics(y_true, y_pred, labels)
    assert m["wa"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    # balanced_accuracy drops classes absent from y_true, as UA does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns when y_pred has classes y_true lacks
        assert m["ua"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["confusion"] == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    f1 = sklearn_metrics.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for name, value in zip(labels, f1, strict=True):
        assert (m["per_class"][name]["f1"] or 0.0) == pytest.approx(value)


def test_summarize_uses_sample_std():
    results = [
        {"wa": 0.5, "ua": 0.4, "macro_f1": 0.3},
        {"wa": 0.7, "ua": 0.6, "macro_f1": 0.3},
        {"wa": 0.9, "ua": 0.5, "macro_f1": 0.3},
    ]
    s = summarize(results)
    assert s["wa"]["mean"] == pytest.approx(0.7)
    assert s["wa"]["std"] == pytest.approx(math.sqrt((0.04 + 0.0 + 0.04) / 2))  # ddof=1
    assert s["wa"]["std"] == pytest.approx(float(np.std([0.5, 0.7, 0.9], ddof=1)))
    assert (s["wa"]["min"], s["wa"]["max"], s["wa"]["n"]) == (0.5, 0.9, 3)
    assert s["macro_f1"]["std"] == pytest.approx(0.0)
    assert set(s) == {"wa", "ua", "macro_f1"}


def test_summarize_single_result_and_custom_keys():
    s = summarize([{"wa": 0.8, "ua": 0.7}], keys=("ua",))
    assert s == {"ua": {"mean": 0.7, "std": 0.0, "min": 0.7, "max": 0.7, "n": 1}}
    with pytest.raises(KeyError, match="macro_f1"):
        summarize([{"wa": 0.8}], keys=("macro_f1",))
    with pytest.raises(ValueError):
        summarize([])
