"""Accuracy on real data (`make bench-accuracy`): rav4, rav8 (each also per speaker) and iemo-text, every head.

    python bench/accuracy.py --data ../shared/data [--store cache/bench.zarr] [--only rav4] [--missing] [--jobs 2]

1. Makes sure the features exist (each step resumes, so a rerun only does what is missing):
   RAVDESS: Whisper ASR words, fbank, ComParE functionals, Whisper encoder, MiniLM;
   IEMOCAP transcripts: MiniLM, and MPNet when `make models` has installed it.
2. Runs the sweeps in bench/sweeps/ (5 folds x 3 seeds on RAVDESS; resumable cell by cell).
3. Records every finished cell in bench/results/cells/<bench>/<cell>.json (its settings, per-fold
   metrics, training time, machine, date, code version), writes bench/results/accuracy-<bench>.md
   from those records and gathers them all into bench/results/accuracy.md (WA / UA / macro-F1
   mean ± std, minutes per cell, runs flagged as under-trained), and checks that no fused head is worse
   than its own audio-only variant on RAVDESS, whose text carries no emotion.
4. Prints, in the same run, a classical reference on the same stored features and folds: z-score +
   scikit-learn LogisticRegression (C = 0.01) on ComParE functionals (RAVDESS), trained on each fold's
   training + validation speakers; every head is expected at or above it.
5. Cells run with the paper-evaluation option (`evaluation: paper`: the checkpoint chosen on the test
   fold, as the authors' public code does) are listed apart, marked optimistic, beside their honest twin.
6. rav4-speaker / rav8-speaker are rav4 / rav8 with every input standardised per speaker first (recipe
   `normalize: speaker`: transductive, so tables of their own, every row marked, with the reference computed
   the same way).

The records are committed, so a benchmark too long for one sitting (rav8 is hours on 2 cores) is
finished over several: `--missing` trains only the cells without a record made with the settings the
sweep file asks now; a record made with other settings is never shown. `--jobs N` trains N fold x seed
runs at once, one torch thread each (small heads use 2 cores better as 2 one-thread jobs than as one of 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import code_version, machine, paired_ua  # noqa: E402
from train.cli import RunRequest, expand_grid, summary_covers  # noqa: E402
from train.data import FeatureChoice  # noqa: E402
from train.heads import fill_new_fields, get_head, make_config, make_recipe  # noqa: E402
from train.report import modalities_chosen_text  # noqa: E402

# Cheapest first, so an interrupted run has the most to show.
SWEEPS = {
    "iemo-text": "bench/sweeps/iemo-text.yaml",
    "rav4": "bench/sweeps/rav4.yaml",
    "rav4-speaker": "bench/sweeps/rav4-speaker.yaml",
    "rav8": "bench/sweeps/rav8.yaml",
    "rav8-speaker": "bench/sweeps/rav8-speaker.yaml",
}
RESULTS = ROOT / "bench" / "results"
METRICS = ("wa", "ua", "macro_f1")


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


def sweep_cells(bench: str) -> list[tuple[str, RunRequest]]:
    return expand_grid(yaml.safe_load((ROOT / SWEEPS[bench]).read_text()))


def settings(request: dict, head_config: dict, recipe: dict) -> dict:
    """What a cell's figures depend on: its request, head configuration and recipe, less where the store
    lives and which device trains (neither changes what is computed), in stored (JSON) form."""
    request = {k: v for k, v in request.items() if k not in ("store", "device")}
    stored = json.loads(json.dumps({"request": request, "head_config": head_config, "recipe": recipe}))
    stored["head_config"], stored["recipe"] = fill_new_fields(request["head"], stored["head_config"],
                                                              stored["recipe"])
    return stored


def cell_settings(req: RunRequest) -> dict:
    """The settings of a cell as the sweep file asks for it now."""
    spec = get_head(req.head)
    return settings(dataclasses.asdict(req), dataclasses.asdict(make_config(spec, req.options)),
                    dataclasses.asdict(make_recipe(spec, req.options)))


def record_path(bench: str, cell: str) -> Path:
    return RESULTS / "cells" / bench / f"{cell}.json"


def feature_groups_now(store: str, cells: list[tuple[str, RunRequest]]) -> dict[str, str]:
    """{feature name a sweep asks for: the store's group of it now} (fingerprinted: ``fbank-1a2b3c4d``), for the
    names the store resolves; none when there is no store here (records are then shown on their settings)."""
    from featurize.store import FeatureStore, StoreError

    try:
        opened = FeatureStore(store, create=False)
    except StoreError:
        return {}
    groups = {}
    for name in {FeatureChoice.parse(f).name for _, req in cells for f in req.features}:
        try:
            groups[name] = opened.resolve_feature(name)
        except StoreError:  # not extracted here (or ambiguous): that cell's records are shown on their settings
            continue
    return groups


def read_record(bench: str, cell: str, req: RunRequest, groups_now: dict[str, str] | None = None) -> dict | None:
    """The committed record of a cell, if it was made with the settings the sweep file asks now and, where
    ``groups_now`` (``feature_groups_now``) names them, on the feature groups the store holds now: a feature
    extracted again with another configuration is a new group, and the figures of the old one are not its."""
    path = record_path(bench, cell)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    kept = record["settings"]
    current = settings(kept["request"], kept.get("head_config"), kept.get("recipe")) == cell_settings(req)
    names = [FeatureChoice.parse(f).name for f in req.features]
    if groups_now and record.get("feature_groups") and all(n in groups_now for n in names):
        current = current and set(record["feature_groups"]) <= {groups_now[n] for n in names}
    return record if current else None


def record_finished(bench: str, cell: str, req: RunRequest, cell_dir: Path) -> None:
    """Turn a finished sweep cell into its committed record (kept as is when the figures are unchanged)."""
    summary_file = cell_dir / "summary.json"
    if not summary_file.exists():
        return
    run_config = json.loads((cell_dir / "config.json").read_text())
    asked = cell_settings(req)
    if settings(run_config["request"], run_config["head_config"], run_config.get("recipe")) != asked:
        return  # the run directory holds an older configuration: `train sweep` refuses it, so do we
    if not summary_covers(cell_dir, run_config, req.seeds):
        return  # a summary of fewer seeds, left by a run killed while adding seeds: not finished
    summary = json.loads(summary_file.read_text())
    per_fold = [{k: r.get(k) for k in ("fold", "seed", "best_epoch", "budget", *METRICS, "flags")}
                for r in summary["per_fold"]]
    old = read_record(bench, cell, req)
    if old is not None and old["per_fold"] == per_fold and old.get("code") == code_version(run_config):
        return
    inputs = ", ".join(f"{m}={i['feature'].rsplit('-', 1)[0]}:{i['array']}" for m, i in run_config["inputs"].items())
    record = {
        "bench": bench,
        "cell": cell,
        "settings": asked,
        "inputs": inputs,
        "feature_groups": sorted(i["feature"] for i in run_config["inputs"].values()),
        **{k: summary[k] for k in METRICS},
        "evaluation": summary.get("evaluation", "honest"),
        # the loop never refits under paper evaluation (its checkpoint comes from the test fold)
        "refit": bool(run_config.get("recipe", {}).get("refit")) and run_config.get("evaluation") != "paper",
        "flagged": sum(bool(f.get("flags")) for f in per_fold),
        "train_seconds": summary.get("train_seconds") or summary.get("seconds"),
        "per_fold": per_fold,
        **({"modalities_chosen": summary["modalities_chosen"]} if summary.get("modalities_chosen") else {}),
        # fits another cell trained and this one loaded (train/shared_fits.py): their time is the other cell's
        **({"fits_reused": summary["fits_reused"]} if summary.get("fits_reused") else {}),
        "machine": machine(),
        "code": code_version(run_config),  # the commit the run trained on, not the one that collected it
    }
    path = record_path(bench, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def train_cells(bench: str, names: list[str], out: Path, store: str, jobs: int) -> None:
    """Train the named cells of a sweep: one `train sweep` here (all cores), or with ``jobs`` > 1 on a local
    dask.distributed cluster of that many single-threaded workers (`train sweep --scheduler local:N`)."""
    if not names:
        return
    jobs = max(1, jobs)  # one cell's folds fill every job too
    cmd = [sys.executable, "-m", "train.cli", "sweep", SWEEPS[bench], "--out", str(out), "--store", store,
           "--keep-going", "--cells", ",".join(names)]
    cmd += ["--scheduler", f"local:{jobs}"] if jobs > 1 else ["--threads", str(os.cpu_count() or 1)]
    print("$", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code:
        raise SystemExit(f"train sweep failed for {bench} (exit code {code})")


def minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f}"


def reused(record: dict) -> str:
    n = record.get("fits_reused")
    return f" ({n} fits from its fused twin)" if n else ""


def fmt(m: dict | None) -> str:
    return "not finished" if m is None else f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}"


def fusion_verdict(fused: dict, audio: dict) -> tuple[str, bool]:
    """Whether a fused head does worse than its audio-only variant (RAVDESS text carries no emotion, so
    it should not). With per-fold records the two are compared run by run (same folds, same seeds): a
    defect is a mean UA difference below zero by more than two standard errors of that difference.
    Records without per-fold figures fall back to the gap against one std of either cell."""
    head = f"fused UA {fmt(fused['ua'])} vs audio-only {fmt(audio['ua'])}"
    paired = paired_ua(audio, fused)
    if paired is not None:
        runs, mean, se = paired
        detail = f"paired over {runs} runs: difference {100 * mean:+.2f} (standard error {100 * se:.2f})"
        if mean >= 0:
            return f"{head}; {detail} -> ok", False
        if mean > -2 * se:
            return f"{head}; {detail} -> ok (below by less than two standard errors: noise)", False
        return f"{head}; {detail} -> DEFECT: fused below audio-only", True
    gap = fused["ua"]["mean"] - audio["ua"]["mean"]
    noise = max(fused["ua"]["std"], audio["ua"]["std"])
    if gap >= 0:
        return f"{head} -> ok", False
    if gap > -noise:
        return f"{head} -> ok (below by less than one std: noise; no per-fold figures to pair)", False
    return f"{head} -> DEFECT: fused below audio-only", True


def sklearn_reference(store: str, bench: str, by_speaker: bool = False) -> dict | None:
    """The ten-line scikit-learn script a user would write, on the same stored features and folds:
    z-score (training + validation statistics) + LogisticRegression(C=0.01), fitted on each fold's training +
    validation speakers, scored on its test speakers. RAVDESS benches only (ComParE functionals).
    ``by_speaker``: on the features standardised per speaker first, as cells with ``normalize: speaker`` read them."""
    if not bench.startswith("rav"):
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from featurize.store import FeatureStore
    from train.data import load_data
    from train.metrics import compute_metrics
    from train.protocols import make_folds

    protocol = yaml.safe_load((ROOT / SWEEPS[bench]).read_text())["protocol"]
    data = load_data(FeatureStore(store, create=False), "ravdess", ["opensmile"], get_head("linear"), protocol,
                     by_speaker=by_speaker)
    x = np.stack([item.float().numpy() for item in data.inputs["audio"].items])
    y = data.labels.numpy()
    per_fold = []
    for fold in make_folds(protocol, data.utts):
        fit_rows = data.labelled(fold.train) + data.labelled(fold.valid)
        test_rows = data.labelled(fold.test)
        scaler = StandardScaler().fit(x[fit_rows])
        with threadpool_limits(1):
            clf = LogisticRegression(C=0.01, max_iter=5000).fit(scaler.transform(x[fit_rows]), y[fit_rows])
        pred = clf.predict(scaler.transform(x[test_rows]))
        m = compute_metrics(y[test_rows].tolist(), pred.tolist(), data.classes)
        per_fold.append({"fold": fold.name, **{k: m[k] for k in METRICS}})
    values = {k: [f[k] for f in per_fold] for k in METRICS}
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))} for k, v in values.items()} | {
        "per_fold": per_fold}


PER_SPEAKER = "standardised per speaker"


def per_speaker(record: dict) -> bool:
    return (record.get("settings", {}).get("recipe") or {}).get("normalize") == "speaker"


def table(bench: str, cells: list[tuple[str, RunRequest]], data: Path, reference: dict | None = None,
          groups_now: dict[str, str] | None = None, speaker_reference: dict | None = None
          ) -> tuple[list[str], list[str]]:
    """(Markdown lines, cells whose fused head is worse than its audio-only variant) from the records.
    ``speaker_reference``: the scikit-learn reference on features standardised per speaker."""
    rows = []
    for name, req in cells:
        r = read_record(bench, name, req, groups_now)
        rows.append({"cell": name, "paper": req.evaluation == "paper",
                     **(r or {"inputs": "", "train_seconds": None, "machine": ""})})
    header = ["| cell | inputs | WA | UA | macro-F1 | refit | flagged runs | minutes | machine, date |",
              "|---|---|---|---|---|---|---|---|---|"]

    def line(r: dict) -> str:
        flagged = "" if r.get("flagged") is None else f"{r['flagged']} of {len(r.get('per_fold') or [])}"
        refit = "" if "refit" not in r else ("yes" if r["refit"] else "no")
        inputs = f"{r['inputs']}, {PER_SPEAKER}" if per_speaker(r) else r["inputs"]
        return (f"| {r['cell']} | {inputs} | {fmt(r.get('wa'))} | {fmt(r.get('ua'))} | {fmt(r.get('macro_f1'))} | "
                f"{refit} | {flagged} | {minutes(r['train_seconds'])}{reused(r)} | {r['machine']} |")

    lines = [
        f"## {bench}\n",
        f"`python bench/accuracy.py --data {data} --only {bench}`; one record per cell in "
        f"`bench/results/cells/{bench}/` (settings, per-fold metrics, flags, machine, date, code version)\n",
        *header,
        *[line(r) for r in rows if not r["paper"]],
    ]
    for ref, how in ((reference, ""), (speaker_reference, f", {PER_SPEAKER}")):
        if ref is not None:
            lines.append(f"| scikit-learn reference (z-score + LogisticRegression C=0.01, train + valid speakers) | "
                         f"audio=opensmile_compare:functionals{how} | {fmt(ref['wa'])} | {fmt(ref['ua'])} | "
                         f"{fmt(ref['macro_f1'])} | yes | | | computed in this run |")
    if any(per_speaker(r) for r in rows):
        lines.append(f"\n*{PER_SPEAKER}* (recipe `normalize: speaker`): each speaker's features standardised on all of "
                     "that speaker's utterances in the store, test speakers included, before the fold's own "
                     "standardisation. No label is read and no test speaker is trained on, so the folds stay "
                     "speaker-independent, but it is transductive: a new speaker is scored only after a batch of "
                     "their speech is heard. Compare these rows with each other and with the reference so marked.")
    honest = [r for r in rows if not r["paper"] and r.get("train_seconds") is not None]
    if honest:
        n_seeds = max(len({f["seed"] for f in r.get("per_fold") or []}) for r in honest) or 1
        total = sum(r["train_seconds"] for r in honest) / n_seeds
        done = sum(r.get("ua") is not None for r in rows if not r["paper"])
        lines.append(f"\nCost: {done} of {sum(not r['paper'] for r in rows)} honest cells recorded; their training "
                     f"time summed over folds is {total / 60:.1f} minutes per seed.")
    flagged = [r["cell"] for r in rows if r.get("flagged")]
    if flagged:
        lines.append(f"\nFlagged (a run whose best epoch is in the last 10% of its budget, whose training loss stayed "
                     f"near the prior-only loss, whose model's or chosen C's convex fit did not converge, or whose C "
                     f"sat at the grid's edge; per-run reasons in the records): {', '.join(flagged)}.")
    paper = [r for r in rows if r["paper"]]
    if paper:
        lines += ["\n### Paper evaluation, OPTIMISTIC: checkpoint chosen on the test fold (the authors' public code)\n",
                  "Never compare these with the rows above as results; the gap to the honest twin is how much of a "
                  "published figure the protocol explains.\n", *header]
        by_name = {r["cell"]: r for r in rows}
        for r in paper:
            lines.append(line(r))
            twin = by_name.get(r["cell"].removesuffix("-paper"))
            if twin and twin.get("ua") and r.get("ua"):
                gap = 100 * (r["ua"]["mean"] - twin["ua"]["mean"])
                # a twin that chose its inputs on validation is not the paper's model in every run: say so
                chose = (f"; its {modalities_chosen_text(twin['modalities_chosen'], len(twin.get('per_fold') or []))}, "
                         "the paper's model is always fused" if twin.get("modalities_chosen") else "")
                lines.append(f"| (vs honest {twin['cell']}{chose}: UA {gap:+.2f} points) | | | | | | | | |")
    defects = []
    by_name = {r["cell"]: r for r in rows}
    for r in rows:
        audio = by_name.get(f"{r['cell']}-audio")
        if bench.startswith("rav") and audio is not None and r.get("ua") and audio.get("ua"):
            verdict, defect = fusion_verdict(r, audio)
            if r.get("modalities_chosen"):
                verdict += f" ({modalities_chosen_text(r['modalities_chosen'], len(r.get('per_fold') or []))})"
            lines.append(f"\n{r['cell']}: {verdict}")
            if defect:
                defects.append(f"{bench}/{r['cell']}")
    return lines, defects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--store", default="cache/bench.zarr")
    ap.add_argument("--only", action="append", choices=list(SWEEPS), help="run only these benchmarks")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--missing", action="store_true",
                    help="train only the cells without a current record in bench/results/cells/")
    ap.add_argument("--jobs", type=int, default=1, help="fold x seed runs trained at once, one torch thread each")
    ap.add_argument("--cells", help="train only these cells (comma-separated; default: all of each bench)")
    ap.add_argument("--collect-only", action="store_true",
                    help="extract and train nothing: record the finished cells and write the tables")
    a = ap.parse_args()
    which = a.only or list(SWEEPS)
    out_root = a.out if a.out.is_absolute() else ROOT / a.out
    if not a.collect_only:
        if not a.data.exists():
            raise SystemExit(f"no corpora at {a.data}: point --data at the folder holding ravdess/ and iemocap_text/")
        ensure_features(a.data.resolve(), a.store, which)
    defects = []
    for bench in which:
        if bench == "iemo-text" and not mpnet_available():
            print("MPNet not installed (`make models`): its iemo-text cells fail and are left out")
        out = out_root / bench
        cells = sweep_cells(bench)
        groups_now = feature_groups_now(a.store, cells)
        if not a.collect_only:
            wanted = set(a.cells.split(",")) if a.cells else None
            names = [n for n, req in cells if not (a.missing and read_record(bench, n, req, groups_now) is not None)
                     and (wanted is None or n in wanted)]
            train_cells(bench, names, out, a.store, a.jobs)
        for name, req in cells:
            record_finished(bench, name, req, out / "cells" / name)
        reference = sklearn_reference(a.store, bench) if Path(a.store).exists() else None
        speaker_reference = None
        if reference is not None:
            print(f"{bench}: scikit-learn reference UA {fmt(reference['ua'])} (same features and folds)")
            if any(make_recipe(get_head(req.head), req.options).normalize == "speaker" for _, req in cells):
                speaker_reference = sklearn_reference(a.store, bench, by_speaker=True)
                print(f"{bench}: scikit-learn reference, {PER_SPEAKER}, UA {fmt(speaker_reference['ua'])}")
        lines, bad = table(bench, cells, a.data, reference, groups_now, speaker_reference)
        defects += bad
        (RESULTS / f"accuracy-{bench}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    sections = [(RESULTS / f"accuracy-{b}.md").read_text() for b in SWEEPS if (RESULTS / f"accuracy-{b}.md").exists()]
    (RESULTS / "accuracy.md").write_text("# Accuracy on real data\n\n" + "\n".join(sections))
    if defects:
        print(f"fused heads below their audio-only variant: {', '.join(defects)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
