"""CLI start-up: `train --help` and `featurize --help` against `python -c pass`, interleaved in one run.

    python bench/startup.py [--repeats 15]

Prints each command's wall time (min / median / max) and the median overhead over a bare interpreter; the
goal is under 0.5 s for each help (what a user waits for before any work starts).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, spread  # noqa: E402

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "train --help": [sys.executable, "-m", "train.cli", "--help"],
    "featurize --help": [sys.executable, "-m", "featurize.cli", "--help"],
    "train run --help": [sys.executable, "-m", "train.cli", "run", "--help"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(a.repeats):  # interleaved, so a busy moment hits every command alike
        for name, cmd in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["python -c pass"])
    print(f"startup  ({machine()}, {a.repeats} runs each, interleaved)")
    for name, values in times.items():
        extra = "" if name == "python -c pass" else f"   (+{statistics.median(values) - base:.3f} s over python)"
        print(f"  {name:20s} {spread(values)} s{extra}")
    for name in ("train --help", "featurize --help"):
        med = statistics.median(times[name])
        print(f"  {name}: median {med:.3f} s, goal < 0.5 s: {'met' if med < 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
