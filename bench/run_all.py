"""`make bench`: the cost benchmarks of docs/benchmarks.md, each against its baseline in the same run.

    python bench/run_all.py --data ../shared/data

feat-cpu (workers vs one worker), store-size and store-read (on a fresh fbank store of RAVDESS),
feat-neural (end-to-end extraction vs a naive loop and vs the compute limit), train-epoch (store vs
encoder in the loop). Accuracy is separate: `make bench-accuracy`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> None:
    print("\n$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    a = ap.parse_args()
    data = str(Path(a.data).resolve())
    if not (Path(data) / "ravdess").exists():
        raise SystemExit(f"no RAVDESS at {data}/ravdess: point --data at the folder that holds it")
    run("bench/startup.py")
    run("bench/feat_cpu.py", "--data", data)
    store = Path(tempfile.mkdtemp()) / "bench-io.zarr"
    run("-m", "featurize.cli", "extract", "--corpus", "ravdess", "--data", f"{data}/ravdess", "--model", "fbank",
        "--store", str(store))
    run("bench/store_io.py", "--store", str(store), "--feature", "fbank")
    # Text encoders are so cheap per utterance that 96 utterances time mostly setup: give them more.
    for model, limit in (("hubert", 96), ("whisper", 96), ("minilm", 1440), ("mpnet", 720)):
        run("bench/feat_neural.py", "--data", f"{data}/ravdess", "--model", model, "--limit", str(limit))
    run("bench/train_epoch.py", "--data", data)


if __name__ == "__main__":
    main()
