"""Classification metrics reported by every run: WA, UA, macro-F1, per-class scores, confusion.

Definitions (written out because papers differ on them):

- WA (weighted accuracy) = overall accuracy.
- UA (unweighted accuracy) = mean recall over the classes present in `y_true`; a class with no
  test utterances has no recall and is left out rather than counted as 0.
- macro-F1 = mean F1 over the classes present in `y_true` or `y_pred`, with F1 = 0 for a class
  that is predicted but never true (or true but never predicted). This is what scikit-learn's
  ``f1_score(average="macro", zero_division=0)`` computes when it is not given ``labels``.
  A class in `labels` with neither support nor predictions is excluded: it says nothing about
  the model, and counting it as 0 would make the score depend on the label list.

Computed with scikit-learn (``precision_recall_fscore_support``, ``confusion_matrix``), restricted as above.
Per-class values that are undefined (recall without support, precision without predictions, F1
without either) are None, so they show up as missing in JSON instead of as a fake 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRIC_KEYS = ("wa", "ua", "macro_f1")


def _indices(values: Sequence[str | int], labels: list[str], what: str) -> list[int]:
    """Map labels (names, or integer indices into `labels`) to indices."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in index:
                raise ValueError(f"{what}: label {v!r} not in {labels}")
            out.append(index[v])
        else:
            # Integers, including numpy and torch integer scalars.
            i = int(v)
            if not 0 <= i < len(labels):
                raise ValueError(f"{what}: class index {i} out of range for {len(labels)} labels")
            out.append(i)
    return out


def compute_metrics(y_true: Sequence[str | int], y_pred: Sequence[str | int], labels: list[str]) -> dict:
    """WA, UA, macro-F1, per-class recall/precision/F1/support and the confusion matrix.

    `y_true` and `y_pred` hold label names or integer indices into `labels`. The confusion matrix
    is a list of lists with rows = true class and columns = predicted class, in `labels` order.
    Everything returned is plain Python (JSON-serialisable).
    """
    true = _indices(y_true, labels, "y_true")
    pred = _indices(y_pred, labels, "y_pred")
    if len(true) != len(pred):
        raise ValueError(f"y_true has {len(true)} items, y_pred {len(pred)}")
    if not true:
        raise ValueError("no utterances to score")

    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    classes = list(range(len(labels)))
    cm = confusion_matrix(true, pred, labels=classes)
    # zero_division=nan: a precision without predictions (or a recall without support) is undefined, not 0;
    # F1 is computed from counts (2tp / (2tp + fp + fn)), so it is 0 for a class true or predicted but not
    # both, and undefined only for a class neither true nor predicted.
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=classes, zero_division=np.nan)
    predicted = cm.sum(axis=0)

    def defined(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    per_class = {name: {"recall": defined(recall[c]), "precision": defined(precision[c]), "f1": defined(f1[c]),
                        "support": int(support[c]), "predicted": int(predicted[c])}
                 for c, name in enumerate(labels)}
    present = support > 0  # UA: classes with test utterances; macro-F1: classes true or predicted
    return {
        "wa": float(accuracy_score(true, pred)),
        "ua": float(recall[present].mean()),
        "macro_f1": float(f1[(support + predicted) > 0].mean()),
        "n": len(true),
        "labels": list(labels),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def mean_std(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (ddof=1; 0.0 for a single value), min, max and n."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    # Sample std: the runs are a sample of folds x seeds, and papers report it this way.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def summarize(results: list[dict], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """Per key, mean ± std (sample std, ddof=1 when n > 1, else 0), min, max and n over `results`.

    `results` are `compute_metrics` dicts (one per fold x seed). Returns ``{key: {"mean", "std",
    "min", "max", "n"}}``.
    """
    if not results:
        raise ValueError("no results to summarise")
    summary = {}
    for key in keys:
        missing = [i for i, r in enumerate(results) if r.get(key) is None]
        if missing:
            raise KeyError(f"{key!r} missing from results at positions {missing}")
        summary[key] = mean_std([r[key] for r in results])
    return summary
