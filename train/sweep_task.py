"""A sweep's dask.distributed tasks (`train sweep --scheduler`): a cell's plan, each of its runs, its summary.
Importable on any worker and never defined in ``__main__`` (which `python -m train.cli` is), so the tasks pickle
by reference."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict = {}  # features loaded on this worker process, reused by its later cells


def cell_task(request: dict, cell_dir: str) -> str:
    """Train one cell (its RunRequest as a dict) into ``cell_dir``, every run of it not yet trained; with all
    trained (``fold_task``), this writes its summary and report."""
    from train.cli import RunRequest, run_cell

    _setup()
    run_cell(RunRequest(**request), Path(cell_dir), _CACHE, announce=False)  # its plan task announced it
    return cell_dir


def plan_task(request: dict, cell_dir: str) -> list[tuple[int, str]]:
    """The (seed, fold name) runs of a cell not yet trained."""
    from train.cli import RunRequest, unfinished_runs

    _setup()
    return unfinished_runs(RunRequest(**request), Path(cell_dir), _CACHE)


def fold_task(request: dict, cell_dir: str, seed: int, fold: str) -> str:
    """Train one (seed, fold) run of a cell into ``cell_dir``, as the whole cell's run would."""
    from train.cli import RunRequest, run_cell

    _setup()
    run_cell(RunRequest(**request), Path(cell_dir), _CACHE, only=[(seed, fold)], announce=False)
    return f"{cell_dir}/folds/{fold}_seed{seed}"


def _setup() -> None:
    """One torch thread (a worker is one core) and an allocator fit for tensors (``worker_process_setup``)."""
    import torch  # noqa: F401  (imported before the setup, so it too gets one thread)

    from featurize.cluster import worker_process_setup

    worker_process_setup()
