"""Accuracy on real data (`make bench-accuracy`): rav4, rav8 and iemo-text, every head that can run.

    python bench/accuracy.py --data ../shared/data [--store cache/bench.zarr] [--only rav4]

1. Makes sure the features exist (each step resumes, so a rerun only does what is missing):
   RAVDESS: Whisper ASR words, fbank, ComParE functionals, Whisper encoder, MiniLM;
   IEMOCAP transcripts: MiniLM, and MPNet when `make models` has installed it.
2. Runs the sweeps in bench/sweeps/ (5 folds x 3 seeds on RAVDESS; resumable cell by cell).
3. Writes bench/results/accuracy-<bench>.md for each benchmark run and gathers the latest of all three
   into bench/results/accuracy.md (WA / UA / macro-F1 mean ± std, minutes per cell) and checks that no fused head
   is worse than its own audio-only variant on RAVDESS, whose text carries no emotion.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

# Cheapest first, so an interrupted run has the most to show.
SWEEPS = {
    "iemo-text": "bench/sweeps/iemo-text.yaml",
    "rav4": "bench/sweeps/rav4.yaml",
    "rav8": "bench/sweeps/rav8.yaml",
}


def sh(*args: str, ok=(0,)) -> int:
    print("$", " ".join(args), flush=True)
    rc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT).returncode
    if rc not in ok:
        raise SystemExit(f"failed ({rc}): {' '.join(args)}")
    return rc


def mpnet_available() -> bool:
    try:
        from featurize.models import resolve_model

        resolve_model("mpnet")
        return True
    except Exception:
        return False


def ensure_features(data: Path, store: str, which: list[str]) -> None:
    if any(w.startswith("rav") for w in which):
        rav = ["--corpus", "ravdess", "--data", str(data / "ravdess"), "--store", store]
        sh("featurize.cli", "transcribe", *rav)
        for model, extra in (("fbank", []), ("opensmile", []), ("whisper", []), ("minilm", [])):
            sh("featurize.cli", "extract", *rav, "--model", model, *extra, ok=(0, 3))
    if "iemo-text" in which:
        iemo = ["--corpus", "iemocap-text", "--data", str(data / "iemocap_text"), "--store", store]
        sh("featurize.cli", "extract", *iemo, "--model", "minilm", ok=(0, 3))
        if mpnet_available():
            sh("featurize.cli", "extract", *iemo, "--model", "mpnet", ok=(0, 3))


def collect(out: Path) -> list[dict]:
    rows = []
    for cell in json.loads((out / "sweep.json").read_text())["cells"]:
        summary = out / "cells" / cell / "summary.json"
        if not summary.exists():  # not run yet, or stopped part-way: shown as such, never left out silently
            rows.append({"cell": cell, "features": "", "seconds": None, "wa": None, "ua": None, "macro_f1": None})
            continue
        s = json.loads(summary.read_text())
        cfg = json.loads((out / "cells" / cell / "config.json").read_text())
        feats = ", ".join(f"{m}={i['feature'].rsplit('-', 1)[0]}:{i['array']}" for m, i in cfg["inputs"].items())
        # training time summed over folds when every fold recorded it (a resumed cell's wall time
        # counts only its last invocation)
        rows.append({"cell": cell, "features": feats, "seconds": s.get("train_seconds") or s.get("seconds"),
                     **{k: s[k] for k in ("wa", "ua", "macro_f1")}})
    return rows


def minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def fmt(m: dict | None) -> str:
    return "not finished" if m is None else f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--store", default="cache/bench.zarr")
    ap.add_argument("--only", action="append", choices=list(SWEEPS), help="run only these benchmarks")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--collect-only", action="store_true",
                    help="extract and train nothing: write the tables from the cells that have finished")
    a = ap.parse_args()
    which = a.only or list(SWEEPS)
    if not a.data.exists():
        raise SystemExit(f"no corpora at {a.data}: point --data at the folder holding ravdess/ and iemocap_text/")
    if not a.collect_only:
        ensure_features(a.data.resolve(), a.store, which)
    results = ROOT / "bench" / "results"
    defects = []
    for bench in which:
        sweep = ROOT / SWEEPS[bench]
        if bench == "iemo-text" and not mpnet_available():
            print("MPNet not installed (`make models`): its iemo-text cells fail and are left out")
        out = a.out / bench
        if a.collect_only and not (out / "sweep.json").exists():
            continue
        if not a.collect_only:
            cmd = ["-m", "train.cli", "sweep", str(sweep), "--out", str(out), "--store", a.store, "--keep-going"]
            subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
        rows = collect(ROOT / out if not out.is_absolute() else out)
        lines = [
            f"## {bench}\n",
            f"{machine()}; `python bench/accuracy.py --data {a.data} --only {bench}`\n",
            "| cell | inputs | WA | UA | macro-F1 | minutes |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cell']} | {r['features']} | {fmt(r['wa'])} | {fmt(r['ua'])} | {fmt(r['macro_f1'])} | "
            f"{minutes(r['seconds'])} |"
            for r in rows
        ]
        by_name = {r["cell"]: r for r in rows}
        for r in rows:
            audio = by_name.get(f"{r['cell']}-audio")
            if bench.startswith("rav") and audio is not None and r["ua"] is not None and audio["ua"] is not None:
                gap = r["ua"]["mean"] - audio["ua"]["mean"]
                noise = max(r["ua"]["std"], audio["ua"]["std"])
                verdict = (
                    "ok" if gap >= 0
                    else "ok (below by less than one std: noise)" if gap > -noise
                    else "DEFECT: fused below audio-only"
                )
                lines.append(f"\n{r['cell']}: fused UA {fmt(r['ua'])} vs audio-only {fmt(audio['ua'])} -> {verdict}")
                if verdict.startswith("DEFECT"):
                    defects.append(f"{bench}/{r['cell']}")
        # One file per benchmark, so `--only X` refreshes X and keeps the others' latest results.
        results.mkdir(parents=True, exist_ok=True)
        (results / f"accuracy-{bench}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    sections = [(results / f"accuracy-{b}.md").read_text() for b in SWEEPS if (results / f"accuracy-{b}.md").exists()]
    (results / "accuracy.md").write_text("# Accuracy on real data\n\n" + "\n".join(sections))
    if defects:
        print(f"fused heads below their audio-only variant: {', '.join(defects)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
