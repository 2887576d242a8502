"""scaling: how extraction and training cost grow with the corpus — RAVDESS replicated 1x, 2x, 4x (ids suffixed).

python bench/scaling.py --data ../shared/data --replicas 1,2,4 --workers 2

After an untimed warm-up pass (files in the page cache, first-call setup done), for each size: extraction of
each CPU extractor into a fresh store (whole `run_extraction`: table, plan,
workers, commits), then one training epoch of `probe` on the fbank frames (every utterance, 8 classes),
each as seconds and as seconds per hour of audio. Constant per-audio-hour figures mean cost grows linearly
with the corpus; the ratio column compares each size's per-hour cost with 1x's.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from bench.common import machine  # noqa: E402
from featurize.corpora import read_corpus  # noqa: E402
from featurize.extractors import EXTRACTORS  # noqa: E402
from featurize.pipeline import run_extraction  # noqa: E402
from featurize.store import FeatureStore  # noqa: E402


def replicate(utts: list, k: int) -> list:
    """k copies of the corpus, copy j's ids suffixed -r<j> (speakers too, so protocols see new people)."""
    return [dataclasses.replace(u, utt_id=f"{u.utt_id}-r{j}", speaker=f"{u.speaker}-r{j}")
            for j in range(k) for u in utts]


def one_epoch(store: FeatureStore) -> float:
    """Seconds of one training epoch of `probe` over every stored fbank utterance."""
    import torch

    from train.data import Normalizer, load_data
    from train.heads import get_head, make_config, make_recipe
    from train.loop import pick_device, run_epochs

    spec = get_head("probe")
    data = load_data(store, "ravdess", ["fbank"], spec, "all")
    rows = list(range(len(data.utts)))
    model = spec.build(make_config(spec), {"audio": 40}, {"audio": 1}, data.n_classes, ["audio"])
    t0 = time.perf_counter()
    run_epochs(model, make_recipe(spec), data, Normalizer.fit(data, rows), rows, None, 1, 1,
               torch.Generator().manual_seed(0), pick_device("cpu"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--extractors", default="fbank,opensmile")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    base, _ = read_corpus("ravdess", Path(a.data) / "ravdess")
    hours = sum(u.duration or 0.0 for u in base) / 3600
    print(f"scaling on RAVDESS ({len(base)} utterances, {hours:.2f} h per copy); {machine()}; "
          f"{a.workers} workers; {time.strftime('%Y-%m-%d')}")
    # untimed warm-up: the audio files into the page cache, imports, openSMILE's and torch's first-call setup
    where = Path(tempfile.mkdtemp(prefix="scaling-warmup-"))
    try:
        store = FeatureStore(where / "s.zarr")
        for name in a.extractors.split(","):
            run_extraction(store, base, EXTRACTORS.get(name)(), workers=a.workers, console=Console(quiet=True))
        one_epoch(store)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    rows = []
    for k in (int(x) for x in a.replicas.split(",")):
        utts = replicate(base, k)
        where = Path(tempfile.mkdtemp(prefix=f"scaling{k}x-"))
        try:
            store = FeatureStore(where / "s.zarr")
            for name in a.extractors.split(","):
                t0 = time.perf_counter()
                run_extraction(store, utts, EXTRACTORS.get(name)(), workers=a.workers, console=Console(quiet=True))
                rows.append((f"extract {name}", k, time.perf_counter() - t0, hours * k))
            rows.append(("train probe, 1 epoch", k, one_epoch(store), hours * k))
        finally:
            shutil.rmtree(where, ignore_errors=True)
    first = {what: sec / h for what, kk, sec, h in rows if kk == rows[0][1]}
    print("\n| work | copies | audio h | seconds | s per audio hour | per-hour cost vs 1st size |")
    print("|---|---|---|---|---|---|")
    for what, k, sec, h in rows:
        print(f"| {what} | {k}x | {h:.2f} | {sec:.1f} | {sec / h:.1f} | {(sec / h) / first[what]:.2f} |")


if __name__ == "__main__":
    main()
