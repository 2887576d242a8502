"""fused-branches: where a fused `dialog` (logit-level fusion) loses to its audio-only variant.

    python bench/fused_branches.py [--protocol rav8] [--seed 0] [--store cache/bench.zarr] [--set key=value ...]

Trains the fused `dialog` (the bench grid's settings, plus any --set) fold by fold exactly as `train run` does
(select on validation, refit, score the test fold), then scores the scored model's three outputs on each test
fold: the fused logits (what the tables report), its audio branch's logits alone and its text branch's alone.
With the audio-only variant's UA from the bench records or a `train run --modality audio`, this separates what
joint training does to the audio branch from what adding the text logits does at test. One torch thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from featurize.store import FeatureStore  # noqa: E402
from train.cli import default_label_set, parse_sets  # noqa: E402
from train.data import Normalizer, load_data  # noqa: E402
from train.heads import get_head, make_config, make_recipe  # noqa: E402
from train.loop import LoopOptions, train_fold  # noqa: E402
from train.metrics import compute_metrics  # noqa: E402
from train.protocols import make_folds  # noqa: E402

OUTPUTS = ("logits", "audio_logits", "text_logits")


def branch_uas(model: torch.nn.Module, data, rows: list[int], norm: Normalizer) -> dict[str, float]:
    """UA on ``rows`` of each of the model's outputs (fused, audio branch, text branch)."""
    preds: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
    ys = []
    model.eval()
    with torch.no_grad():
        for batch in data.batches(rows, 64, shuffle=False, norm=norm):
            out = model({**batch, "phase": "test"})
            keep = batch["labels"] >= 0
            ys.append(batch["labels"][keep].numpy())
            for k in OUTPUTS:
                preds[k].append(out[k][keep].argmax(-1).numpy())
    y = np.concatenate(ys)
    return {k: compute_metrics(y, np.concatenate(v), data.classes)["ua"] for k, v in preds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="rav8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="cache/bench.zarr")
    ap.add_argument("--set", action="append", default=[], help="dialog option key=value (repeatable)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_head("dialog")
    options = parse_sets(a.set)
    config, recipe = make_config(spec, options), make_recipe(spec, options)
    data = load_data(FeatureStore(a.store, create=False), "ravdess", ["opensmile", "minilm"], spec,
                     default_label_set(a.protocol, None), None)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fold in make_folds(a.protocol, data.utts, seed=0):
            out = Path(tmp) / fold.name
            train_fold(spec, config, recipe, data, fold, a.seed, LoopOptions(device="cpu"), a.protocol, out)
            state = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
            model = spec.build(config, state["dims"], state["layers"], len(data.classes), state["modalities"])
            model.load_state_dict(state["state_dict"])
            uas = branch_uas(model, data, data.labelled(fold.test), Normalizer(state["normalizer"]))
            results.append(uas)
            print(fold.name, "  ".join(f"{k} {v:.3f}" for k, v in uas.items()), flush=True)
    print(f"{a.protocol} seed {a.seed}, mean UA over {len(results)} folds:",
          "  ".join(f"{k} {np.mean([r[k] for r in results]):.4f}" for k in OUTPUTS))


if __name__ == "__main__":
    main()
