"""The training loop: one head, one fold, one seed — then every fold × seed of a run.

`train_fold` is the one place a fold is trained: split rows -> fit the fold's normaliser -> `fit_head`
(the epoch loop, or a convex head's own fit) selecting on validation -> optionally `refit` on training +
validation speakers with the chosen epochs / C -> score the test split once -> flags -> files.
The learning-rate schedule is `train.recipe.lr_factor`, applied per optimiser step in `run_epochs`.

Evaluation ``honest`` (the default, and the only one benchmarks.md accepts) never looks at the test split
before the final score. ``paper`` reproduces the authors' public code — the checkpoint is chosen on the test
fold — and every file it writes says so (``"evaluation": "paper"``, ``"optimistic": true``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import random
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featurize.extractors.neural import autocast_context
from train.augment import mask_frames
from train.data import CorpusData, Normalizer
from train.files import save_atomic, write_atomic
from train.heads import HeadSpec, fill_new_fields
from train.metrics import compute_metrics
from train.protocols import Fold
from train.recipe import EpochSelector, Recipe, class_weights, lr_factor, selection_score
from train.report import build_summary, read_fold_metrics, read_json
from train.shared_fits import SharedFits, fit_key

EVALUATIONS = {
    "honest": "checkpoint and epochs chosen on validation speakers; the test fold scored once",
    "paper": "OPTIMISTIC: checkpoint chosen on the test fold, as the authors' public code does",
}
LATE_FRACTION = 0.1  # a best epoch in the last 10% of the budget: the head was still improving
PRIOR_RATIO = 0.9  # a final training loss above 90% of the prior-only loss: the head barely learned


@dataclasses.dataclass
class LoopOptions:
    device: str = "auto"
    max_epochs: int | None = None  # caps the recipe's budget (quick runs)
    evaluation: str = "honest"  # honest | paper (see EVALUATIONS)
    shared_fits: Path | None = None  # a sweep's folder of fits its cells share (train/shared_fits.py)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but torch sees no CUDA device")
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclasses.dataclass
class Scored:
    """A model's outputs over some labelled rows."""

    rows: list[int]
    y: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    ce: float  # mean cross-entropy of the head's logits


def forward(model: torch.nn.Module, batch: dict, autocast: str, device: torch.device) -> dict:
    """The head's outputs for a batch, computed under the recipe's ``autocast`` and returned in float32, so
    that losses, soft-maxes and metrics are float32 whatever the forward pass ran in."""
    with autocast_context(autocast, device.type):
        out = model(batch)
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in out.items()}


def evaluate(model: torch.nn.Module, data: CorpusData, rows: list[int], norm: Normalizer, batch_size: int,
             device: torch.device, phase: str, autocast: str = "none") -> Scored:
    """The model's predictions over the labelled utterances in ``rows``. ``phase`` (valid | test | train) is
    passed in the batch: a head may act differently at test (msmser's ``eval_mask``)."""
    model.eval()
    out_rows, ys, ps, probs, ce, count = [], [], [], [], 0.0, 0
    with torch.no_grad():
        for batch in data.batches(rows, batch_size, shuffle=False, norm=norm):
            batch = _to_device({**batch, "phase": phase}, device)
            logits = forward(model, batch, autocast, device)["logits"]
            labels = batch["labels"]
            keep = labels >= 0
            if data.dialogue:  # the labelled positions of the padded dialogues, in row order
                kept = [r for b, d in enumerate(batch["rows"]) for j, r in enumerate(d) if keep[b, j]]
            else:
                kept = [r for r, k in zip(batch["rows"], keep.tolist(), strict=True) if k]
            logits, labels = logits[keep], labels[keep]
            ce += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            count += len(labels)
            out_rows += kept
            ys.append(labels.cpu().numpy())
            ps.append(logits.argmax(-1).cpu().numpy())
            probs.append(torch.softmax(logits.float(), -1).cpu().numpy())
    return Scored(out_rows, np.concatenate(ys), np.concatenate(ps), np.concatenate(probs), ce / max(count, 1))


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    # fused: one kernel over every parameter. On a CPU torch otherwise steps parameter by parameter, op by
    # op, an order of magnitude slower on cme's 2 M parameters (measured ad hoc, 2026-12-01); the values
    # agree to float32 rounding.
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)


def loss_weights(recipe: Recipe, data: CorpusData, rows: list[int], device: torch.device) -> torch.Tensor | None:
    """The recipe's per-class loss weights for these training rows (None: unweighted), as heads read them
    from ``batch["class_weights"]``."""
    w = class_weights(recipe.class_weight, data.labels[rows].numpy(), data.n_classes)
    return None if w is None else torch.tensor(w, dtype=torch.float32, device=device)


@dataclasses.dataclass
class Fitted:
    """What fitting a head on some rows produced."""

    state: dict  # the chosen weights
    history: list[dict]  # one entry per epoch (or per C for a convex head)
    best_epoch: int  # the chosen epoch (-1 for a convex head)
    budget: int  # epochs the schedule spans
    chosen: dict  # what a refit reuses: {"epochs": n} or {"C": c}, plus dialog's {"text_weight": w}
    solver: dict | None = None  # a convex head: how its final fit converged (grad_max, iterations, ...)
    best_score: float | None = None  # the validation score the best epoch was chosen on (higher is better)
    reused: bool = False  # loaded from the sweep's shared fits, not trained here


def run_epochs(model: torch.nn.Module, recipe: Recipe, data: CorpusData, norm: Normalizer, train_rows: list[int],
               select: tuple[str, list[int]] | None, budget: int, stop: int, gen: torch.Generator,
               device: torch.device, on_epoch=None) -> Fitted:
    """Train for up to ``budget`` epochs (the schedule spans all of them); with ``select`` = (phase, rows),
    keep the best epoch on those rows (on the mean of the last ``recipe.select_window`` epochs' scores) and
    stop after ``recipe.patience`` epochs without a better one, but never before epoch ``stop``.
    Without ``select`` (a refit), train exactly ``budget`` epochs."""
    optim = make_optimizer(recipe, model.parameters())
    weights = loss_weights(recipe, data, train_rows, device)
    steps_per_epoch = math.ceil(len(data.units(train_rows)) / recipe.batch_size)
    total_steps, step = budget * steps_per_epoch, 0
    history: list[dict] = []
    selector = EpochSelector(recipe.select_window, first=budget - 1)  # a refit keeps its last epoch
    best_state = None
    for epoch in range(budget):
        model.train()
        total, n = 0.0, 0
        for batch in data.batches(train_rows, recipe.batch_size, shuffle=True, norm=norm, generator=gen, epoch=epoch,
                                  length_window=recipe.length_window):
            for group in optim.param_groups:  # the schedule: warm-up, then cosine / step / constant
                group["lr"] = recipe.lr * lr_factor(recipe, step / total_steps)
            batch = _to_device(batch, device)
            if (recipe.freq_mask or recipe.time_mask) and "audio_mask" in batch:  # frames, not a pooled vector
                batch["audio"] = mask_frames(batch["audio"], batch["audio_mask"], recipe.freq_mask, recipe.time_mask,
                                             gen=gen)
            if weights is not None:
                batch["class_weights"] = weights
            loss = model.loss(forward(model, batch, recipe.autocast, device), batch)
            optim.zero_grad()
            loss.backward()
            if recipe.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm)
            optim.step()
            total, n, step = total + loss.item(), n + 1, step + 1
        entry = {"epoch": epoch, "lr": optim.param_groups[0]["lr"], "train_loss": total / max(n, 1)}
        if select is not None:
            phase, rows = select
            scored = evaluate(model, data, rows, norm, recipe.batch_size, device, phase, recipe.autocast)
            m = compute_metrics(scored.y, scored.pred, data.classes)
            entry.update({"valid_loss": scored.ce, "valid_wa": m["wa"], "valid_ua": m["ua"],
                          "valid_macro_f1": m["macro_f1"]})
            windowed, is_best = selector.update(selection_score(recipe.select_on, m, scored.ce))
            if recipe.select_window > 1:
                entry["valid_windowed"] = windowed  # the score the choice is made on
            if is_best:
                best_state = copy.deepcopy(model.state_dict())
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry, selector.best_score, selector.best_epoch, budget)
        if select is not None and epoch + 1 >= stop and epoch - selector.best_epoch >= recipe.patience:
            break
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
    return Fitted(best_state, history, selector.best_epoch, budget, {"epochs": selector.best_epoch + 1},
                  best_score=selector.best_score if select is not None else None)


def fit_head(spec: HeadSpec, config: Any, recipe: Recipe, data: CorpusData, norm: Normalizer, train_rows: list[int],
             select: tuple[str, list[int]] | None, seed: int, opts: LoopOptions, chosen: dict | None = None,
             on_epoch=None, keep: bool = False) -> tuple[torch.nn.Module, Fitted]:
    """Build the head (seeded) and fit it on ``train_rows``, choosing on ``select`` when given.
    A refit passes instead what the first fit ``chosen`` (``Fitted.chosen``), and every choice is reused:
    the number of epochs, a convex head's C, dialog's text-logit weight (``text_weight = validation``).
    In a sweep (``opts.shared_fits``) a one-modality fit another cell kept is loaded instead of trained;
    ``keep``: this one is kept for the others (train/shared_fits.py)."""
    chosen = chosen or {}
    if "C" in chosen:
        config = dataclasses.replace(config, C=chosen["C"])
    gen = seed_everything(seed)
    device = pick_device(opts.device)
    dims = {m: inp.dim for m, inp in data.inputs.items()}
    layers = {m: inp.layers for m, inp in data.inputs.items()}
    model = spec.build(config, dims, layers, data.n_classes, sorted(data.inputs)).to(device)
    shared = SharedFits(opts.shared_fits) if opts.shared_fits and spec.fit is None and len(data.inputs) == 1 else None
    if shared is not None:
        key = fit_key(spec.name, config, recipe, data, norm, train_rows, select, seed, device.type, opts.max_epochs,
                      chosen)
        found = shared.load(key)
        if found is not None:
            fitted = Fitted(**found, reused=True)
            model.load_state_dict(fitted.state)
            if "text_weight" in fitted.chosen and getattr(model, "text_weight_candidates", None):
                model.set_text_weight(fitted.chosen["text_weight"])
            return model, fitted
    if spec.fit is not None:  # a convex head: one full-batch fit per candidate C
        whole = lambda rows: _to_device(next(data.batches(rows, len(rows), shuffle=False, norm=norm)), device)  # noqa: E731
        out = spec.fit(model, whole(train_rows), whole(select[1]) if select else None, data.classes, recipe)
        return model, Fitted(copy.deepcopy(model.state_dict()), out["history"], -1, 0, out["chosen"], out["solver"])
    budget = chosen.get("epochs")
    if budget is None:
        steps = math.ceil(len(data.units(train_rows)) / recipe.batch_size)
        budget = recipe.budget(steps)
        if opts.max_epochs:
            budget = min(budget, opts.max_epochs)
        # a head may forbid stopping before its own schedule ends (msmser: modality masking still on)
        stop = max(recipe.earliest_stop(budget), min(getattr(model, "min_epochs", 0), budget))
    else:
        stop = budget
    fitted = run_epochs(model, recipe, data, norm, train_rows, select, budget, stop, gen, device, on_epoch)
    model.load_state_dict(fitted.state)
    if getattr(model, "text_weight_candidates", None):
        if select is not None:
            fitted.chosen.update(choose_text_weight(model, data, select, norm, recipe, device))
        elif "text_weight" in chosen:
            model.set_text_weight(chosen["text_weight"])
    if shared is not None and keep:
        shared.save(key, {f.name: getattr(fitted, f.name) for f in dataclasses.fields(Fitted) if f.name != "reused"})
    return model, fitted


def choose_text_weight(model: torch.nn.Module, data: CorpusData, select: tuple[str, list[int]], norm: Normalizer,
                       recipe: Recipe, device: torch.device) -> dict:
    """The text-logit weight whose fused logits have the lowest cross-entropy on ``select`` (validation);
    the model keeps it. Cross-entropy, not UA: it moves with w where a few hundred utterances' UA ties."""
    phase, rows = select
    ce = {}
    for w in model.text_weight_candidates:
        model.set_text_weight(w)
        ce[w] = evaluate(model, data, rows, norm, recipe.batch_size, device, phase, recipe.autocast).ce
    best = min(model.text_weight_candidates, key=lambda w: ce[w])  # the first minimum: ties keep the paper's 1.0
    model.set_text_weight(best)
    return {"text_weight": best, "text_weight_ce": {str(w): round(v, 5) for w, v in ce.items()}}


def prior_loss(labels: np.ndarray, n_classes: int) -> float:
    """Cross-entropy of always predicting the training label frequencies: what a head that learned
    nothing from its inputs reaches."""
    p = np.bincount(labels, minlength=n_classes) / max(len(labels), 1)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def solver_flags(fitted: Fitted) -> list[str]:
    """A convex fit whose solution is the model, or chose its C, that stopped short of the optimum: the final
    fit, and the chosen C's cross-validation fits. A fit at another C that stopped short only scored that C
    (history.json says which)."""
    c = fitted.chosen["C"]
    checked = [("cross-validation", h) for h in fitted.history if h["C"] == c and len(fitted.history) > 1]
    checked.append(("final", fitted.solver or {}))
    flags = []
    for where, info in checked:
        if not info.get("converged", True):
            advice = "raise max_iter" if info.get("max_iter_reached") else "its line search stalled: raise tol"
            flags.append(f"the convex solver stopped before convergence at the chosen C={c} ({where} fit, largest "
                         f"gradient {info['grad_max']:.1e} after {info['iterations']} iterations: {advice})")
    return flags


def training_flags(fitted: Fitted, train_ce: float, prior: float, min_epochs: int = 0) -> list[str]:
    """Why a fold's model may not be what its features allow: still improving when the budget ended, a
    training loss near the prior-only loss, a convex fit that did not converge or chose the grid's edge, a head
    whose own schedule (``min_epochs``: msmser's modality masking) had not ended when the budget did."""
    flags = []
    if fitted.budget and min_epochs > fitted.budget:
        flags.append(f"the head's schedule runs to epoch {min_epochs} (msmser: rmm_end_epoch) and the budget is "
                     f"{fitted.budget} epochs: trained with modality masking to the end")
    if fitted.best_epoch >= 0 and fitted.budget > 1:
        late = fitted.budget - max(1, math.ceil(LATE_FRACTION * fitted.budget))
        if fitted.best_epoch >= late:
            flags.append(f"best epoch {fitted.best_epoch} is in the last {LATE_FRACTION:.0%} of its "
                         f"{fitted.budget}-epoch budget: still improving")
    if train_ce > PRIOR_RATIO * prior:
        flags.append(f"training loss {train_ce:.3f} near the prior-only loss {prior:.3f}: the head barely learned")
    if fitted.best_epoch < 0:  # convex fit
        flags += solver_flags(fitted)
        grid = [h["C"] for h in fitted.history]
        if len(grid) > 1 and fitted.chosen["C"] in (min(grid), max(grid)):
            edge = "top" if fitted.chosen["C"] == max(grid) else "bottom"
            flags.append(f"C chosen at the {edge} of the grid ({fitted.chosen['C']}): extend c_grid")
    return flags


def class_warnings(data: CorpusData, splits: dict[str, list[int]]) -> list[str]:
    out = []
    for name, rows in splits.items():
        present = set(data.labels[rows].tolist())
        missing = [c for i, c in enumerate(data.classes) if i not in present]
        if missing:
            out.append(f"class {', '.join(missing)} absent from the {name} set")
    return out


def train_fold(
    spec: HeadSpec,
    config: Any,
    recipe: Recipe,
    data: CorpusData,
    fold: Fold,
    seed: int,
    opts: LoopOptions,
    protocol: str = "",
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train on fold.train, select on fold.valid (paper evaluation: on fold.test), optionally refit on
    train + valid, score fold.test; write metrics, history, checkpoint."""
    t0 = time.monotonic()
    train_rows, valid_rows, test_rows = (data.labelled(ids) for ids in (fold.train, fold.valid, fold.test))
    if not train_rows or not valid_rows or not test_rows:
        raise ValueError(
            f"fold {fold.name}: empty split (train {len(train_rows)}, valid {len(valid_rows)}, "
            f"test {len(test_rows)}) — are the features extracted for every utterance?"
        )
    paper = opts.evaluation == "paper"
    refit = recipe.refit and not paper
    warnings = class_warnings(data, {"training": train_rows, "validation": valid_rows, "test": test_rows})
    norm = Normalizer.fit(data, train_rows)
    task = progress.add_task(f"{fold.name} seed {seed}", total=None, status="") if progress else None

    def on_epoch(entry: dict, best_score: float, best_epoch: int, budget: int) -> None:
        if progress is not None:
            score = entry.get(f"valid_{recipe.select_on}")
            best_score = -best_score if recipe.select_on == "loss" else best_score
            status = "" if score is None else (
                f"{select[0]} {recipe.select_on.upper()} {score:.3f} (best {best_score:.3f} @ {best_epoch})")
            progress.update(task, completed=entry["epoch"] + 1, total=budget, status=status)

    select = ("test", test_rows) if paper else ("valid", valid_rows)
    model, fitted = fit_head(spec, config, recipe, data, norm, train_rows, select, seed, opts, on_epoch=on_epoch)
    reused = int(fitted.reused)  # fits loaded from the sweep's shared fits (train/shared_fits.py)
    modality_scores = None
    if recipe.choose_modalities and len(data.inputs) > 1:
        if fitted.best_score is None:
            raise ValueError("choose_modalities needs a head trained by epochs, not a convex fit")
        full = data
        best = fitted.best_score
        modality_scores = {"+".join(sorted(full.inputs)): best}
        for m in sorted(full.inputs):
            one = dataclasses.replace(full, inputs={m: full.inputs[m]})
            if progress is not None:
                progress.update(task, status=f"{m} alone")
            # kept for the sweep's one-modality twin of this cell, which would train the very same fit
            one_model, one_fitted = fit_head(spec, config, recipe, one, norm, train_rows, select, seed, opts,
                                             on_epoch=on_epoch, keep=True)
            reused += one_fitted.reused
            modality_scores[m] = one_fitted.best_score
            if modality_scores[m] > best:  # strictly better: a tie keeps the fused model
                best, data, model, fitted = modality_scores[m], one, one_model, one_fitted
    device = pick_device(opts.device)
    train_ce = evaluate(model, data, train_rows, norm, recipe.batch_size, device, "train", recipe.autocast).ce
    flags = training_flags(fitted, train_ce, prior_loss(data.labels[train_rows].numpy(), data.n_classes),
                           getattr(model, "min_epochs", 0))
    final_rows, refit_info = train_rows, None
    if refit:
        final_rows = sorted(train_rows + valid_rows)
        norm = Normalizer.fit(data, final_rows)
        if progress is not None:
            progress.update(task, status=f"refit on train + valid: {fitted.chosen}")
        model, refitted = fit_head(spec, config, recipe, data, norm, final_rows, None, seed, opts,
                                   chosen=fitted.chosen, on_epoch=on_epoch, keep=modality_scores is not None)
        reused += refitted.reused
        if refitted.solver is not None:  # the refit's solution is the model scored
            flags += [f"refit: {flag}" for flag in solver_flags(refitted)]
        refit_info = {**fitted.chosen, "n_train": len(final_rows), "budget": fitted.budget}
    scored = evaluate(model, data, test_rows, norm, recipe.batch_size, device, "test", recipe.autocast)
    metrics = compute_metrics(scored.y, scored.pred, data.classes)
    metrics.update(
        {
            "fold": fold.name,
            "seed": seed,
            "best_epoch": fitted.best_epoch,
            "epochs_run": len(fitted.history),
            "budget": fitted.budget,
            "chosen": fitted.chosen,
            "refit": refit_info,
            "modalities": sorted(data.inputs),  # the ones the scored model reads (choose_modalities may drop one)
            "modality_scores": modality_scores,
            "evaluation": opts.evaluation,
            "optimistic": paper,
            "flags": flags,
            "warnings": warnings,
            "train_loss_final": train_ce,
            "protocol": protocol,
            "speaker_independent": fold.speaker_independent,
            "n_train": len(train_rows),
            "n_valid": len(valid_rows),
            "n_test": len(test_rows),
            "seconds": time.monotonic() - t0,  # this fold's own cost, whatever else the run resumed
            "fits_reused": reused,
        }
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "history.json", json.dumps(fitted.history, indent=1))
        write_atomic(out_dir / "predictions.csv", predictions_csv(data, scored, fold.name, seed))
        save_atomic(
            out_dir / "model.pt",
            {
                "state_dict": model.state_dict(),
                "config": dataclasses.asdict(config),
                "recipe": dataclasses.asdict(recipe),
                "classes": data.classes,
                "dims": {m: inp.dim for m, inp in data.inputs.items()},
                "layers": {m: inp.layers for m, inp in data.inputs.items()},
                "modalities": sorted(data.inputs),
                "normalizer": norm.stats,
            },
        )
        # metrics.json last: its presence is what marks the fold finished when a run resumes
        write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    if progress is not None:
        progress.remove_task(task)
    return metrics


PREDICTION_COLUMNS = ("utt_id", "speaker", "fold", "seed", "truth", "prediction")


def predictions_csv(data: CorpusData, scored: Scored, fold: str, seed: int) -> str:
    """One row per test utterance: id, speaker, fold, seed, true class, predicted class, one probability per
    class (``p_<class>``): what error analysis and paired significance tests need."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*PREDICTION_COLUMNS, *(f"p_{c}" for c in data.classes)])
    for row, y, pred, probs in zip(scored.rows, scored.y, scored.pred, scored.probs, strict=True):
        u = data.utts[row]
        w.writerow([u.utt_id, u.speaker, fold, seed, data.classes[y], data.classes[pred],
                    *(f"{p:.6f}" for p in probs)])
    return buf.getvalue()


def gather_predictions(out_dir: Path, runs: Collection[str]) -> None:
    """The run's predictions.csv: its fold x seed runs' (folder names ``runs``; others of a directory rerun with
    fewer seeds stay out), in folds/ order (rewritten whole as folds finish)."""
    parts = sorted(p for p in (out_dir / "folds").glob("*/predictions.csv") if p.parent.name in runs)
    lines: list[str] = []
    for i, part in enumerate(parts):
        text = part.read_text().splitlines()
        lines += text if i == 0 else text[1:]
    if lines:
        write_atomic(out_dir / "predictions.csv", "\n".join(lines) + "\n")


# What a run's results depend on. Seeds are left out (adding seeds resumes a run), and so are where the
# store lives and which device trains: neither changes what is computed.
_RESULT_KEYS = ("head_config", "recipe", "evaluation", "label_set", "classes", "protocol", "inputs", "folds")
_REQUEST_KEYS_IGNORED = ("seeds", "store", "device")


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings (dotted names) that differ between two run configurations, compared on the parts
    present in ``new``; a setting missing on one side counts as changed, except head and recipe fields added
    since ``old`` was written, which take their dataclass defaults (``fill_new_fields``). Where both the head
    config and the recipe are compared, the request's options are compared through them, typed: ``--set
    choose_modalities=true`` (a string) and ``choose_modalities: true`` in a sweep file (a bool) are one setting,
    as is an option given at its default value and the same option left out."""
    new = json.loads(json.dumps(new, default=str))  # compare as stored: tuples become lists
    typed_options = "head_config" in new and "recipe" in new
    head = (old.get("request") or {}).get("head", "")
    old = dict(old)
    old["head_config"], old["recipe"] = fill_new_fields(head, old.get("head_config"), old.get("recipe"))
    changed = []
    for part in ("request", *_RESULT_KEYS):
        if part not in new:
            continue
        a, b = old.get(part), new[part]
        if part == "request":
            ignored = (*_REQUEST_KEYS_IGNORED, "options") if typed_options else _REQUEST_KEYS_IGNORED
            a = {k: v for k, v in (a or {}).items() if k not in ignored}
            b = {k: v for k, v in b.items() if k not in ignored}
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
        elif a != b:
            changed.append(part)
    return changed


_MISSING = object()


def check_run_dir(out_dir: Path, run_config: dict) -> None:
    """A run may write into ``out_dir`` when it is new, or holds results of this same configuration (it resumes);
    otherwise ValueError, before anything in it is touched."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a run directory: give another --out")
    if (out_dir / "zarr.json").exists():
        raise ValueError(f"{out_dir} is a feature store, not a run directory: give another --out")
    config = out_dir / "config.json"
    if config.exists():
        changed = changed_settings(read_json(config, "a run's configuration"), run_config)
        if changed:
            raise ValueError(
                f"{out_dir} holds results of a different configuration ({', '.join(changed)} changed): "
                "give another --out, or delete that directory to rerun it"
            )


def run_folds(
    spec: HeadSpec,
    config: Any,
    recipe: Recipe,
    data: CorpusData,
    folds: list[Fold],
    seeds: list[int],
    opts: LoopOptions,
    out_dir: Path,
    run_config: dict,
    console: Console | None = None,
    only: Collection[tuple[int, str]] | None = None,
) -> dict | None:
    """Every fold × seed; finished ones (metrics.json present) are reused, so a run resumes — but only
    when the directory's results come from the same configuration. ``only`` (seed, fold name) pairs: train
    just those, a share of the run that other processes train the rest of (`train sweep --scheduler`); nothing
    is summarised then, and None is returned."""
    protocol = run_config.get("protocol", "")
    console = console or Console(stderr=True)
    check_run_dir(out_dir, run_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "config.json", json.dumps(run_config, indent=1, default=str))
    results = []
    t0 = time.monotonic()
    cols = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*cols, console=console) as progress:
        overall = progress.add_task("folds x seeds", total=len(folds) * len(seeds) if only is None else len(only),
                                    status="")
        for seed in seeds:
            for fold in folds:
                cell = out_dir / "folds" / f"{fold.name}_seed{seed}"
                if only is not None:
                    if (seed, fold.name) in only and not (cell / "metrics.json").exists():
                        r = train_fold(spec, config, recipe, data, fold, seed, opts, protocol, cell, progress)
                        progress.update(overall, advance=1, status=f"{fold.name}: UA {r['ua']:.3f}")
                    continue
                if (cell / "metrics.json").exists():
                    results.append(read_fold_metrics(cell / "metrics.json"))
                else:
                    results.append(train_fold(spec, config, recipe, data, fold, seed, opts, protocol, cell, progress))
                r = results[-1]
                progress.update(overall, advance=1, status=f"last {fold.name}: WA {r['wa']:.3f} UA {r['ua']:.3f}")
    if only is not None:
        return None
    summary = build_summary(results)
    summary["seconds"] = time.monotonic() - t0
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    gather_predictions(out_dir, {f"{fold.name}_seed{seed}" for seed in seeds for fold in folds})
    return summary
