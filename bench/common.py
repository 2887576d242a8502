"""Shared by the benchmarks: machine description, repeated timing, printing ratios."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {time.strftime('%Y-%m-%d')}"


def code_version(run_config: dict | None = None) -> str:
    """The commit a run trained on (its provenance, written when the run started), else this checkout's HEAD;
    ``+changes`` when the run's code had uncommitted changes to it (its provenance lists them)."""
    provenance = (run_config or {}).get("provenance") or {}
    commit = provenance.get("git_commit")
    if commit:
        return commit[:7] + ("+changes" if provenance.get("git_changed") else "")
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def spread(values: list[float]) -> str:
    return f"min {min(values):.3g} / median {statistics.median(values):.3g} / max {max(values):.3g}"


def ratio_line(name: str, ratios: list[float], goal: str) -> str:
    return f"{name}: {spread(ratios)}  (goal {goal})"


def paired_ua(a: dict, b: dict) -> tuple[int, float, float] | None:
    """Two accuracy records (bench/results/cells) compared run by run: (runs, mean of b's UA - a's UA over the
    (fold, seed) runs both have, its standard error); None with fewer than two shared runs or no per-fold figures."""
    by_run = {(f["fold"], f["seed"]): f["ua"] for f in a.get("per_fold") or []}
    diffs = [f["ua"] - by_run[k] for f in b.get("per_fold") or [] if (k := (f["fold"], f["seed"])) in by_run]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    return len(diffs), mean, sd / len(diffs) ** 0.5
