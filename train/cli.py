"""`train`: train heads from the feature store only — runs, sweeps and reports."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from train.data import CorpusData
    from train.protocols import Fold
    from train.recipe import Recipe

from featurize import DEFAULT_STORE
from featurize.cli_support import common_options, friendly, run_app, set_help

# torch, zarr and the heads are imported inside the commands: `train --help` must not wait for them.
app = typer.Typer(help="Train emotion heads from cached features.", no_args_is_help=True, rich_markup_mode=None)
common_options(app, "train")
console = Console(stderr=True)
PROTOCOL_HELP = (
    "loso | holdout (= iemo-text; the official split when the corpus has one) | rav4 | rav8 | "
    "speaker-kfold | stratified, utterance-kfold (not speaker-independent)"
)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--set wants key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            a, b = text.split("-")
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        seeds = []
    if not seeds:
        raise typer.BadParameter(f"--seeds wants integers like 0,1,2 or a range 0-2, got {text!r}")
    return seeds


def seeds_given(value: object, where: str) -> object:
    """Seeds as a run file or a sweep gives them: a list, or a string as --seeds takes (0,1,2 or 0-2)."""
    if not isinstance(value, str):
        return value
    try:
        return parse_seeds(value)
    except typer.BadParameter:
        raise ValueError(f"{where}: `seeds` wants whole numbers like [0, 1, 2] or a range \"0-2\", got {value!r}") \
            from None


def default_label_set(protocol: str, labels: str | None) -> str | None:
    """The RAVDESS protocols ``rav4`` / ``rav8`` are also their label sets; any other protocol trains the label
    set given (None: the corpus's default, which the run's banner names)."""
    if protocol in ("rav4", "rav8"):
        if labels not in (None, protocol):
            raise ValueError(f"--protocol {protocol} uses the {protocol} label set; --labels {labels} contradicts "
                             f"it (RAVDESS: --protocol rav4 or rav8, or another protocol with --labels)")
        return protocol
    return labels


@dataclasses.dataclass
class RunRequest:
    head: str
    features: list[str]
    corpus: str
    protocol: str
    store: str = DEFAULT_STORE
    labels: str | None = None
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    options: dict = dataclasses.field(default_factory=dict)
    modality: str | None = None
    device: str = "auto"
    max_epochs: int | None = None
    protocol_options: dict = dataclasses.field(default_factory=dict)
    evaluation: str = "honest"  # honest | paper (optimistic: checkpoint chosen on the test fold)

    def check(self, where: str) -> RunRequest:
        """Each setting of the type it must be (a run file or a sweep gives YAML's own types, which nothing
        else checks before they are used): ValueError naming ``where`` and the setting otherwise."""
        def bad(key: str, wanted: str) -> ValueError:
            return ValueError(f"{where}: `{key}` must be {wanted}, got {getattr(self, key)!r}")

        for key in ("head", "corpus", "protocol", "store", "device", "evaluation"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "a name")
        for key in ("labels", "modality"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise bad(key, "a name")
        if not isinstance(self.features, list) or not self.features or \
                not all(isinstance(f, str) and f for f in self.features):
            raise bad("features", "a list of feature names, e.g. [fbank, minilm]")
        if not isinstance(self.seeds, list) or not self.seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise bad("seeds", "a non-empty list of whole numbers, e.g. [0, 1, 2]")
        if self.max_epochs is not None and (not isinstance(self.max_epochs, int) or isinstance(self.max_epochs, bool)
                                            or self.max_epochs < 1):
            raise bad("max_epochs", "a whole number of epochs, at least 1")
        for key in ("options", "protocol_options"):
            if not isinstance(getattr(self, key), dict):
                raise bad(key, "a mapping of option: value")
        return self


def native_bfloat16(device: str) -> bool:
    """Whether bfloat16 runs natively where this run trains (a GPU, or a CPU with AVX-512 BF16 or AMX)."""
    import torch

    from train.loop import pick_device

    if pick_device(device).type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the oneDNN check: assume the slow path
        return False


def execute(req: RunRequest, out: Path, data: CorpusData | None = None, report: bool = True,
            only: Collection[tuple[int, str]] | None = None, announce: bool = True,
            shared_fits: Path | None = None) -> dict | None:
    """Load (unless given), split, train every fold × seed, write the run directory and its report. ``only``:
    just those (seed, fold name) runs, a worker's share of a sweep cell (no summary or report; None).
    ``announce``: print what the run is (its data, inputs and warnings); a sweep on a cluster prints it once per
    cell, from the task that plans the cell's runs, not once per run. ``shared_fits``: the folder of fits the
    cells of a sweep share (train/shared_fits.py)."""
    from featurize.store import FeatureStore
    from train.data import load_data
    from train.files import write_atomic
    from train.heads import get_head, make_config, make_recipe
    from train.loop import EVALUATIONS, LoopOptions, check_run_dir, pick_device, run_folds
    from train.protocols import PROTOCOLS, make_folds

    if req.protocol not in PROTOCOLS:  # before any feature is loaded
        raise ValueError(f"unknown protocol {req.protocol!r}; known: {', '.join(PROTOCOLS)}")
    pick_device(req.device)  # so is the device
    spec = get_head(req.head)
    config = make_config(spec, req.options)
    recipe = make_recipe(spec, req.options)
    if req.evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation must be one of {', '.join(EVALUATIONS)}, got {req.evaluation!r}")
    modalities = [req.modality] if req.modality else None
    if data is None:
        store = FeatureStore(req.store, create=False)
        data = load_data(store, req.corpus, req.features, spec, default_label_set(req.protocol, req.labels), modalities,
                         by_speaker=recipe.normalize == "speaker")
    folds = make_folds(req.protocol, data.utts, seed=0, **req.protocol_options)
    if spec.dialogue:
        check_dialogues_whole(req, data, folds)
    if announce:
        announce_run(req, data, folds, recipe)
    run_config = {
        "request": dataclasses.asdict(req),
        "head_config": dataclasses.asdict(config),
        "recipe": dataclasses.asdict(recipe),
        "evaluation": req.evaluation,
        "label_set": data.label_set,
        "classes": data.classes,
        "protocol": req.protocol,
        "inputs": {
            m: {"feature": i.feature, "array": i.array, "tail": list(i.tail), "form": i.form}
            for m, i in data.inputs.items()
        },
        "folds": [
            {"name": f.name, "n_train": len(f.train), "n_valid": len(f.valid), "n_test": len(f.test)} for f in folds
        ],
        "fold_speakers": fold_speakers(data, folds),
        "provenance": provenance(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    check_run_dir(out, run_config)  # before run.yaml: a refused rerun leaves the directory as it was
    out.mkdir(parents=True, exist_ok=True)
    # the fold tasks of one cell each write it (the same text): whole or not at all
    write_atomic(out / "run.yaml", run_yaml(req))
    opts = LoopOptions(device=req.device, max_epochs=req.max_epochs, evaluation=req.evaluation,
                       shared_fits=shared_fits)
    summary = run_folds(spec, config, recipe, data, folds, req.seeds, opts, out, run_config, console, only)
    if report and summary is not None:
        from train.report import write_run_report

        write_run_report(out)
    return summary


def check_dialogues_whole(req: RunRequest, data: CorpusData, folds: list[Fold]) -> None:
    """A dialogue head on a speaker-independent protocol must not find a test utterance in a training dialogue
    (it would read test speakers' features as context): refused, naming the dialogues. Protocols over utterances
    say they are not speaker-independent, and let it happen."""
    from train.protocols import split_dialogues

    for fold in folds:
        split = split_dialogues(fold, data.utts)
        if split and fold.speaker_independent:
            raise ValueError(
                f"head {req.head} reads whole dialogues, and protocol {req.protocol} puts test and training "
                f"utterances in the same dialogue ({len(split)} in fold {fold.name}, e.g. {', '.join(split[:3])}): "
                "its training would read test speakers' features. Use a protocol that keeps dialogues whole "
                "(loso, holdout)")


def announce_run(req: RunRequest, data: CorpusData, folds: list[Fold], recipe: Recipe) -> None:
    """What a run trains, and its warnings, on the console: printed once before its folds train."""
    from train.loop import EVALUATIONS

    if not all(f.speaker_independent for f in folds):
        console.print(f"[yellow]warning[/]: protocol {req.protocol} is not speaker-independent")
    if recipe.autocast == "bfloat16" and not native_bfloat16(req.device):
        console.print("[yellow]warning[/]: autocast bfloat16 on a CPU without native bfloat16 (AVX-512 BF16 / AMX) "
                      "is emulated, slower than float32: set autocast=none")
    if recipe.normalize == "speaker":
        console.print("normalize=speaker: each speaker's inputs standardised on all of that speaker's utterances "
                      "(features only, test speakers included): speaker-independent but transductive")
    if req.evaluation == "paper":
        console.print(f"[bold yellow]paper evaluation[/]: {EVALUATIONS['paper']}; never compare with honest figures")
    dropped = ", ".join(f"{n} {why}" for why, n in data.dropped.items() if n)
    chosen = "" if default_label_set(req.protocol, req.labels) else " (the corpus's default label set: --labels)"
    console.print(
        f"{req.head} on {req.corpus} ({data.label_set}{chosen}: {', '.join(data.classes)}), "
        f"{len(data.utts)} utterances{f' ({dropped} dropped)' if dropped else ''}, "
        f"inputs: {', '.join(f'{m}={i.feature}:{i.array} {tuple(i.tail)}' for m, i in data.inputs.items())}, "
        f"{len(folds)} folds x {len(req.seeds)} seeds"
    )


def fold_speakers(data: CorpusData, folds: list) -> dict[str, dict[str, list[str]]]:
    """Each fold's test and validation speakers (and how many train), by name."""
    speaker = {u.utt_id: u.speaker for u in data.utts}
    return {f.name: {"test": sorted({speaker[u] for u in f.test if u in speaker}),
                     "valid": sorted({speaker[u] for u in f.valid if u in speaker}),
                     "n_train_speakers": len({speaker[u] for u in f.train if u in speaker})} for f in folds}


def provenance() -> dict:
    """What made the run: sercache's version and commit, the packages that compute, the machine, the command."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    from featurize.cli_support import sercache_version

    packages = {}
    for name in ("torch", "numpy", "scipy", "scikit-learn", "zarr", "transformers", "opensmile", "soundfile"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here).stdout.strip() or None
        # the code that computes, changed since that commit: the run did not train on the commit alone
        status = subprocess.run(["git", "status", "--porcelain", "--", "train", "featurize"], capture_output=True,
                                text=True, timeout=5, cwd=here.parent).stdout
        changed = sorted(line[3:] for line in status.splitlines() if line[3:].endswith(".py"))
    except (OSError, subprocess.SubprocessError):
        commit, changed = None, []
    return {"sercache": sercache_version(), "git_commit": commit, "git_changed": changed,
            "python": platform.python_version(),
            "packages": packages, "machine": f"{platform.node()}: {platform.platform()}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


RUN_KEYS = ("head", "features", "corpus", "protocol", "store", "labels", "seeds", "options", "modality",
            "device", "max_epochs", "protocol_options", "evaluation")


def run_yaml(req: RunRequest) -> str:
    """A `train run --config` file that reproduces this run."""
    body = {k: getattr(req, k) for k in RUN_KEYS}
    return ("# train run --config this-file reproduces the run (command-line options override its values)\n"
            + yaml.safe_dump(json.loads(json.dumps(body, default=str)), sort_keys=False))


def print_summary(title: str, summary: dict) -> None:
    if summary.get("optimistic"):
        title += " — PAPER EVALUATION (checkpoint chosen on the test fold: optimistic)"
    table = Table("fold", "seed", "WA", "UA", "macro-F1", "best epoch", "flags", title=title)
    for r in summary["per_fold"]:
        best = "" if r.get("best_epoch", -1) < 0 else f"{r['best_epoch']} of {r.get('budget')}"
        table.add_row(
            str(r["fold"]),
            str(r["seed"]),
            f"{r['wa']:.4f}",
            f"{r['ua']:.4f}",
            f"{r['macro_f1']:.4f}",
            best,
            "; ".join(r.get("flags") or []),
        )
    cells = [f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in ("wa", "ua", "macro_f1")]
    table.add_row("mean ± std", "", *cells, "", f"{summary.get('flagged', 0)} runs flagged")
    wide_console().print(table)
    if summary.get("modalities_chosen"):
        from train.report import modalities_chosen_text

        print(modalities_chosen_text(summary["modalities_chosen"], len(summary["per_fold"])))


@app.command()
@friendly
def run(
    config: Path = typer.Option(None, help="a run.yaml (every run directory has one): its settings, overridden "
                                "by the options given here; `train run --config runs/X/run.yaml` reruns X"),
    head: str = typer.Option(None, help="head name (an unknown name lists the heads there are)"),
    feature: str = typer.Option(None, help="feature(s), comma-separated: NAME[:ARRAY][@LAYERS], one per modality"),
    corpus: str = typer.Option(None, help="corpus name in the store (iemocap, ravdess, iemocap-text, ...)"),
    protocol: str = typer.Option(None, help=PROTOCOL_HELP),
    store: str = typer.Option(None, help=f"the feature store: a directory or an fsspec URL [default: {DEFAULT_STORE}]"),
    out: Path = typer.Option(None, help="run directory (default runs/<head>-<corpus>-<protocol>-<time>)"),
    labels: str = typer.Option(None, help="label set (iemocap: 4class|5class|6class; ravdess: rav4|rav8)"),
    seeds: str = typer.Option(None, help="seeds, e.g. 0,1,2 or 0-2 [default: 0]"),
    set_: list[str] = typer.Option(
        [], "--set", help="head or recipe option key=value (repeatable), e.g. --set fusion_at=late --set lr=1e-3"
    ),
    recipe: Path = typer.Option(None, help="YAML file of head / recipe options (what --set takes; --set wins)"),
    evaluation: str = typer.Option(None, help="honest | paper (OPTIMISTIC: the authors' code's checkpoint "
                                   "choice on the test fold; stamped on every output) [default: honest]"),
    modality: str = typer.Option(None, help="audio | text: the unimodal variant"),
    device: str = typer.Option(None, help="auto | cpu | cuda [default: auto]"),
    max_epochs: int = typer.Option(None, help="cap the recipe's epochs (quick runs)"),
    folds: int = typer.Option(None, help="speaker-kfold, utterance-kfold: the number of folds [default: 5]"),
) -> None:
    """Train a head over every fold × seed of a protocol and print the per-fold table."""
    base = read_yaml_mapping(config, "a run file") if config else {}
    unknown = sorted(set(base) - set(RUN_KEYS))
    if unknown:
        raise typer.BadParameter(f"{config}: unknown setting(s) {', '.join(unknown)}; a run file takes "
                                 f"{', '.join(RUN_KEYS)}")
    options = {**(base.get("options") or {}), **(read_yaml_mapping(recipe, "a recipe file") if recipe else {}),
               **parse_sets(set_)}
    given = {"head": head, "corpus": corpus, "protocol": protocol, "labels": labels, "modality": modality,
             "device": device, "max_epochs": max_epochs, "evaluation": evaluation,
             "store": str(store) if store else None,
             "features": split_features(feature) if feature else None,
             "seeds": parse_seeds(seeds) if seeds else None}
    settings = {**base, **{k: v for k, v in given.items() if v is not None}, "options": options}
    if isinstance(settings.get("features"), str):
        settings["features"] = split_features(settings["features"])
    where = str(config) if config else "train run"
    if "seeds" in settings:
        settings["seeds"] = seeds_given(settings["seeds"], where)
    if folds is not None:
        if settings.get("protocol") not in ("speaker-kfold", "utterance-kfold"):
            raise typer.BadParameter("--folds sets the fold count of --protocol speaker-kfold or utterance-kfold only")
        settings["protocol_options"] = {**(settings.get("protocol_options") or {}), "k": folds}
    missing = [f"--{k.rstrip('s') if k == 'features' else k}" for k in ("head", "features", "corpus", "protocol")
               if not settings.get(k)]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (give them, or a --config run file)")
    req = RunRequest(**{"store": DEFAULT_STORE, **settings}).check(where)
    out = out or Path("runs") / f"{req.head}-{req.corpus}-{req.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = execute(req, out)
    print_summary(f"{req.head} on {req.corpus} / {req.protocol}", summary)
    console.print(f"run written to {out} (report: {out / 'report.md'}; rerun: train run --config {out / 'run.yaml'})")


def split_features(text: str) -> list[str]:
    """``--feature`` at its commas, except those of a layer list: ``hubert@9,12,minilm`` is ``hubert@9,12`` and
    ``minilm`` (a piece of digits and ranges after a ``NAME@LAYERS`` continues its layers)."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if out and "@" in out[-1] and re.fullmatch(r"\d+(-\d+)?", piece):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def read_yaml_mapping(path: Path, what: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not {what}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: {what} that is not YAML ({getattr(e, 'problem', None) or e}{where})") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: {what} is a mapping of setting: value")
    return data


# What a sweep file's top level and each of its grid entries may set (an entry's settings override the top level's)
SWEEP_KEYS = {f.name for f in dataclasses.fields(RunRequest)} | {"name"}
SWEEP_REQUIRED = ("head", "features", "corpus", "protocol")
CELL_NAME = re.compile(r"[^/\\.\x00-\x1f][^/\\\x00-\x1f]*")  # a directory name: no separator, no leading dot


def check_sweep(sweep: dict, where: str = "sweep file") -> None:
    """One clear error for a sweep file that cannot be expanded: no grid, an entry that is not a mapping, an
    unknown key, a setting no entry or default gives."""
    grid = sweep.get("grid")
    if not isinstance(grid, list) or not grid:
        raise ValueError(f"{where}: `grid` must be a list of cells, each a mapping with at least "
                         f"{', '.join(SWEEP_REQUIRED)} (or those as top-level defaults)")
    unknown = sorted(set(sweep) - SWEEP_KEYS - {"grid"})
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; keys: grid, "
                         f"{', '.join(sorted(SWEEP_KEYS))}")
    for key in ("options", "protocol_options"):
        if not isinstance(sweep.get(key) or {}, dict):
            raise ValueError(f"{where}: top-level `{key}` must be a mapping of option: value")
    for i, entry in enumerate(grid, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: grid entry {i} is {entry!r}, not a mapping of settings (head: ..., ...)")
        unknown = sorted(set(entry) - SWEEP_KEYS)
        if unknown:
            raise ValueError(f"{where}: grid entry {i} ({entry.get('name') or entry.get('head')}): unknown key(s) "
                             f"{', '.join(unknown)}; keys: {', '.join(sorted(SWEEP_KEYS))} (head and recipe "
                             "options go under `options:`)")
        missing = [k for k in SWEEP_REQUIRED if k not in entry and k not in sweep]
        if missing:
            raise ValueError(f"{where}: grid entry {i} ({entry.get('name') or entry.get('head')}) gives no "
                             f"{', '.join(missing)}, and the file has no default for it")
        for key in ("options", "protocol_options"):
            if not isinstance(entry.get(key) or {}, dict):
                raise ValueError(f"{where}: grid entry {i}: `{key}` must be a mapping of option: value")


def expand_grid(sweep: dict, where: str = "sweep file") -> list[tuple[str, RunRequest]]:
    """Cells of a sweep file: each entry of ``grid`` is a head with lists of options; every
    combination is a cell. Top-level keys are the defaults of every cell."""
    check_sweep(sweep, where)
    base = {k: v for k, v in sweep.items() if k not in ("grid", "name")}
    cells = []
    for entry in sweep["grid"]:
        entry = {**base, **entry}
        options = {**(base.get("options") or {}), **(entry.pop("options", None) or {})}
        keys = list(options)  # the sweep file's order names the cells (e.g. position-method-loss)
        empty = [k for k in keys if options[k] == []]
        if empty:
            raise ValueError(f"{where}: grid entry {entry.get('name') or entry.get('head')}: option(s) "
                             f"{', '.join(empty)} list no values, so the entry would give no cell")
        for values in itertools.product(*[options[k] if isinstance(options[k], list) else [options[k]] for k in keys]):
            opts = dict(zip(keys, values, strict=True))
            # A cell is named by its entry's `name` (default: the head), the values of its swept
            # options and its modality, e.g. dialog-logits-add-perspective or cme-audio.
            swept = [f"{v}" for k, v in zip(keys, values, strict=True) if isinstance(options[k], list)]
            name = "-".join(
                [str(entry.get("name", entry["head"]))] + swept + ([entry["modality"]] if entry.get("modality") else [])
                + (["paper"] if entry.get("evaluation") == "paper" else [])
            )
            feats = entry["features"]
            req = RunRequest(
                head=entry["head"],
                features=split_features(feats) if isinstance(feats, str) else feats,
                corpus=entry["corpus"],
                protocol=entry["protocol"],
                store=entry.get("store", DEFAULT_STORE),
                labels=entry.get("labels"),
                seeds=seeds_given(entry.get("seeds", [0]), f"{where}: cell {name}"),
                options=opts,
                modality=entry.get("modality"),
                device=entry.get("device", "auto"),
                max_epochs=entry.get("max_epochs"),
                protocol_options=entry.get("protocol_options", {}),
                evaluation=entry.get("evaluation", "honest"),
            )
            req.check(f"{where}: cell {name}")
            if not CELL_NAME.fullmatch(name):
                raise ValueError(f"{where}: cell name {name!r} names the cell's directory under the sweep's: it "
                                 "must not hold a / or \\ nor start with a dot")
            cells.append((name, req))
    names = [n for n, _ in cells]
    if len(set(names)) != len(names):
        raise ValueError("two sweep cells have the same name: give them different options or modality")
    return cells


@app.command()
@friendly
def sweep(
    config: Path = typer.Argument(..., help="sweep YAML: defaults + grid of heads x options"),
    out: Path = typer.Option(None, help="sweep directory (default runs/sweep-<config stem>)"),
    store: str = typer.Option(None, help="override the sweep file's store (a directory or an fsspec URL)"),
    keep_going: bool = typer.Option(False, help="report a failing cell and go on with the others"),
    only: str = typer.Option(None, "--cells", help="run only these cells (comma-separated names)"),
    threads: int = typer.Option(None, min=1, help="torch CPU threads (default: torch's, one per core)"),
    write_report: bool = typer.Option(True, "--report/--no-report", help="write the sweep report at the end"),
    scheduler: str = typer.Option(None, help="train the cells' fold x seed runs on a dask.distributed cluster: "
                                  "local:N or tcp://HOST:PORT (workers share this file system; one torch thread each)"),
) -> None:
    """Run a grid of heads × options × seeds × folds; finished cells are not rerun. Prints the grid table."""
    spec = read_yaml_mapping(config, "a sweep file")
    if store is not None:
        spec["store"] = str(store)
    cells = expand_grid(spec, str(config))
    out = out or Path("runs") / f"sweep-{config.stem}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a sweep directory: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    # sweep.json always lists the whole grid, so a partial run shows its other cells as not finished
    (out / "sweep.json").write_text(json.dumps({"config": spec, "cells": [n for n, _ in cells]}, indent=1))
    todo = select_cells(cells, only)
    if threads:
        import torch

        torch.set_num_threads(threads)
    console.print(f"sweep {config}: {len(todo)} of {len(cells)} cells -> {out}")
    if scheduler:
        from featurize.cluster import check_scheduler

        check_scheduler(scheduler)
    cache: dict[tuple, CorpusData] = {}
    failed = []
    pending = []
    for i, (name, req) in enumerate(todo, 1):
        cell_dir = out / "cells" / name
        if (cell_dir / "summary.json").exists() and cell_is_current(cell_dir, req):
            console.print(f"[{i}/{len(todo)}] {name}: done already")
            continue
        if scheduler:
            pending.append((name, req, cell_dir))
            continue
        console.print(f"[{i}/{len(todo)}] {name}")
        try:
            run_cell(req, cell_dir, cache)
        except Exception as e:
            if not keep_going:
                raise
            failed.append(name)
            console.print(f"[red]cell {name} failed[/]: {type(e).__name__}: {e}")
    if pending:
        failed += run_cells_on_cluster(scheduler, pending, keep_going)
    done = [n for n, _ in cells if (out / "cells" / n / "summary.json").exists()]
    if len(done) == len(cells):  # every cell is finished: no cell will ask for the fits they shared
        shutil.rmtree(out / "fits", ignore_errors=True)
    print_grid(out, done)
    if write_report:
        from train.report import write_sweep_report

        console.print(f"sweep report: {write_sweep_report(out)}")
    if failed:
        console.print(f"[red]{len(failed)} cells failed[/]: {', '.join(failed)}")


def select_cells(cells: list[tuple[str, RunRequest]], only: str | None) -> list[tuple[str, RunRequest]]:
    """The cells named in ``only`` (comma-separated), in the sweep file's order; all when None."""
    if only is None:
        return cells
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    known = [n for n, _ in cells]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise typer.BadParameter(f"no cell named {', '.join(unknown)} in this sweep; its cells: {', '.join(known)}")
    return [(n, r) for n, r in cells if n in wanted]


def cell_is_current(cell_dir: Path, req: RunRequest) -> bool:
    """Whether a finished sweep cell was run as the sweep file now asks. New seeds mean it is not finished
    (the run resumes and adds them); any other change is an error, never a silently reused result."""
    from train.heads import get_head, make_config, make_recipe
    from train.loop import changed_settings
    from train.report import read_json

    old = read_json(cell_dir / "config.json", "a sweep cell's configuration")
    spec = get_head(req.head)
    new = {"request": dataclasses.asdict(req), "head_config": dataclasses.asdict(make_config(spec, req.options)),
           "recipe": dataclasses.asdict(make_recipe(spec, req.options))}
    changed = changed_settings(old, new)
    if changed:
        raise ValueError(
            f"sweep cell {cell_dir} was run with another configuration ({', '.join(changed)} changed): "
            "delete that cell's directory to rerun it, or give the sweep another --out"
        )
    return old["request"]["seeds"] == req.seeds and summary_covers(cell_dir, old, req.seeds)


def summary_covers(run_dir: Path, run_config: dict, seeds: list[int]) -> bool:
    """Whether the run's summary.json is of every fold x ``seeds`` run: a run adding seeds rewrites config.json
    before it trains, so a kill then leaves the old seeds' summary beside the new seeds' config."""
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    done = {(str(r["fold"]), int(r["seed"])) for r in json.loads(path.read_text()).get("per_fold", [])}
    return done == {(f["name"], int(s)) for f in run_config.get("folds", []) for s in seeds}


def run_cells_on_cluster(scheduler: str, cells: list[tuple[str, RunRequest, Path]], keep_going: bool) -> list[str]:
    """Every fold × seed of the cells a task on the cluster's workers, the cells in the sweep file's order, so
    that a grid of few long cells still keeps every worker busy; a fold writes its run directory as it would
    here, so resuming and the reports are the same. A cell's summary and report are written as soon as its last
    run is in. Returns the failed cells."""
    from featurize.cluster import connect, one_per_worker

    # the tasks live in a module of their own: `python -m train.cli` is __main__, which does not pickle by reference
    from train.sweep_task import cell_task, fold_task, plan_task

    client = connect(scheduler)
    failed: list[str] = []
    finishing: dict = {}  # cell -> the future of its summary-and-report task

    def each_done(fn, tasks: list[tuple[str, tuple]], what: str):
        for name, future in one_per_worker(client, fn, tasks, key_prefix=f"sweep-{what}"):
            try:
                yield name, future.result()
            except Exception as e:
                if not keep_going:
                    raise
                cell = name.split("/")[0]
                if cell not in failed:
                    failed.append(cell)
                console.print(f"[red]cell {cell} failed[/] ({what} {name}): {type(e).__name__}: {e}")

    def finish(cell: str) -> None:  # every run of the cell is found finished: a short task
        finishing[cell] = client.submit(cell_task, *requests[cell], key=f"sweep-cell-{cell}-{time.time_ns()}",
                                        pure=False)

    def wait_finishing() -> Exception | None:
        first = None
        for cell, future in finishing.items():
            try:
                future.result()
                console.print(f"{cell}: done")
            except Exception as e:
                first = first or e
                if cell not in failed:
                    failed.append(cell)
                console.print(f"[red]cell {cell} failed[/] (summary): {type(e).__name__}: {e}")
        finishing.clear()
        return first

    try:
        console.print(f"{len(cells)} cells on {scheduler} "
                      f"({len(client.scheduler_info(n_workers=-1)['workers'])} workers)")
        requests = {name: (dataclasses.asdict(req), str(cell_dir)) for name, req, cell_dir in cells}
        try:
            # 1. each cell's runs still to train (a worker loads the cell's data to make its folds)
            todo = dict(each_done(plan_task, list(requests.items()), "plan"))
            left = {cell: len(runs) for cell, runs in todo.items()}
            for cell in [c for c, n in left.items() if n == 0]:
                finish(cell)
            # 2. those runs, one task each; a cell whose last run is in is summarised at once
            runs = [(f"{cell}/{fold}_seed{seed}", (*requests[cell], seed, fold))
                    for cell in requests if cell in todo for seed, fold in todo[cell]]
            console.print(f"{len(runs)} fold x seed runs to train")
            for name, _ in each_done(fold_task, runs, "fold"):
                cell = name.split("/")[0]
                left[cell] -= 1
                if left[cell] == 0 and cell not in failed:
                    finish(cell)
        except BaseException:
            wait_finishing()  # the cells whose runs all trained still get their summary and report
            raise
        error = wait_finishing()
        if error is not None and not keep_going:
            raise error
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
    return failed


def run_cell(req: RunRequest, cell_dir: Path, cache: dict[tuple, CorpusData],
             only: Collection[tuple[int, str]] | None = None, announce: bool = True) -> None:
    """One sweep cell (``only``: just those (seed, fold name) runs of it; ``announce``: see `execute`)."""
    # with its report, so a cell reads as soon as it ends; <sweep>/cells/<cell> shares <sweep>/fits with the others
    execute(req, cell_dir, cell_data(req, cache), only=only, announce=announce,
            shared_fits=cell_dir.parent.parent / "fits")


def unfinished_runs(req: RunRequest, cell_dir: Path, cache: dict[tuple, CorpusData]) -> list[tuple[int, str]]:
    """The (seed, fold name) runs of a sweep cell not yet trained into ``cell_dir``; the folds come from the
    corpus's data, as the cell's own run makes them. Announces the cell (`announce_run`)."""
    from train.heads import get_head, make_recipe
    from train.protocols import make_folds

    data = cell_data(req, cache)
    folds = make_folds(req.protocol, data.utts, seed=0, **req.protocol_options)
    announce_run(req, data, folds, make_recipe(get_head(req.head), req.options))
    return [(seed, fold.name) for seed in req.seeds for fold in folds
            if not (cell_dir / "folds" / f"{fold.name}_seed{seed}" / "metrics.json").exists()]


def cell_data(req: RunRequest, cache: dict[tuple, CorpusData]) -> CorpusData:
    """A cell's data. Features are loaded once per (features, head inputs, label set, modality) and reused by
    the cells that need the same; ``cache`` keeps the last ``CACHED_DATA`` of them (a cluster worker trains
    folds of every cell, and frame-level features of all of them at once would not fit a worker's memory)."""
    from featurize.store import FeatureStore
    from train.data import load_data
    from train.heads import get_head, make_recipe

    head = get_head(req.head)
    label_set = default_label_set(req.protocol, req.labels)
    by_speaker = make_recipe(head, req.options).normalize == "speaker"
    key = (
        req.store,
        req.corpus,
        tuple(req.features),
        tuple(sorted(head.inputs.items())),
        head.dialogue,
        label_set,
        req.modality,
        by_speaker,
    )
    if key in cache:
        cache[key] = cache.pop(key)  # the most recently used last
    else:
        while len(cache) >= CACHED_DATA:
            cache.pop(next(iter(cache)))
        store = FeatureStore(req.store, create=False)
        cache[key] = load_data(
            store, req.corpus, req.features, head, label_set, [req.modality] if req.modality else None, by_speaker
        )
    return cache[key]


CACHED_DATA = 2  # a fused cell and its audio-only twin, trained one after the other


def wide_console() -> Console:
    # Tables keep one line per row when printed to a file or a CI log (rich assumes 80 columns there).
    return Console(width=None if sys.stdout.isatty() else 140)


def print_grid(out: Path, names: list[str]) -> None:
    table = Table("cell", "WA", "UA", "macro-F1", "n", title=f"sweep {out}")
    for name in names:
        s = json.loads((out / "cells" / name / "summary.json").read_text())
        table.add_row(
            name,
            *(f"{100 * s[k]['mean']:.2f} ± {100 * s[k]['std']:.2f}" for k in ("wa", "ua", "macro_f1")),
            str(s["wa"]["n"]),
        )
    wide_console().print(table)


@app.command()
@friendly
def report(path: Path = typer.Argument(..., help="a run or sweep directory")) -> None:
    """Write report.md with confusion matrices, per-class accuracy, training curves (and the grid chart)."""
    from train.report import write_run_report, write_sweep_report

    written = write_sweep_report(path) if (path / "sweep.json").exists() else write_run_report(path)
    console.print(f"report written: {written}")


@app.command()
@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="a finished run directory (train run --out ...)"),
    audio: list[Path] = typer.Argument(..., help="audio files (WAV / FLAC / OGG / MP3, any rate), or directories "
                                       "of them"),
    text: str = typer.Option(None, help="transcript for text heads (default: Whisper ASR)"),
    json_out: Path = typer.Option(None, "--json", help="also write the predictions as JSON"),
    store: str = typer.Option(None, help="the store the run trained on, where it is now (default: where the "
                              "run's config says; a relative path there is relative to where it trained)"),
) -> None:
    """Predict emotions for new audio with every checkpoint of a run (probabilities averaged)."""
    from train.predict import predict_files

    preds = predict_files(run_dir, audio, text, store)
    classes = list(preds[0].probabilities) if preds else []
    table = Table("file", "prediction", *classes, title=f"predictions of {run_dir}")
    for p in preds:
        table.add_row(Path(p.path).name, p.prediction, *(f"{p.probabilities[c]:.3f}" for c in classes))
    wide_console().print(table)
    if json_out:
        json_out.write_text(json.dumps([p.__dict__ for p in preds], indent=1))


@app.command()
@friendly
def compare(
    run_a: Path = typer.Argument(..., help="the reference run directory"),
    run_b: Path = typer.Argument(..., help="the run compared with it"),
    json_out: Path = typer.Option(None, "--json", help="also write the comparison as JSON"),
) -> None:
    """B - A, paired over the same folds and seeds (t-test, Wilcoxon) and utterances (McNemar)."""
    from train.compare import compare as compare_runs

    r = compare_runs(run_a, run_b)
    title = f"{run_b} - {run_a}: {r['pairs']} paired runs (fold x seed)"
    table = Table("metric", "A", "B", "B - A", "± s.e.", "paired t p", "Wilcoxon p", title=title)

    def p(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    for k, m in r["metrics"].items():
        table.add_row(k.upper() if k != "macro_f1" else "macro-F1", f"{100 * m['a']:.2f}", f"{100 * m['b']:.2f}",
                      f"{100 * m['diff']:+.2f}", "-" if m["se"] is None else f"{100 * m['se']:.2f}",
                      p(m["t_test_p"]), p(m["wilcoxon_p"]))
    wide_console().print(table)
    u = r.get("utterances")
    if u:
        print(f"per utterance ({u['n']} test utterance x seed pairs): both right {u['both_right']}, only B right "
              f"{u['b_only']}, only A right {u['a_only']}; McNemar exact p = {u['mcnemar_p']:.3g}")
    if r["only_a"] or r["only_b"]:
        console.print(f"[yellow]note[/]: {r['only_a']} runs only in A, {r['only_b']} only in B were left out")
    if json_out:
        json_out.write_text(json.dumps(r, indent=1))


@app.command()
@friendly
def heads() -> None:
    """List the heads: name, paper, inputs, options and the recipe they train with."""
    import dataclasses as dc

    from train.heads import HEADS

    table = Table("head", "paper", "inputs", "options (--set key=value)", "recipe")
    for name in HEADS.names():
        spec = HEADS.get(name)
        options = ", ".join(f"{f.name}={f.default}" for f in dc.fields(spec.config_cls))
        r = spec.recipe
        recipe = f"{r.optimizer} lr {r.lr:g}, {r.epochs} epochs, batch {r.batch_size}" + (", refit" if r.refit else "")
        inputs = ", ".join(f"{m}: {form}" for m, form in spec.inputs.items())
        table.add_row(name, spec.paper or "-", inputs, options, recipe)
    Console().print(table)


def fill_help(group) -> None:
    """Names from the registries into the options' help, only when a command's --help is shown."""
    from train.heads import HEADS
    from train.labels import label_set_names
    from train.protocols import PROTOCOLS

    set_help(group, "run", "head", f"head: {', '.join(HEADS.names())} (`train heads` describes each)")
    set_help(group, "run", "protocol", f"protocol: {' | '.join(PROTOCOLS)}")
    sets = "; ".join(f"{c}: {'|'.join(label_set_names(c))}" for c in ("iemocap", "iemocap-text", "ravdess"))
    set_help(group, "run", "labels", f"label set ({sets}; any corpus: all)")


def main() -> None:
    run_app(app, fill_help)


if __name__ == "__main__":
    main()
