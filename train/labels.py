"""Label sets: which raw corpus labels become which classes (and which are dropped).

The store keeps each corpus's raw labels; the label set is a training choice. Sets are defined
beside each corpus reader (``LABEL_SETS``), since they are facts about that corpus.
"""

from __future__ import annotations

from featurize.corpora.iemocap import LABEL_SETS as IEMOCAP_SETS
from featurize.corpora.ravdess import LABEL_SETS as RAVDESS_SETS
from featurize.records import Utterance

SETS_BY_CORPUS: dict[str, dict[str, dict[str, str]]] = {
    "iemocap": IEMOCAP_SETS,
    "iemocap-text": IEMOCAP_SETS,
    "ravdess": RAVDESS_SETS,
}
DEFAULT_SET = {"iemocap": "4class", "iemocap-text": "4class", "ravdess": "rav8"}


def label_set_names(corpus: str) -> list[str]:
    return sorted(SETS_BY_CORPUS.get(corpus, {})) + ["all"]


def resolve_label_set(corpus: str, name: str | None, utts: list[Utterance]) -> tuple[str, dict[str, str], list[str]]:
    """(name, raw label -> class, ordered class names). ``all`` keeps every raw label as a class."""
    if name is None:
        name = DEFAULT_SET.get(corpus, "all")
    if name == "all":
        raw = sorted({u.label for u in utts if u.label})
        mapping = {r: r for r in raw}
    else:
        sets = SETS_BY_CORPUS.get(corpus, {})
        if name not in sets:
            raise ValueError(f"corpus {corpus!r} has no label set {name!r}; choose from {label_set_names(corpus)}")
        mapping = sets[name]
    classes = list(dict.fromkeys(mapping.values()))
    return name, mapping, classes


def soft_target(u: Utterance, mapping: dict[str, str], classes: list[str]) -> list[float] | None:
    """Annotator shares mapped into the label set (merged classes add up), renormalised over the
    set's classes; None when the utterance has no annotator votes inside the set."""
    if not u.soft_labels:
        return None
    target = [0.0] * len(classes)
    for raw, share in u.soft_labels.items():
        if raw in mapping:
            target[classes.index(mapping[raw])] += share
    total = sum(target)
    return [t / total for t in target] if total > 0 else None
