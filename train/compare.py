"""`train compare RUN_A RUN_B`: is B better than A, paired over the same folds, seeds and test utterances?

Two levels, both paired (the runs must share their protocol's folds and seeds):

* per run (fold x seed): the difference of WA, UA and macro-F1, its mean, standard error, a paired t-test
  and a Wilcoxon signed-rank test over the runs both directories finished;
* per utterance: from both runs' predictions.csv, McNemar's exact test on the test utterances one run gets
  right and the other wrong (each (utterance, seed) pair counted once).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

METRICS = ("wa", "ua", "macro_f1")


def fold_metrics(run: Path) -> dict[tuple[str, int], dict]:
    from train.report import read_fold_metrics, requested_seeds

    seeds = requested_seeds(run)
    out = {}
    for f in sorted((run / "folds").glob("*/metrics.json")):
        m = read_fold_metrics(f)
        if seeds is None or m["seed"] in seeds:
            out[(m["fold"], m["seed"])] = m
    if not out:
        raise FileNotFoundError(f"{run}: no finished fold (folds/*/metrics.json); is it a run directory?")
    return out


def _prediction_rows(run: Path) -> list[dict]:
    """The rows of the run's predictions.csv (or its folds')."""
    files = [run / "predictions.csv"] if (run / "predictions.csv").exists() else sorted(
        (run / "folds").glob("*/predictions.csv"))
    rows = []
    for path in files:
        with path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def predictions(run: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """(utt_id, seed) -> (truth, prediction) from the run's predictions.csv (or its folds')."""
    return {(row["utt_id"], int(row["seed"])): (row["truth"], row["prediction"]) for row in _prediction_rows(run)}


def test_sets(run: Path) -> dict[tuple[str, int], set[str]]:
    """(fold, seed) -> the utterances that run tested, from its predictions."""
    out: dict[tuple[str, int], set[str]] = {}
    for row in _prediction_rows(run):
        out.setdefault((row["fold"], int(row["seed"])), set()).add(row["utt_id"])
    return out


def check_same_tests(a: Path, b: Path, pairs: list[tuple[str, int]]) -> None:
    """Paired runs must have tested the same utterances: a fold's name alone does not say so (a random split
    deals every label present, and a dialogue head keeps out-of-set utterances as context, so its folds over
    utterances differ from another head's)."""
    ta, tb = test_sets(a), test_sets(b)
    for pair in pairs:
        if pair in ta and pair in tb and ta[pair] != tb[pair]:
            fold, seed = pair
            raise ValueError(
                f"{a} and {b} tested different utterances in fold {fold} (seed {seed}): {len(ta[pair])} and "
                f"{len(tb[pair])}, {len(ta[pair] & tb[pair])} in both; their folds differ, so they cannot be paired")


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs as a binomial(n, 1/2)."""
    n = b_only + a_only
    if n == 0:
        return 1.0
    k = min(b_only, a_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: Path, b: Path) -> dict:
    """Paired differences B - A (see the module's docstring)."""
    from scipy import stats

    ma, mb = fold_metrics(a), fold_metrics(b)
    pairs = sorted(set(ma) & set(mb))
    if not pairs:
        raise ValueError(f"{a} and {b} share no fold x seed: were they run on the same protocol and seeds?")
    check_same_tests(a, b, pairs)
    out: dict = {"a": str(a), "b": str(b), "pairs": len(pairs), "only_a": len(set(ma) - set(mb)),
                 "only_b": len(set(mb) - set(ma)), "metrics": {}}
    for k in METRICS:
        d = [mb[p][k] - ma[p][k] for p in pairs]
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
        if n < 2:
            t_p = None
        elif sd < 1e-12:  # every pair differs by the same amount: the t statistic is infinite (or 0/0)
            t_p = 0.0 if abs(mean) > 1e-12 else 1.0
        else:
            t_p = float(stats.ttest_rel([mb[p][k] for p in pairs], [ma[p][k] for p in pairs]).pvalue)
        w_p = float(stats.wilcoxon(d).pvalue) if n > 1 and any(abs(x) > 1e-12 for x in d) else None
        out["metrics"][k] = {"a": sum(ma[p][k] for p in pairs) / n, "b": sum(mb[p][k] for p in pairs) / n,
                             "diff": mean, "se": sd / math.sqrt(n) if n > 1 else None, "t_test_p": t_p,
                             "wilcoxon_p": w_p}
    pa, pb = predictions(a), predictions(b)
    common = sorted(set(pa) & set(pb))
    if common:
        mismatched = [u for u in common if pa[u][0] != pb[u][0]]
        if mismatched:
            raise ValueError(f"{a} and {b} disagree on the true label of {len(mismatched)} utterances "
                             f"(e.g. {mismatched[0][0]}): different label sets?")
        right_a = {u: pa[u][0] == pa[u][1] for u in common}
        right_b = {u: pb[u][0] == pb[u][1] for u in common}
        b_only = sum(right_b[u] and not right_a[u] for u in common)
        a_only = sum(right_a[u] and not right_b[u] for u in common)
        out["utterances"] = {"n": len(common), "both_right": sum(right_a[u] and right_b[u] for u in common),
                             "b_only": b_only, "a_only": a_only, "mcnemar_p": mcnemar_exact(b_only, a_only)}
    return out
