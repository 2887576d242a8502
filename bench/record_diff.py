"""record-diff: a cell's accuracy record now against the same cell's record at an earlier commit, paired by run.

    python bench/record_diff.py rav4 late_concat late_concat-audio --before 267c2c9

For each cell: the UA of each (fold, seed) run in bench/results/cells/<bench>/<cell>.json as it is now and as
git holds it at ``--before``, the mean paired difference (now - before) with its standard error over the runs
both records have, and each record's minutes, settings and code. Retrained cells are judged this way: a paired
difference within two standard errors of 0 is noise.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import paired_ua  # noqa: E402


def record_at(commit: str, path: Path) -> dict | None:
    out = subprocess.run(["git", "show", f"{commit}:{path.relative_to(ROOT).as_posix()}"], cwd=ROOT,
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench")
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--before", required=True, help="the commit whose records are compared with today's")
    a = ap.parse_args()
    print("| cell | UA before | UA now | paired now - before (SE), runs | minutes before / now | options now |")
    print("|---|---|---|---|---|---|")
    failed = False
    for cell in a.cells:
        path = ROOT / "bench" / "results" / "cells" / a.bench / f"{cell}.json"
        if not path.exists():
            print(f"| {cell} | no record now at {path.relative_to(ROOT)} | | | | |")
            failed = True
            continue
        now, before = json.loads(path.read_text()), record_at(a.before, path)
        if before is None:
            print(f"| {cell} | no record at {a.before} | | | | |")
            failed = True
            continue
        runs, mean, se = paired_ua(before, now) or (0, math.nan, math.nan)
        minutes = f"{before['train_seconds'] / 60:.1f} / {now['train_seconds'] / 60:.1f}"
        options = now["settings"]["request"].get("options", {})
        print(f"| {cell} | {100 * before['ua']['mean']:.2f} ({before['code']}) | {100 * now['ua']['mean']:.2f} "
              f"({now['code']}) | {100 * mean:+.2f} ({100 * se:.2f}), {runs} | {minutes} | {options} |")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
