"""Reports: a fake run and sweep directory in the documented layout, turned into Markdown + PNGs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from train.metrics import compute_metrics
from train.report import (
    build_summary,
    fold_dir_name,
    format_table,
    load_run,
    plot_confusion,
    plot_curves,
    plot_grid,
    plot_per_class,
    write_run_report,
    write_sweep_report,
)

LABELS = ["neutral", "happy", "sad", "angry"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, f"{path}: {len(data)} bytes, suspiciously small"


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fake_run(run_dir: Path, accuracy: float, folds: int = 2, seeds: int = 2, with_summary: bool = True) -> Path:
    """A run directory as the training loop writes it, with predictions right `accuracy` of the time."""
    write_json(
        run_dir / "config.json",
        {
            "corpus": "ravdess",
            "features": ["hubert_base"],
            "head": "probe",
            "head_options": {"hidden": 128},
            "label_set": "rav4",
            "labels": LABELS,
            "protocol": "rav4",
            "seeds": list(range(seeds)),
            "lr": accuracy / 100,
        },
    )
    all_metrics = []
    for k in range(folds):
        for seed in range(seeds):
            rng = random.Random(k * 10 + seed)
            y_true = [rng.choice(LABELS) for _ in range(40)]
            y_pred = [y if rng.random() < accuracy else rng.choice(LABELS) for y in y_true]
            metrics = compute_metrics(y_true, y_pred, LABELS) | {
                "fold": f"fold{k}",
                "seed": seed,
                "best_epoch": 3,
                "protocol": "rav4",
            }
            history = [
                {
                    "epoch": e,
                    "train_loss": 1.5 / e,
                    "valid_loss": 1.6 / e + 0.01 * e,
                    "valid_ua": 0.3 + 0.05 * e,
                    "valid_wa": 0.32 + 0.05 * e,
                }
                for e in range(1, 6)
            ]
            folder = run_dir / "folds" / fold_dir_name(f"fold{k}", seed)
            write_json(folder / "metrics.json", metrics)
            write_json(folder / "history.json", history)
            all_metrics.append(metrics)
    if with_summary:
        write_json(run_dir / "summary.json", build_summary(all_metrics))
    return run_dir


def test_format_table_like_the_papers():
    rows = [
        {"name": "text", "ua": {"mean": 0.8258, "std": 0.0040}, "wa": 0.5, "lr": 0.001, "n": 3},
        {"name": "a|b", "ua": None, "wa": 0.123456, "lr": 1e-4, "n": 1},
    ]
    table = format_table(rows, ["name", ("ua", "UA"), ("wa", "WA"), "lr", "n"])
    lines = table.strip().split("\n")
    assert lines[0] == "| name | UA | WA | lr | n |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| text | 82.58 ± 0.40 | 50.00 | 0.001 | 3 |"
    assert lines[3] == "| a\\|b | – | 12.35 | 0.0001 | 1 |"


def test_run_report(tmp_path):
    run_dir = fake_run(tmp_path / "run", accuracy=0.7)
    report = write_run_report(run_dir)
    assert report == run_dir / "report.md"
    text = report.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    ua = summary["ua"]
    assert f"| UA | {100 * ua['mean']:.2f} ± {100 * ua['std']:.2f} |" in text
    assert "| fold | seed | best epoch | n | WA | UA | macro-F1 |" in text
    assert text.count("| fold1 |") == 2  # one row per seed
    assert "| happy |" in text
    assert "| protocol | rav4 |" in text
    assert "not speaker-independent" not in text
    for name in ("confusion.png", "per_class.png", "curves.png"):  # one aggregate curve plot
        assert f"plots/{name}" in text
        assert_png(run_dir / "plots" / name)


def test_run_report_without_summary_and_speaker_dependent(tmp_path):
    run_dir = fake_run(tmp_path / "run", accuracy=0.5, folds=1, seeds=1, with_summary=False)
    metrics_path = run_dir / "folds" / "fold0_seed0" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) | {"speaker_independent": False}
    write_json(metrics_path, metrics)
    run = load_run(run_dir)
    assert run["summary_computed"]
    assert run["summary"]["wa"]["n"] == 1
    assert run["summary"]["per_fold"][0]["fold"] == "fold0"
    text = write_run_report(run_dir).read_text()
    assert "not speaker-independent" in text
    assert "no summary.json" in text


def test_load_run_sorts_and_rejects_empty(tmp_path):
    run = load_run(fake_run(tmp_path / "run", accuracy=0.6, folds=3, seeds=2))
    assert [(r["fold"], r["seed"]) for r in run["runs"]] == [(f"fold{k}", s) for k in range(3) for s in range(2)]
    assert len(run["runs"][0]["history"]) == 5
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "empty")


def test_sweep_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cells = [("lr_low", 0.4), ("lr_mid", 0.6), ("lr_high", 0.8)]
    write_json(
        sweep_dir / "sweep.json",
        {
            "grid": {"lr": [0.004, 0.006, 0.008]},
            "cells": [{"name": name, "params": {"lr": acc / 100}} for name, acc in cells],
            "metric": "ua",
            "elapsed_s": 90,
        },
    )
    for name, acc in cells:
        fake_run(sweep_dir / "cells" / name, accuracy=acc, folds=2, seeds=1)
    report = write_sweep_report(sweep_dir)
    text = report.read_text()
    assert "| cell | lr | WA | UA | macro-F1 | valid UA | runs |" in text
    for name, _ in cells:
        ua = json.loads((sweep_dir / "cells" / name / "summary.json").read_text())["ua"]
        assert f"| {name} |" in text
        assert f"{100 * ua['mean']:.2f} ± {100 * ua['std']:.2f}" in text
    # valid UA at best epoch 3 of the fake history: 0.3 + 0.15, the same in every fold.
    assert "45.00 ± 0.00" in text
    assert text.index("lr_low") < text.index("lr_mid") < text.index("lr_high")  # sweep.json's order
    assert "Wall time: 1.5 min" in text
    assert_png(sweep_dir / "plots" / "grid.png")


def test_plots_directly(tmp_path):
    cm = [[10, 2, 0, 0], [1, 5, 0, 0], [0, 0, 0, 0], [3, 0, 0, 7]]  # an empty row must not divide by 0
    assert_png(plot_confusion(cm, LABELS, tmp_path / "cm.png", "title"))
    m = compute_metrics(["neutral", "happy"], ["neutral", "sad"], LABELS)
    assert_png(plot_per_class([m, m], LABELS, tmp_path / "per_class.png"))
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "valid_ua": 0.4}]
    assert_png(plot_curves([history, history[:2]], tmp_path / "curves.png", best_epochs=[2, 0]))
    rows = [{"name": "a", "mean": 0.5, "std": 0.1}, {"name": "b", "mean": 0.7, "std": 0.0}]
    assert_png(plot_grid(rows, tmp_path / "sub" / "grid.png", "ua"))
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "x.png")


def test_layout_as_train_cli_writes_it(tmp_path):
    """config.json nests the request and names the labels "classes"; sweep.json lists cell names only."""
    sweep_dir = tmp_path / "sweep"
    names = ["probe-64", "probe-128"]
    write_json(sweep_dir / "sweep.json", {"config": {"grid": [{"head": "probe"}]}, "cells": names})
    for name, hidden in zip(names, (64, 128), strict=True):
        cell = fake_run(sweep_dir / "cells" / name, accuracy=0.6, folds=2, seeds=1)
        write_json(
            cell / "config.json",
            {
                "request": {"head": "probe", "corpus": "ravdess", "options": {"hidden": hidden}, "seeds": [0]},
                "classes": LABELS,
                "label_set": "rav4",
                "protocol": "stratified",
            },
        )
        summary = json.loads((cell / "summary.json").read_text())
        write_json(
            cell / "summary.json", {k: v for k, v in summary.items() if k != "speaker_independent"} | {"seconds": 60}
        )
        run_text = write_run_report(cell).read_text()
        assert "| head | probe |" in run_text
        assert "| head_options | hidden=" in run_text
        assert "| labels | neutral, happy, sad, angry |" in run_text
        assert "not speaker-independent" in run_text  # from the protocol name alone
        assert "Wall time: 1.0 min." in run_text
    text = write_sweep_report(sweep_dir).read_text()
    assert "| cell | head | hidden | WA | UA | macro-F1 | valid UA | runs |" in text
    assert "| probe-64 | probe | 64 |" in text
    assert "Wall time, summed over the cells' runs: 2.0 min." in text
    assert "some cells are not speaker-independent" in text
