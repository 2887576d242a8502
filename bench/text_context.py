"""Does encoding an utterance after its dialogue's previous turns give `dialog` better text vectors? (issue #10)

    python bench/text_context.py --data ../shared/data --turns 2 [--store cache/text-context.zarr]

An experiment, not an extractor option. For IEMOCAP transcripts (COSMIC splits, 4 classes), each utterance is
encoded by MPNet (`make models`) as the pair (the previous ``--turns`` turns, each "speaker: text"; the utterance),
and its vector is the mean of the last layer over the utterance's own tokens; ``--turns 0`` encodes the utterance
alone (the stored `sentence` vector, less [CLS]/[SEP]). It prints, in the same run, z-score + scikit-learn
LogisticRegression (train + valid -> test UA) on these vectors, and writes them to a store of their own as feature
`mpnet-context<K>`, so the dialogue head can be trained on them:

    train run --head dialog --feature mpnet-context2 --modality text --corpus iemocap-text --protocol holdout \
        --labels 4class --store cache/text-context.zarr --seeds 0,1,2 --set hidden=200 --set dropout=0.3 \
        --set input_dropout=0.3

What it measured is in bench/results/tuning-2026-12-06.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from featurize.corpora import read_corpus  # noqa: E402
from featurize.models import resolve_model  # noqa: E402
from featurize.store import ArraySpec, FeatureStore  # noqa: E402
from train.heads.probe import masked_mean  # noqa: E402
from train.labels import resolve_label_set  # noqa: E402


@torch.no_grad()
def encode(pairs: list[tuple[str, str]], turns: int, batch: int = 32) -> np.ndarray:
    """One vector per (context, utterance): the mean of MPNet's last layer over the utterance's tokens."""
    from transformers import AutoModel, AutoTokenizer

    where = resolve_model("mpnet")
    tok = AutoTokenizer.from_pretrained(where)
    model = AutoModel.from_pretrained(where).eval()
    out = []
    for i in range(0, len(pairs), batch):
        contexts, texts = zip(*pairs[i:i + batch], strict=True)
        if turns == 0:
            enc = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
            own = enc["attention_mask"].bool() & ~torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
        else:  # the context is cut first when the pair is too long: the utterance is what is pooled
            enc = tok(list(contexts), list(texts), padding=True, truncation="only_first", max_length=256,
                      return_tensors="pt", return_token_type_ids=False)
            own = torch.tensor([[s == 1 for s in enc.sequence_ids(b)] for b in range(len(texts))])
        out.append(masked_mean(model(**enc).last_hidden_state, own).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--turns", type=int, default=2, help="previous turns of the dialogue encoded before each one")
    ap.add_argument("--store", default="cache/text-context.zarr")
    args = ap.parse_args()
    started = time.time()
    utts, _ = read_corpus("iemocap-text", args.data / "iemocap_text")
    dialogues: dict[str, list] = {}
    for u in utts:
        dialogues.setdefault(u.dialog, []).append(u)
    ordered, pairs = [], []
    for dialogue in dialogues.values():
        dialogue.sort(key=lambda u: u.turn)
        for j, u in enumerate(dialogue):
            before = dialogue[max(0, j - args.turns):j] if args.turns else []
            pairs.append((" ".join(f"{p.speaker[-1]}: {p.text}" for p in before) or ".", u.text or ""))
            ordered.append(u)
    vectors = encode(pairs, args.turns)

    store = FeatureStore(args.store)
    store.write_utterances(utts)
    writer = store.writer(f"mpnet-context{args.turns}", "mpnet", {"context_turns": args.turns, "model": "mpnet"},
                          [ArraySpec("sentence", "utterance", (vectors.shape[1],), "float16")])
    writer.commit([u.utt_id for u in ordered], [{"sentence": v.astype(np.float16)} for v in vectors])
    writer.finish(complete=True)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    _, to_class, classes = resolve_label_set("iemocap-text", "4class", utts)  # the bench's: happy + excited merged
    keep = [i for i, u in enumerate(ordered) if u.label in to_class]
    x, y = vectors[keep], np.array([classes.index(to_class[ordered[i].label]) for i in keep])
    test = np.array([ordered[i].split == "test" for i in keep])
    scale = StandardScaler().fit(x[~test])
    print(f"{machine()}; MPNet, {args.turns} previous turns; {len(ordered)} utterances encoded in "
          f"{time.time() - started:.0f} s; written to {args.store} as mpnet-context{args.turns}")
    for c in (0.001, 0.01, 0.1):
        clf = LogisticRegression(C=c, max_iter=3000).fit(scale.transform(x[~test]), y[~test])
        ua = balanced_accuracy_score(y[test], clf.predict(scale.transform(x[test])))
        print(f"  logistic regression C={c}: test UA {ua:.4f}")


if __name__ == "__main__":
    main()
