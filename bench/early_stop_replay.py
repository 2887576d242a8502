"""Replay early stopping on finished runs: how many epochs other (patience, stop_after) settings would have
trained, and whether any run would have chosen another epoch.

Training up to the stop is the same whatever the stopping rule (the schedule spans the whole budget), so a
run's recorded validation history decides exactly where a stricter rule would have stopped and which epoch it
would have kept. A run whose chosen epoch is unchanged would give the same model, refit included, in fewer
epochs; a changed one would not, and is counted. Nothing is trained.

    python bench/early_stop_replay.py runs/cost/rav4 --rules 15:0.5,10:0.5,10:0.3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from train.recipe import EpochSelector, Recipe, selection_score


def replay(history: list[dict], recipe: Recipe, budget: int, min_epochs: int = 0) -> tuple[int, int]:
    """(epochs trained, chosen epoch) under ``recipe``'s patience and stop_after, choosing and stopping as
    train/loop.py: run_epochs does, on the recorded validation scores."""
    stop = max(recipe.earliest_stop(budget), min(min_epochs, budget))
    selector = EpochSelector(recipe.select_window)
    for epoch, entry in enumerate(history):
        metrics = {name: entry["valid_" + name] for name in ("ua", "wa", "macro_f1")}
        selector.update(selection_score(recipe.select_on, metrics, entry["valid_loss"]))
        if epoch + 1 >= stop and epoch - selector.best_epoch >= recipe.patience:
            return epoch + 1, selector.best_epoch
    return len(history), selector.best_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="a sweep directory (its cells/*/folds/*/ hold metrics and history)")
    ap.add_argument("--rules", default="15:0.5,10:0.5,15:0.3,10:0.3,8:0.3,6:0.3,5:0.3",
                    help="patience:stop_after pairs to replay, comma-separated")
    args = ap.parse_args()
    rules = [(int(p), float(s)) for p, s in (r.split(":") for r in args.rules.split(","))]
    print("cell: the recorded rule; per replayed rule, epochs trained (refit included) as a share of the "
          "recorded ones, and runs whose chosen epoch would change")
    minutes_all = minutes_saved = 0.0
    for cell in sorted((args.sweep / "cells").iterdir()):
        config = json.loads((cell / "config.json").read_text())
        recipe = Recipe(**config["recipe"])
        runs = []
        for metrics_file in sorted(cell.glob("folds/*/metrics.json")):
            m = json.loads(metrics_file.read_text())
            minutes_all += m["seconds"] / 60
            history = json.loads((metrics_file.parent / "history.json").read_text())
            if m["best_epoch"] >= 0 and history and "valid_loss" in history[0]:  # a convex head has no epochs
                runs.append((m, history))
        if not runs:
            continue
        refit = recipe.refit
        # a fused msmser may not stop while its modality masking is on (MSMSER.min_epochs)
        fused = len(config.get("inputs", {})) == 2
        floor = config["head_config"].get("rmm_end_epoch", 0) if config["request"]["head"] == "msmser" and fused else 0
        recorded = sum(len(h) + (m["best_epoch"] + 1 if refit else 0) for m, h in runs)
        # the recorded rule must give back what the runs did, or the replay does not mirror the loop
        off = [m["fold"] for m, h in runs if replay(h, recipe, m["budget"], floor) != (len(h), m["best_epoch"])]
        if off:
            print(f"{cell.name}: the recorded rule does not replay to the recorded runs ({', '.join(off)}); skipped")
            continue
        cols = []
        kept_share = 1.0  # the fewest epochs among the rules that change no run's choice
        for patience, stop_after in rules:
            epochs, changed = 0, 0
            for m, history in runs:
                rule = dataclasses.replace(recipe, patience=patience, stop_after=stop_after)
                n, best = replay(history, rule, m["budget"], floor)
                epochs += n + (best + 1 if refit else 0)
                changed += best != m["best_epoch"]
            cols.append(f"{patience}:{stop_after} {epochs / recorded:.2f} ({changed} changed)")
            if changed == 0:
                kept_share = min(kept_share, epochs / recorded)
        minutes_saved += (1 - kept_share) * sum(m["seconds"] for m, _ in runs) / 60
        print(f"{cell.name} (patience {recipe.patience}, stop_after {recipe.stop_after}, {len(runs)} runs): "
              + "; ".join(cols))
    # a run's minutes taken as proportional to its epochs (a refit epoch sees more data, a first-fit epoch also
    # scores validation: about even)
    print(f"per cell, the rule with the fewest epochs that changes no choice: {minutes_saved:.1f} of "
          f"{minutes_all:.1f} training minutes saved ({minutes_saved / max(minutes_all, 1e-9):.0%})")


if __name__ == "__main__":
    main()
