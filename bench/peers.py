"""peers: sercache's CPU extraction against the tools users would otherwise run, interleaved in one run.

    python bench/peers.py --data ../shared/data [--workers 2] [--repeats 3] [--limit 1440]

Whole process each time (a fresh `python` running the same job), same files, same worker count:

* 40-d fbank: `featurize extract --model fbank` vs lhotse's
  `compute_and_store_features(Fbank, LilcomChunkyWriter, num_jobs=N)` (skipped, and said so, when lhotse
  is not installed: `pip install -e ".[bench]"`);
* ComParE_2016 functionals: `featurize extract --model opensmile` vs opensmile-python's
  `Smile(ComParE_2016, Functionals, num_workers=N, multiprocessing=True).process_files(...)`.

Prints each side's wall times (min / median / max) and the ratio peer time / sercache time per repeat
(> 1: sercache is faster); the goals are >= 1.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, ratio_line, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

LHOTSE_FBANK = """
import sys
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, Recording
paths, out, jobs = sys.argv[1].split("\\n"), sys.argv[2], int(sys.argv[3])
cuts = CutSet.from_manifests(recordings=__import__("lhotse").RecordingSet.from_recordings(
    Recording.from_file(p) for p in paths)).resample(16000)
cuts.compute_and_store_features(Fbank(FbankConfig(num_mel_bins=40)), storage_path=out,
                                storage_type=LilcomChunkyWriter, num_jobs=jobs)
"""

OPENSMILE_PY = """
import sys
import opensmile
paths, jobs = sys.argv[1].split("\\n"), int(sys.argv[2])
smile = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.Functionals,
                        num_workers=jobs, multiprocessing=True)
smile.process_files(paths)
"""


def timed_run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=1440, help="RAVDESS files (a manifest of that many)")
    a = ap.parse_args()
    from featurize.corpora import read_corpus

    utts, _ = read_corpus("ravdess", Path(a.data) / "ravdess")
    utts = utts[: a.limit]
    tmp = Path(tempfile.mkdtemp(prefix="peers-"))
    manifest = tmp / "files.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{u.audio_path},{u.label},{u.speaker}\n" for u in utts))
    paths = "\n".join(u.audio_path for u in utts)
    print(f"peers: {len(utts)} RAVDESS files, {a.workers} workers each, whole process; {machine()}")

    def ours(model: str) -> list[str]:
        store = tmp / "s.zarr"
        shutil.rmtree(store, ignore_errors=True)
        return [sys.executable, "-m", "featurize.cli", "extract", "--corpus", "manifest", "--data", str(manifest),
                "--model", model, "--workers", str(a.workers), "--store", str(store)]

    jobs = []
    if importlib.util.find_spec("lhotse") is None:
        print("  fbank vs lhotse: skipped (lhotse is not installed: pip install -e '.[bench]')")
    else:
        jobs.append(("40-d fbank vs lhotse", "fbank",
                     lambda: [sys.executable, "-c", LHOTSE_FBANK, paths, str(tmp / "lhotse"), str(a.workers)]))
    jobs.append(("ComParE_2016 functionals vs opensmile-python process_files", "opensmile",
                 lambda: [sys.executable, "-c", OPENSMILE_PY, paths, str(a.workers)]))
    for title, model, peer in jobs:
        mine, theirs, ratios = [], [], []
        for _ in range(a.repeats):  # interleaved: a busy moment hits both alike
            shutil.rmtree(tmp / "lhotse", ignore_errors=True)
            t_ours = timed_run(ours(model))
            t_peer = timed_run(peer())
            mine.append(t_ours)
            theirs.append(t_peer)
            ratios.append(t_peer / t_ours)
        print(f"  {title}: sercache {spread(mine)} s, peer {spread(theirs)} s")
        print("    " + ratio_line("peer time / sercache time", ratios, ">= 1.1"))
        print(f"    median ratio {statistics.median(ratios):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
