"""One sweep cell as a dask.distributed task (`train sweep --scheduler`): importable on any worker, and
never defined in ``__main__`` (which `python -m train.cli` is), so the task pickles by reference."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict = {}  # features loaded on this worker process, reused by its later cells


def cell_task(request: dict, cell_dir: str) -> str:
    """Train one cell (its RunRequest as a dict) into ``cell_dir``: one torch thread (a worker is one core),
    an allocator fit for tensors (``worker_process_setup``), this worker's feature cache."""
    import torch  # noqa: F401  (imported before the setup, so it too gets one thread)

    from featurize.cluster import worker_process_setup
    from train.cli import RunRequest, run_cell

    worker_process_setup()
    run_cell(RunRequest(**request), Path(cell_dir), _CACHE)
    return cell_dir
