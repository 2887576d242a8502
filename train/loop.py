"""The training loop: one head, one fold, one seed — then every fold × seed of a run.

Model selection and early stopping look only at the validation split; the test split is scored
once, with the best validation checkpoint. Features stay in memory across folds and seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from train.data import CorpusData
from train.heads import HeadSpec
from train.metrics import compute_metrics
from train.protocols import Fold
from train.report import build_summary


@dataclasses.dataclass
class LoopOptions:
    patience: int = 20  # epochs without a better validation UA before stopping
    device: str = "auto"
    select_on: str = "ua"  # validation metric that picks the checkpoint
    max_epochs: int | None = None  # caps the head's own epochs (quick runs)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def predict(
    model: torch.nn.Module, data: CorpusData, rows: list[int], batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, predictions, mean loss) over the labelled utterances in ``rows``."""
    model.eval()
    ys, ps, losses, counts = [], [], 0.0, 0
    with torch.no_grad():
        for batch in data.batches(rows, batch_size, shuffle=False):
            batch = _to_device(batch, device)
            out = model(batch)
            labels = batch["labels"]
            keep = labels >= 0
            losses += model.loss(out, batch).item() * int(keep.sum())
            counts += int(keep.sum())
            ys.append(labels[keep].cpu().numpy())
            ps.append(out["logits"].argmax(-1)[keep].cpu().numpy())
    return np.concatenate(ys), np.concatenate(ps), losses / max(counts, 1)


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a run killed mid-write (or a parallel reader) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def train_fold(
    spec: HeadSpec,
    config: Any,
    data: CorpusData,
    fold: Fold,
    seed: int,
    opts: LoopOptions,
    protocol: str = "",
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train on fold.train, select on fold.valid, score fold.test; write metrics, history, checkpoint."""
    t0 = time.monotonic()
    gen = seed_everything(seed)
    device = pick_device(opts.device)
    train_rows, valid_rows, test_rows = (data.labelled(ids) for ids in (fold.train, fold.valid, fold.test))
    if not train_rows or not valid_rows or not test_rows:
        raise ValueError(
            f"fold {fold.name}: empty split (train {len(train_rows)}, valid {len(valid_rows)}, "
            f"test {len(test_rows)}) — are the features extracted for every utterance?"
        )
    data.fit_normalizer(train_rows)
    dims = {m: inp.dim for m, inp in data.inputs.items()}
    layers = {m: inp.layers for m, inp in data.inputs.items()}
    model = spec.build(config, dims, layers, data.n_classes, sorted(data.inputs)).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epochs = min(config.epochs, opts.max_epochs) if opts.max_epochs else config.epochs
    history: list[dict] = []
    best = (-1.0, -1)
    best_state = copy.deepcopy(model.state_dict())
    task = progress.add_task(f"{fold.name} seed {seed}", total=epochs, status="") if progress else None
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for batch in data.batches(train_rows, config.batch_size, shuffle=True, generator=gen, epoch=epoch):
            batch = _to_device(batch, device)
            loss = model.loss(model(batch), batch)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += loss.item()
            n += 1
        y, p, vloss = predict(model, data, valid_rows, config.batch_size, device)
        m = compute_metrics(y, p, data.classes)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(n, 1),
                "valid_loss": vloss,
                "valid_wa": m["wa"],
                "valid_ua": m["ua"],
                "valid_macro_f1": m["macro_f1"],
            }
        )
        if m[opts.select_on] > best[0]:
            best = (m[opts.select_on], epoch)
            best_state = copy.deepcopy(model.state_dict())
        if progress is not None:
            progress.update(
                task,
                advance=1,
                status=f"valid {opts.select_on.upper()} {m[opts.select_on]:.3f} (best {best[0]:.3f} @ {best[1]})",
            )
        if epoch - best[1] >= opts.patience:
            break
    model.load_state_dict(best_state)
    y, p, _ = predict(model, data, test_rows, config.batch_size, device)
    metrics = compute_metrics(y, p, data.classes)
    metrics.update(
        {
            "fold": fold.name,
            "seed": seed,
            "best_epoch": best[1],
            "epochs_run": len(history),
            "protocol": protocol,
            "speaker_independent": fold.speaker_independent,
            "n_train": len(train_rows),
            "n_valid": len(valid_rows),
            "n_test": len(test_rows),
            "seconds": time.monotonic() - t0,  # this fold's own cost, whatever else the run resumed
        }
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "history.json", json.dumps(history, indent=1))
        torch.save(
            {
                "state_dict": best_state,
                "config": dataclasses.asdict(config),
                "classes": data.classes,
                "dims": dims,
                "layers": layers,
                "modalities": sorted(data.inputs),
                "normalizer": {m: (inp.mean, inp.std) for m, inp in data.inputs.items()},
            },
            out_dir / "model.pt.tmp",
        )
        (out_dir / "model.pt.tmp").replace(out_dir / "model.pt")
        # metrics.json last: its presence is what marks the fold finished when a run resumes
        write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    if progress is not None:
        progress.remove_task(task)
    return metrics


# What a run's results depend on. Seeds are left out (adding seeds resumes a run), and so are where the
# store lives and which device trains: neither changes what is computed.
_RESULT_KEYS = ("head_config", "label_set", "classes", "protocol", "inputs", "folds")
_REQUEST_KEYS_IGNORED = ("seeds", "store", "device")


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings (dotted names) that differ between two run configurations, compared on the parts
    present in ``new``; a setting missing on one side counts as changed."""
    new = json.loads(json.dumps(new, default=str))  # compare as stored: tuples become lists
    changed = []
    for part in ("request", *_RESULT_KEYS):
        if part not in new:
            continue
        a, b = old.get(part), new[part]
        if part == "request":
            a = {k: v for k, v in (a or {}).items() if k not in _REQUEST_KEYS_IGNORED}
            b = {k: v for k, v in b.items() if k not in _REQUEST_KEYS_IGNORED}
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
        elif a != b:
            changed.append(part)
    return changed


_MISSING = object()


def run_folds(
    spec: HeadSpec,
    config: Any,
    data: CorpusData,
    folds: list[Fold],
    seeds: list[int],
    opts: LoopOptions,
    out_dir: Path,
    run_config: dict,
    console: Console | None = None,
) -> dict:
    """Every fold × seed; finished ones (metrics.json present) are reused, so a run resumes — but only
    when the directory's results come from the same configuration."""
    protocol = run_config.get("protocol", "")
    console = console or Console(stderr=True)
    if (out_dir / "config.json").exists():
        changed = changed_settings(json.loads((out_dir / "config.json").read_text()), run_config)
        if changed:
            raise ValueError(
                f"{out_dir} holds results of a different configuration ({', '.join(changed)} changed): "
                "give another --out, or delete that directory to rerun it"
            )
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
        overall = progress.add_task("folds x seeds", total=len(folds) * len(seeds), status="")
        for seed in seeds:
            for fold in folds:
                cell = out_dir / "folds" / f"{fold.name}_seed{seed}"
                if (cell / "metrics.json").exists():
                    results.append(json.loads((cell / "metrics.json").read_text()))
                else:
                    results.append(train_fold(spec, config, data, fold, seed, opts, protocol, cell, progress))
                r = results[-1]
                progress.update(overall, advance=1, status=f"last {fold.name}: WA {r['wa']:.3f} UA {r['ua']:.3f}")
    summary = build_summary(results)
    summary["seconds"] = time.monotonic() - t0
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
