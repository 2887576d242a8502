"""train-cost: what one seed of the rav4 grid costs to train on this machine, on the code as it is now.

    python bench/train_cost.py [--store cache/bench.zarr] [--jobs 2] [--cells a,b]

Trains every honest cell of bench/sweeps/rav4.yaml (5 folds, seed 0 only; the paper-evaluation twins are
diagnostics, not part of the grid) with `train sweep --scheduler local:N`, as `bench/accuracy.py --jobs N`
does, into runs/cost/rav4 (a fresh directory each run, so nothing is reused from an older run), and prints:

* per cell: training time summed over its folds (select + refit, one torch thread per job) and seed 0's UA;
* the grid's summed training time and its wall-clock time on this machine, each against the 30-minute goal.

`--resume` finishes an interrupted run instead (folds already trained keep their own timings; the
wall-clock is then not measured). A fold's time is its own: select, refit and test, nothing else.

Features must already be in the store (`bench/accuracy.py` or `make features` makes them). Results are
appended to bench/results/train-cost-rav4.txt with machine, date and code version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import code_version, machine  # noqa: E402
from train.cli import expand_grid  # noqa: E402

SWEEP = ROOT / "bench" / "sweeps" / "rav4.yaml"
GOAL_MINUTES = 30.0


def trained_on(out: Path) -> str:
    """The commits the cells under ``out`` trained on (each run's provenance), else this checkout's."""
    commits = sorted({code_version(json.loads(f.read_text())) for f in (out / "cells").glob("*/config.json")})
    return ", ".join(commits) or code_version()


def one_seed_sweep(wanted: set[str] | None) -> tuple[dict, list[str]]:
    """The rav4 sweep file with seed 0 only, and the names of its honest cells (or of the wanted ones)."""
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep["seeds"] = [0]
    names = [name for name, req in expand_grid(sweep)
             if req.evaluation != "paper" and (wanted is None or name in wanted)]
    return sweep, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="cache/bench.zarr")
    ap.add_argument("--jobs", type=int, default=2, help="cells trained at once, one torch thread each")
    ap.add_argument("--cells", help="only these cells (comma-separated); the wall-clock is then theirs alone")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cost" / "rav4")
    ap.add_argument("--resume", action="store_true",
                    help="finish the run under --out (its finished folds are kept; no wall-clock figure)")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: print the table of the cells an interrupted run finished under --out")
    a = ap.parse_args()
    if a.collect_only:
        report(one_seed_sweep(set(a.cells.split(",")) if a.cells else None)[1], a, None, 0)
        return
    if not Path(a.store).exists():
        raise SystemExit(f"no feature store at {a.store}: run `python bench/accuracy.py --only rav4` first")
    wanted = set(a.cells.split(",")) if a.cells else None
    sweep, names = one_seed_sweep(wanted)
    if a.out.exists() and not a.resume:
        shutil.rmtree(a.out)  # a cost run trains everything afresh: a finished cell would cost nothing
    a.out.mkdir(parents=True, exist_ok=True)
    sweep_file = a.out / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep, sort_keys=False))
    cmd = [sys.executable, "-m", "train.cli", "sweep", str(sweep_file), "--out", str(a.out), "--store", a.store,
           "--keep-going", "--no-report", "--cells", ",".join(names), "--scheduler", f"local:{a.jobs}"]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    wall = time.perf_counter() - start

    report(names, a, None if a.resume else wall, code)


def report(names: list[str], a: argparse.Namespace, wall: float | None, code: int) -> None:
    """The cost table from the finished cells under ``a.out`` (``wall`` None: collected after the fact)."""
    lines = [f"## train-cost rav4, seed 0, 5 folds, {a.jobs} jobs — {machine()}, trained on code {trained_on(a.out)}",
             f"`python bench/train_cost.py --jobs {a.jobs}" + (f" --cells {a.cells}`" if a.cells else "`"), "",
             "| cell | training minutes (summed over folds) | UA (seed 0, 5 folds) |", "|---|---|---|"]
    total, partial, missing = 0.0, 0.0, []
    for name in names:
        summary_file = a.out / "cells" / name / "summary.json"
        if not summary_file.exists():
            missing.append(name)
            cell = a.out / "cells" / name
            folds = [json.loads(f.read_text()) for f in (cell / "folds").glob("*/metrics.json")]
            so_far = sum(f.get("seconds") or 0.0 for f in folds)
            partial += so_far
            of = len(json.loads((cell / "config.json").read_text())["folds"]) if folds else 0
            lines.append(f"| {name} | not finished: {len(folds)} of {of} folds, {so_far / 60:.1f} so far | |"
                         if folds else f"| {name} | not finished | |")
            continue
        summary = json.loads(summary_file.read_text())
        seconds = summary.get("train_seconds") or 0.0
        total += seconds
        shared = f" ({summary['fits_reused']} fits trained by another cell)" if summary.get("fits_reused") else ""
        lines.append(f"| {name} | {seconds / 60:.1f}{shared} | {100 * summary['ua']['mean']:.2f} |")
    lines += ["",
              f"summed training time: {total / 60:.1f} min ({total / 60 / GOAL_MINUTES:.2f}x the "
              f"{GOAL_MINUTES:.0f}-minute goal); " + (
                  "wall-clock not measured (resumed or collected after the run)" if wall is None else
                  f"wall-clock on this machine, {a.jobs} jobs: {wall / 60:.1f} min ({wall / 60 / GOAL_MINUTES:.2f}x "
                  f"the goal)")]
    if partial:
        lines.append(f"with the finished folds of unfinished cells: {(total + partial) / 60:.1f} min so far "
                     f"({(total + partial) / 60 / GOAL_MINUTES:.2f}x the goal)")
    if missing or code:
        lines.append(f"INCOMPLETE: train sweep exit code {code}; not finished: {', '.join(missing) or 'none'}")
    text = "\n".join(lines) + "\n"
    print(text)
    results = ROOT / "bench" / "results" / "train-cost-rav4.txt"
    with results.open("a") as f:
        f.write(text + "\n")
    if missing or code:
        sys.exit(1)


if __name__ == "__main__":
    main()
