"""epoch-cost: seconds per training epoch of one head on rav4 fold 0, under several options, in one run.

    python bench/epoch_cost.py --head late_concat --features fbank,minilm \\
        --options audio_pool=4 --options audio_pool=4,autocast=bfloat16,length_window=4 [--modality audio]

Each ``--options`` (comma-separated key=value, the `--set` of `train run`) is one variant. Every variant trains
the same fold's training speakers (validation scored after each epoch, as in a run) for one warm-up epoch, then
``--epochs`` timed ones, in this one process, one torch thread: how a 2-job sweep runs each fold. The variants
run one after the other, ``--repeats`` times round, and each line gives the median with min and max, and the
ratio to the first variant. Results are appended to bench/results/epoch-cost-<date>.txt with machine and code.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import code_version, machine  # noqa: E402
from featurize.store import FeatureStore  # noqa: E402
from train.cli import parse_sets  # noqa: E402
from train.data import Normalizer, load_data  # noqa: E402
from train.heads import get_head, make_config, make_recipe  # noqa: E402
from train.loop import LoopOptions, fit_head  # noqa: E402
from train.protocols import make_folds  # noqa: E402


def parse_options(text: str) -> dict[str, str]:
    """One ``--options`` variant: the ``--set`` pairs of `train run`, comma-separated."""
    try:
        return parse_sets([p for p in text.split(",") if p])
    except typer.BadParameter as e:
        raise SystemExit(f"--options: {e}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="cache/bench.zarr")
    ap.add_argument("--head", required=True)
    ap.add_argument("--features", required=True, help="comma-separated, as `train run --feature`")
    ap.add_argument("--modality", choices=("audio", "text"), help="one modality only (default: every feature)")
    ap.add_argument("--options", action="append", required=True, help="one variant: key=value,key=value")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if not Path(a.store).exists():
        raise SystemExit(f"no feature store at {a.store}: run `python bench/accuracy.py --only rav4` first")
    torch.set_num_threads(1)
    spec = get_head(a.head)
    data = load_data(FeatureStore(a.store), "ravdess", a.features.split(","), spec, "rav4",
                     [a.modality] if a.modality else None)
    fold = make_folds("rav4", data.utts, seed=0)[0]
    train_rows, valid_rows = data.labelled(fold.train), data.labelled(fold.valid)
    norm = Normalizer.fit(data, train_rows)
    variants = [parse_options(o) for o in a.options]

    def seconds_per_epoch(options: dict[str, str], epochs: int) -> float:
        """A fit as a run makes it (seed 0), its budget cut to ``epochs`` (the schedule spans them)."""
        config, recipe = make_config(spec, options), make_recipe(spec, options)
        start = time.perf_counter()
        fit_head(spec, config, recipe, data, norm, train_rows, ("valid", valid_rows), 0,
                 LoopOptions(device="cpu", max_epochs=epochs))
        return (time.perf_counter() - start) / epochs

    times: list[list[float]] = [[] for _ in variants]
    for options in variants:
        seconds_per_epoch(options, 1)  # warm-up: first-call costs (kernels, lazy imports)
    for _ in range(a.repeats):
        for i, options in enumerate(variants):
            times[i].append(seconds_per_epoch(options, a.epochs))
    modality = f", {a.modality} only" if a.modality else ""
    lines = [f"## epoch-cost {a.head} on {a.features}{modality}, rav4 fold 0 ({len(train_rows)} training, "
             f"{len(valid_rows)} validation utterances), one thread — {machine()}, code {code_version()}",
             "`python bench/epoch_cost.py " + " ".join(sys.argv[1:]) + "`", "",
             "| options | seconds per epoch (median, min-max) | vs the first |", "|---|---|---|"]
    base = statistics.median(times[0])
    for options, t in zip(a.options, times, strict=True):
        med = statistics.median(t)
        lines.append(f"| {options} | {med:.3f} ({min(t):.3f}-{max(t):.3f}) | {med / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / f"epoch-cost-{datetime.date.today().isoformat()}.txt"
    with out.open("a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
