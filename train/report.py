"""Reports for training runs and sweeps: Markdown tables and PNG plots from a run directory.

Run directory (written by the training loop, read here)::

    <run_dir>/
      config.json        resolved config: "corpus", "features", "head", "head_options",
                         "label_set", "labels", "protocol", "seeds" (and anything else);
                         each may also sit under "request", "labels" may be "classes" and
                         "head_options" may be "options" (what train.cli writes)
      folds/<fold>_seed<s>/
        metrics.json     compute_metrics() dict on the TEST set, plus "fold", "seed",
                         "best_epoch", "protocol" and, for a speaker-dependent protocol,
                         "speaker_independent": false
        history.json     list of per-epoch dicts: "epoch", "train_loss", optional
                         "valid_loss", "valid_ua", "valid_wa"
      summary.json       build_summary() over every folds/*/metrics.json: per metric
                         {"mean", "std", "min", "max", "n"}, plus "per_fold", "protocol",
                         "speaker_independent"; optional "seconds" (wall time of the run)
      report.md          written by write_run_report, with its PNGs under plots/

Sweep directory::

    <sweep_dir>/
      sweep.json         the grid, all keys optional: "grid" {param: [values]}, "cells" (cell
                         names, or [{"name", "params"}]), "metric" (the one plotted, default
                         "ua"), "elapsed_s", "machine"; a cell without params shows its head
                         and head options from its config.json
      cells/<cell_name>/ one run directory per grid cell
      report.md          written by write_sweep_report, with its PNG under plots/

All metric values in the JSON files are fractions; tables and plots show percentages.
Plots use matplotlib's `Figure` directly (no pyplot), so nothing needs a display and no global
backend is changed for the caller.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from featurize.records import DamagedFile
from train.metrics import METRIC_KEYS, mean_std, summarize
from train.protocols import SPEAKER_DEPENDENT, natural_key

CONFIG_FILE = "config.json"
FOLDS_DIR = "folds"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.json"
SWEEP_FILE = "sweep.json"
CELLS_DIR = "cells"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
CONFIG_KEYS = ("corpus", "features", "head", "head_options", "label_set", "labels", "protocol", "seeds")
CONFIG_ALIASES = {"labels": ("labels", "classes"), "head_options": ("head_options", "options")}


def fold_dir_name(fold: str, seed: int) -> str:
    """The folder of one fold x seed run under `folds/`."""
    return f"{fold}_seed{seed}"


def modalities_chosen_text(chosen: dict[str, int], n_runs: int) -> str:
    """choose_modalities' counts in words, as `train run` and the bench verdicts print them."""
    return f"inputs chosen on validation: {', '.join(f'{k} in {n}' for k, n in chosen.items())} of {n_runs} runs"


def build_summary(fold_metrics: list[dict]) -> dict:
    """The summary.json content for a run: `summarize` over all fold x seed metrics, plus a row each."""
    summary = summarize(fold_metrics)
    summary["per_fold"] = [
        {key: m.get(key) for key in ("fold", "seed", "best_epoch", "budget", "n", *METRIC_KEYS, "flags")}
        for m in fold_metrics
    ]
    summary["flagged"] = sum(bool(m.get("flags")) for m in fold_metrics)
    chose = ["+".join(m["modalities"]) for m in fold_metrics if m.get("modality_scores")]
    if chose:  # choose_modalities: which inputs the scored models read, and in how many runs
        summary["modalities_chosen"] = {k: chose.count(k) for k in sorted(set(chose))}
    evaluations = sorted({m.get("evaluation", "honest") for m in fold_metrics})
    summary["evaluation"] = evaluations[0] if len(evaluations) == 1 else evaluations
    summary["optimistic"] = any(m.get("optimistic") for m in fold_metrics)
    protocols = sorted({str(m.get("protocol")) for m in fold_metrics})
    summary["protocol"] = protocols[0] if len(protocols) == 1 else protocols
    summary["speaker_independent"] = all(m.get("speaker_independent", True) for m in fold_metrics)
    # Training cost summed over the folds (each fold records its own): unlike the run's wall time,
    # it does not shrink when a resumed run reuses finished folds. None if any fold predates it.
    fold_seconds = [m.get("seconds") for m in fold_metrics]
    summary["train_seconds"] = None if None in fold_seconds else float(sum(fold_seconds))
    # fits another cell of the sweep trained and this one loaded (train/shared_fits.py): not in train_seconds
    summary["fits_reused"] = sum(m.get("fits_reused") or 0 for m in fold_metrics)
    return summary


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a run; a damaged one (cut short, edited) is a ValueError naming it and ``what`` it holds."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path}: {what}, damaged (not JSON: {e}); rerun what wrote it") from None


def read_fold_metrics(path: Path) -> dict:
    """A fold's metrics.json, with its fold and seed (from the folder name, ``<fold>_seed<s>``, where a
    hand-made file lacks them); ValueError naming the file when it is damaged or lacks a metric."""
    m = read_json(path, "a fold's test metrics")
    missing = [k for k in METRIC_KEYS if not isinstance(m, dict) or k not in m]
    if missing:
        raise DamagedFile(f"{path}: a fold's test metrics, damaged (no {', '.join(missing)}): delete that fold's "
                         "folder and rerun the run (it resumes the other folds)")
    fold, _, seed = Path(path).parent.name.rpartition("_seed")
    return {**m, "fold": str(m.get("fold", fold)), "seed": int(m.get("seed", seed or 0))}


def requested_seeds(run_dir: Path) -> set[int] | None:
    """The seeds the run directory's last run asked for (its config.json), or None when it does not say."""
    path = Path(run_dir) / CONFIG_FILE
    seeds = (read_json(path, "a run's configuration").get("request") or {}).get("seeds") if path.is_file() else None
    return {int(s) for s in seeds} if seeds else None


def load_run(run_dir: Path) -> dict:
    """Read a run directory: ``{"dir", "config", "runs", "summary", "summary_computed"}``.

    `runs` holds one ``{"name", "fold", "seed", "metrics", "history"}`` per folds/ subfolder,
    sorted by fold then seed. Without summary.json (a run still going, or one that crashed), the
    summary is computed from the fold files and `summary_computed` is True.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    config = read_json(config_path, "a run's configuration") if config_path.is_file() else {}
    seeds = requested_seeds(run_dir)
    runs = []
    for metrics_path in (run_dir / FOLDS_DIR).glob(f"*/{METRICS_FILE}"):
        folder = metrics_path.parent
        metrics = read_fold_metrics(metrics_path)
        history_path = folder / HISTORY_FILE
        runs.append(
            {
                "name": folder.name,
                "fold": metrics["fold"],
                "seed": metrics["seed"],
                "metrics": metrics,
                "history": read_json(history_path, "a fold's training history") if history_path.is_file() else [],
            }
        )
    if seeds is not None:  # a directory rerun with fewer seeds keeps the others' folders: not this run's
        runs = [r for r in runs if r["seed"] in seeds]
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no {FOLDS_DIR}/*/{METRICS_FILE}; is this a run directory?")
    runs.sort(key=lambda r: (natural_key(r["fold"]), r["seed"]))

    summary_path = run_dir / SUMMARY_FILE
    computed = not summary_path.is_file()
    summary = build_summary([r["metrics"] for r in runs]) if computed else read_json(summary_path, "a run's summary")
    return {"dir": run_dir, "config": config, "runs": runs, "summary": summary, "summary_computed": computed}


# ---------------------------------------------------------------------------------------- tables


def _format_cell(key: str, value: object, percent: Collection[str]) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict) and "mean" in value and "std" in value:
        text = f"{100 * value['mean']:.2f} ± {100 * value['std']:.2f}"
    elif isinstance(value, float):
        text = f"{100 * value:.2f}" if key in percent else f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = str(value)
    # A bare | would end the Markdown cell early.
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(
    rows: list[dict], columns: Sequence[str | tuple[str, str]], percent: Collection[str] = METRIC_KEYS
) -> str:
    """A Markdown table of `rows`.

    `columns` are row keys, or ``(key, header)`` pairs. A ``{"mean", "std"}`` cell is written the
    way the papers do, in percent with 2 decimals (``82.58 ± 0.40``); a float under a key in
    `percent` becomes a percentage, any other float is written with ``:g``; a missing value is –.
    """
    pairs = [(c, c) if isinstance(c, str) else c for c in columns]
    lines = [
        "| " + " | ".join(header for _, header in pairs) + " |",
        "|" + "|".join("---" for _ in pairs) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(key, row.get(key), percent) for key, _ in pairs) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- plots


def plot_confusion(cm: Sequence[Sequence[float]], labels: list[str], path: Path, title: str = "",
                   runs: int = 1) -> Path:
    """Confusion matrix PNG, rows normalised: each cell is the share (%) of its true class predicted as the
    column, with the count per run beside it (``cm`` summed over ``runs`` runs, each repeating the test set
    once per seed). Row shares make a rare class as readable as a frequent one."""
    counts = np.asarray(cm, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = 2.5 + 0.9 * len(labels)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(100 * shares, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(image, ax=ax, label="% of the true class")
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if shares[i, j] > 0.5 else "black"  # legible on dark cells
            ax.text(j, i, f"{100 * shares[i, j]:.1f}%\n({counts[i, j] / runs:.1f})", ha="center", va="center",
                    color=color, fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_per_class(metrics_by_run: list[dict], labels: list[str], path: Path, title: str = "") -> Path:
    """Per-class recall, precision and F1, mean ± std over runs (folds x seeds), with chance (1 / classes).

    A run where a score is undefined for a class (no test utterances, no predictions) is left out of that
    class's mean instead of pulling it down with a 0.
    """
    stats_names = ("recall", "precision", "f1")
    width = 0.8 / len(stats_names)
    fig = Figure(figsize=(3.0 + 1.1 * len(labels), 4.2))
    ax = fig.add_subplot()
    for k, stat in enumerate(stats_names):
        means, stds = [], []
        for label in labels:
            values = [m["per_class"][label][stat] for m in metrics_by_run
                      if label in m.get("per_class", {}) and m["per_class"][label][stat] is not None]
            st = mean_std(values) if values else {"mean": 0.0, "std": 0.0}
            means.append(100 * st["mean"])
            stds.append(100 * st["std"])
        xs = [i + (k - 1) * width for i in range(len(labels))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=stat)
    ax.axhline(100 / len(labels), color="gray", linestyle="--", label=f"chance ({100 / len(labels):.0f}%)")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title(title or f"per class, mean ± std over {len(metrics_by_run)} runs", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curves(histories: list[list[dict]], path: Path, title: str = "",
                best_epochs: Sequence[int | None] = ()) -> Path:
    """Training curves over runs: mean ± std (over the runs still training at each epoch) of the training and
    validation losses (left) and validation UA / WA (right); each run's best epoch is a marker on the UA curve,
    so a best epoch at 0 shows as well as any other."""
    histories = [h for h in histories if h]
    if not histories:
        raise ValueError("empty history")
    fig = Figure(figsize=(11.0, 4.2))
    loss_ax, score_ax = fig.subplots(1, 2)

    def band(ax, key: str, name: str, scale: float = 1.0):
        by_epoch: dict[int, list[float]] = {}
        for h in histories:
            for e in h:
                if e.get(key) is not None:
                    by_epoch.setdefault(int(e["epoch"]), []).append(scale * float(e[key]))
        if not by_epoch:
            return None
        xs = sorted(by_epoch)
        mean = np.array([np.mean(by_epoch[x]) for x in xs])
        std = np.array([np.std(by_epoch[x]) for x in xs])
        line = ax.plot(xs, mean, label=name)[0]
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
        return dict(zip(xs, mean, strict=True))

    band(loss_ax, "train_loss", "train")
    band(loss_ax, "valid_loss", "valid")
    loss_ax.set_ylabel("loss")
    ua = band(score_ax, "valid_ua", "valid UA", 100.0)
    band(score_ax, "valid_wa", "valid WA", 100.0)
    best = [b for b in best_epochs if b is not None and b >= 0]
    if best and ua:
        score_ax.plot(best, [ua.get(b, np.nan) for b in best], "kv", markersize=7, label="best epoch (per run)")
    score_ax.set_ylabel("validation score (%)")
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or f"mean ± std over {len(histories)} runs", fontsize=10)
    return _save(fig, path)


def plot_grid(rows: list[dict], path: Path, metric: str, title: str = "") -> Path:
    """Horizontal bar chart of a sweep: one bar per row ``{"name", "mean", "std"}``, in percent."""
    if not rows:
        raise ValueError("no rows to plot")
    names = [str(r["name"]) for r in rows]
    means = [100 * r["mean"] if r.get("mean") is not None else 0.0 for r in rows]
    stds = [100 * r["std"] if r.get("std") is not None else 0.0 for r in rows]
    fig = Figure(figsize=(8.0, 1.5 + 0.4 * len(rows)))
    ax = fig.add_subplot()
    positions = range(len(rows))
    ax.barh(positions, means, xerr=stds, capsize=3, color="tab:blue")
    ax.set_yticks(positions, names)
    ax.invert_yaxis()  # first row at the top, like the table
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{METRIC_NAMES.get(metric, metric)} (%)")
    ax.set_title(title or f"{METRIC_NAMES.get(metric, metric)}, mean ± std")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


# --------------------------------------------------------------------------------------- reports


def config_value(config: dict, key: str) -> object:
    """A setting from config.json, at the top level or under "request", under its name or an alias."""
    for place in (config, config.get("request") or {}):
        for name in CONFIG_ALIASES.get(key, (key,)):
            if place.get(name) is not None:
                return place[name]
    return None


def describe_run(config: dict, labels: list[str]) -> str:
    """One line for plot titles: head, features, protocol, label set."""
    feats = config.get("inputs") or {}
    features = ", ".join(f"{m}={i.get('feature', '?')}" for m, i in feats.items()) or str(
        config_value(config, "features"))
    label_set = config_value(config, "label_set") or "labels"
    return (f"{config_value(config, 'head')} on {features} / {config_value(config, 'protocol')}, "
            f"{label_set} ({len(labels)} classes)")


def fold_title(config: dict, fold: str) -> str:
    """A fold named by its test speakers (from config.json), e.g. ``fold0 (test: Actor_01, Actor_02)``."""
    speakers = (config.get("fold_speakers") or {}).get(fold, {}).get("test")
    if not speakers:
        return fold
    shown = ", ".join(speakers[:4]) + (f" +{len(speakers) - 4}" if len(speakers) > 4 else "")
    return f"{fold} (test: {shown})"


def _labels_of(run: dict) -> list[str]:
    labels = config_value(run["config"], "labels")
    return list(labels) if labels else list(run["runs"][0]["metrics"]["labels"])


def _speaker_independent(run: dict) -> bool:
    # The protocol name is the fallback for run directories whose files carry no flag.
    protocols = {config_value(run["config"], "protocol"), *(r["metrics"].get("protocol") for r in run["runs"])}
    return (
        not protocols & SPEAKER_DEPENDENT
        and run["summary"].get("speaker_independent", True)
        and all(r["metrics"].get("speaker_independent", True) for r in run["runs"])
    )


def _valid_score_at_best(history: list[dict], best_epoch: int | None, key: str) -> float | None:
    """The validation score at the chosen epoch: what a sweep may legitimately select on."""
    if best_epoch is None:
        return None
    return next((h.get(key) for h in history if h.get("epoch") == best_epoch), None)


def write_run_report(run_dir: Path) -> Path:
    """Write `report.md` and its PNGs (under plots/) for a run directory; return the report path."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config, summary, runs = run["config"], run["summary"], run["runs"]
    labels = _labels_of(run)
    plots = run_dir / PLOTS_DIR
    lines = [f"# Run report: {run_dir.name}", ""]

    settings = [{"setting": key, "value": config_value(config, key)} for key in CONFIG_KEYS]
    evaluation = config.get("evaluation") or ("paper" if summary.get("optimistic") else None)
    if evaluation is not None:
        settings.append({"setting": "evaluation", "value": evaluation})
    refit = [bool(r["metrics"].get("refit")) for r in runs if "refit" in r["metrics"]]
    if refit:
        settings.append({"setting": "refit on train + valid", "value": "yes" if all(refit) else
                         ("no" if not any(refit) else f"{sum(refit)} of {len(refit)} runs")})
    settings = [row for row in settings if row["value"] is not None]
    if settings:
        lines += [format_table(settings, ["setting", "value"], percent=())]
    if summary.get("optimistic"):
        lines += ["> **PAPER EVALUATION, OPTIMISTIC:** each fold's checkpoint was chosen on its test set, as the "
                  "authors' public code does. Never compare these numbers with honest ones.", ""]
    if not _speaker_independent(run):
        lines += [
            "> **Warning: not speaker-independent.** Test speakers are also in training, so these numbers are "
            "not comparable with speaker-independent results.",
            "",
        ]

    source = "computed from the fold files (no summary.json)" if run["summary_computed"] else "summary.json"
    lines += [f"## Results: mean ± std over {len(runs)} fold × seed runs ({source})", ""]
    rows = [
        {
            "metric": METRIC_NAMES[key],
            "mean ± std": summary[key],
            "min": summary[key]["min"],
            "max": summary[key]["max"],
            "n": summary[key]["n"],
        }
        for key in METRIC_KEYS
        if key in summary
    ]
    lines += [format_table(rows, ["metric", "mean ± std", "min", "max", "n"], percent=("min", "max"))]
    if summary.get("seconds") is not None:
        lines += [f"Wall time: {summary['seconds'] / 60:.1f} min.", ""]

    lines += ["## Per fold (test set)", ""]
    fold_rows = [
        {
            "fold": fold_title(config, r["fold"]),
            "seed": r["seed"],
            "best_epoch": r["metrics"].get("best_epoch"),
            "n": r["metrics"].get("n"),
            **{key: r["metrics"].get(key) for key in METRIC_KEYS},
        }
        for r in runs
    ]
    fold_columns = [("fold", "fold"), ("seed", "seed"), ("best_epoch", "best epoch"), ("n", "n")]
    fold_columns += [(key, METRIC_NAMES[key]) for key in METRIC_KEYS]
    lines += [format_table(fold_rows, fold_columns)]

    lines += ["## Per class (test set, mean ± std over runs)", ""]
    class_rows = []
    for label in labels:
        row: dict = {"class": label, "support": 0}
        # a hand-made metrics.json may have no per-class figures: its runs are left out of these rows
        scored = [r["metrics"]["per_class"][label] for r in runs if label in (r["metrics"].get("per_class") or {})]
        for stat in ("recall", "precision", "f1"):
            values = [c[stat] for c in scored if c[stat] is not None]
            row[stat] = mean_std(values) if values else None
        row["support"] = sum(c["support"] for c in scored)
        class_rows.append(row)
    lines += [format_table(class_rows, ["class", "recall", "precision", "f1", ("support", "support (all runs)")])]

    # Summed over every run: each fold tests different utterances, each seed repeats them; the cells show the
    # row share and the count per run.
    what = describe_run(config, labels)
    total = np.sum([np.asarray(r["metrics"]["confusion"]) for r in runs], axis=0)
    plot_confusion(total.tolist(), labels, plots / "confusion.png", f"{what}\nrow %, (count per run; {len(runs)} runs)",
                   runs=len(runs))
    plot_per_class([r["metrics"] for r in runs], labels, plots / "per_class.png",
                   f"{what}\nper class, mean ± std over {len(runs)} runs")
    lines += [
        f"![confusion matrix]({PLOTS_DIR}/confusion.png)",
        "",
        f"![per-class recall, precision, F1]({PLOTS_DIR}/per_class.png)",
        "",
    ]

    curves = [r for r in runs if r["history"] and "epoch" in r["history"][0]]  # not a convex fit's C path
    if curves:
        lines += ["## Training curves (mean ± std over runs)", ""]
        plot_curves([r["history"] for r in curves], plots / "curves.png", f"{what}: {len(curves)} runs",
                    [r["metrics"].get("best_epoch") for r in curves])
        lines += [f"![training curves]({PLOTS_DIR}/curves.png)", ""]

    report = run_dir / REPORT_FILE
    report.write_text("\n".join(lines))
    return report


def _params_from_config(config: dict, grid_params: list[str]) -> dict:
    """A cell's parameters read back from its config: the grid's names, else head and head options."""
    if grid_params:
        return {p: config_value(config, p) for p in grid_params}
    options = config_value(config, "head_options")
    return {"head": config_value(config, "head"), **(options if isinstance(options, dict) else {})}


def write_sweep_report(sweep_dir: Path) -> Path:
    """Write `report.md` for a sweep: one table row per cell and a bar chart of the grid."""
    sweep_dir = Path(sweep_dir)
    sweep_path = sweep_dir / SWEEP_FILE
    sweep = read_json(sweep_path, "a sweep's grid") if sweep_path.is_file() else {}
    metric = sweep.get("metric", "ua")
    # Cells may be listed by name only; their parameters then come from each cell's config.
    listed = [c if isinstance(c, dict) else {"name": c} for c in sweep.get("cells", [])]
    params_of = {c["name"]: c.get("params", {}) for c in listed}
    cells_root = sweep_dir / CELLS_DIR
    cell_dirs = {d.name: d for d in cells_root.iterdir() if d.is_dir()} if cells_root.is_dir() else {}
    if not cell_dirs:
        raise FileNotFoundError(f"{sweep_dir}: no {CELLS_DIR}/<cell> run directories")
    # sweep.json's order first (the grid as designed), then any cell it does not list.
    order = [name for name in params_of if name in cell_dirs]
    order += sorted(set(cell_dirs) - set(order), key=natural_key)
    # Only a {param: values} grid names columns (train.cli keeps its head-by-head grid under "config").
    grid = sweep["grid"] if isinstance(sweep.get("grid"), dict) else {}
    grid_params = list(grid)

    rows = []
    for name in order:
        run = load_run(cell_dirs[name])
        params = params_of.get(name) or _params_from_config(run["config"], grid_params)
        params_of[name] = params
        valid = [
            _valid_score_at_best(r["history"], r["metrics"].get("best_epoch"), f"valid_{metric}") for r in run["runs"]
        ]
        rows.append(
            {
                "cell": name,
                **params,
                **{key: run["summary"].get(key) for key in METRIC_KEYS},
                "valid": mean_std(valid) if valid and None not in valid else None,
                "runs": len(run["runs"]),
                "seconds": run["summary"].get("train_seconds") or run["summary"].get("seconds"),
                "speaker_independent": _speaker_independent(run),
            }
        )

    lines = [f"# Sweep report: {sweep_dir.name}", ""]
    if grid:
        grid_rows = [{"parameter": k, "values": v} for k, v in grid.items()]
        lines += [format_table(grid_rows, ["parameter", "values"], percent=())]
    machine = f" on {sweep['machine']}" if sweep.get("machine") else ""
    if sweep.get("elapsed_s") is not None:
        lines += [f"Wall time: {sweep['elapsed_s'] / 60:.1f} min{machine}.", ""]
    elif all(r["seconds"] is not None for r in rows):
        # Cells resumed from an earlier sweep count with the time they took then.
        lines += [
            f"Wall time, summed over the cells' runs: {sum(r['seconds'] for r in rows) / 60:.1f} min{machine}.",
            "",
        ]
    if not all(r["speaker_independent"] for r in rows):
        lines += ["> **Warning:** some cells are not speaker-independent.", ""]
    lines += [
        "Test-set scores, mean ± std over folds × seeds. Choosing a cell by these is model selection on "
        f"the test set; select on the validation column (valid {METRIC_NAMES.get(metric, metric)} at the best epoch).",
        "",
    ]
    param_columns = list(dict.fromkeys(k for name in order for k in params_of[name]))
    columns = ["cell", *param_columns, *[(key, METRIC_NAMES[key]) for key in METRIC_KEYS]]
    columns += [("valid", f"valid {METRIC_NAMES.get(metric, metric)}"), "runs"]
    lines += [format_table(rows, columns)]

    bars = [
        {
            "name": r["cell"],
            "mean": r[metric]["mean"] if r.get(metric) else None,
            "std": r[metric]["std"] if r.get(metric) else None,
        }
        for r in rows
    ]
    plot_grid(bars, sweep_dir / PLOTS_DIR / "grid.png", metric, f"test {METRIC_NAMES.get(metric, metric)} per cell")
    lines += [f"![grid]({PLOTS_DIR}/grid.png)", ""]

    report = sweep_dir / REPORT_FILE
    report.write_text("\n".join(lines))
    return report
