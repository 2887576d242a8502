"""feat-cpu: openSMILE and filterbank extraction with all workers vs one worker, same run.

python bench/feat_cpu.py --data ../shared/data --limit 480 --fbank-limit 1440

fbank is ~3 ms of work per utterance, so it gets more utterances: on a few hundred, the fixed
costs of a run (utterance table, process start) would be most of what is timed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, ratio_line, spread, timed  # noqa: E402
from featurize.corpora import read_corpus  # noqa: E402
from featurize.extractors.fbank import Fbank  # noqa: E402
from featurize.extractors.opensmile import OpenSmile  # noqa: E402
from featurize.pipeline import run_extraction  # noqa: E402
from featurize.store import FeatureStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--limit", type=int, default=480, help="utterances for openSMILE")
    ap.add_argument("--fbank-limit", type=int, default=1440, help="utterances for fbank")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    corpus, _ = read_corpus("ravdess", Path(a.data) / "ravdess")

    def subset(n: int) -> list:
        return corpus[:: max(1, len(corpus) // n)][:n]

    print(f"feat-cpu on RAVDESS; {machine()}")
    tmp = Path(tempfile.mkdtemp())
    from rich.console import Console

    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115 - progress bars off while timing
    for extractor, utts in ((Fbank(), subset(a.fbank_limit)), (OpenSmile("compare"), subset(a.limit))):
        seconds = sum(u.duration for u in utts)

        def once(workers: int, ex=extractor, utts=utts) -> None:
            path = tmp / "s.zarr"
            shutil.rmtree(path, ignore_errors=True)
            run_extraction(FeatureStore(path), utts, ex, workers=workers, console=quiet)

        ratios = []
        one, many = [], []
        for _ in range(a.repeats):  # interleaved, so machine noise hits both alike
            t1 = timed(lambda: once(1), 1)[0]
            tn = timed(lambda: once(a.workers), 1)[0]
            one.append(t1)
            many.append(tn)
            ratios.append(t1 / tn)
        print(
            f"  {extractor.describe()}, {len(utts)} utterances ({seconds:.0f} s of audio):\n"
            f"    1 worker {spread(one)} s ({seconds / min(one):.0f} audio-s/s best); "
            f"{a.workers} workers {spread(many)} s ({seconds / min(many):.0f} audio-s/s best)"
        )
        print("  " + ratio_line(f"speed-up {a.workers} workers / 1", ratios, f"close to {a.workers}"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
