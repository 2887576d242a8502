"""Extraction on a dask.distributed cluster: `featurize extract --scheduler local:N | tcp://HOST:PORT`.

The extracting process plans, commits and resumes exactly as on one machine (one writer, atomic commits,
resume by utterance id, the same fingerprints); only the computing moves. Each task is a run of utterances
(a CPU extractor's small group, or a batched extractor's length-sorted batch, the same batches as locally),
computed on a worker that builds the extractor once — from the options it was made with — and keeps it for
every later task. Results come back in submission order, so the arrays equal a local run's. A worker that
dies takes its tasks with it and the scheduler runs them elsewhere: tasks are pure, nothing is lost or
written twice (only the extracting process writes).

GPU workers: start them with ``dask worker ... --resources GPU=1``; batched tasks then ask for one GPU each
when the extractor runs on cuda, so a multi-GPU box uses every GPU with one worker per GPU.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

# extractors built on this worker process, by (name, init options): one model per worker, built once
_BUILT: dict[str, Any] = {}


def check_scheduler(scheduler: str) -> int | None:
    """Validate a --scheduler value without connecting: the worker count of ``local:N``, or None."""
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--scheduler local:N wants a worker count of at least 1, got {scheduler!r}")
        return n
    if "://" not in scheduler:
        raise ValueError(f"--scheduler wants local:N or a scheduler address like tcp://HOST:8786, got {scheduler!r}")
    return None


def connect(scheduler: str):
    """A distributed Client: ``local:N`` starts a LocalCluster of N single-threaded worker processes on
    loopback; anything else is a scheduler address (``tcp://HOST:PORT``)."""
    from distributed import Client, LocalCluster

    n = check_scheduler(scheduler)
    if n is not None:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        return Client(cluster)
    try:
        return Client(scheduler, timeout=30)
    except OSError as e:
        raise ValueError(f"no dask scheduler answers at {scheduler} ({e}); start one with `dask scheduler`") from None


def one_per_worker(client, fn, tasks: list[tuple[str, tuple]], key_prefix: str) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args)`` for each (name, args) of ``tasks``, never more at once than the cluster has workers,
    yielding (name, finished future) as each ends. Long tasks of unknown length (a sweep's cells: seconds to an
    hour each) must not be handed out all at submission: the scheduler then queues several behind one worker
    while another sits idle (seen with 14 cells on 2 workers). Holding the rest back gives each cell to the
    next free worker; the worker count is read again at each completion, so workers that join are used."""
    from distributed import as_completed

    pending = list(tasks)
    running = as_completed()
    names = {}

    def submit() -> None:
        name, args = pending.pop(0)
        future = client.submit(fn, *args, key=f"{key_prefix}-{name}-{time.time_ns()}", pure=False)
        names[future.key] = name
        running.add(future)

    def free_slots() -> int:
        return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {}))) - running.count()

    while pending and free_slots() > 0:
        submit()
    for future in running:
        while pending and free_slots() > 0:
            submit()
        yield names.pop(future.key), future


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def worker_process_setup() -> None:
    """One core's worth of work per worker, and glibc's allocator back to what tensor work needs.

    A dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536. Setting that variable at all also
    freezes glibc's mmap threshold at 128 KiB, so every tensor above it is a fresh mmap whose pages fault in
    on first touch and are unmapped on free: a cme training epoch took 5.2 s in such a process against
    2.2 s in a plain one (2026-12-02, 2-core EPYC; two thirds of the extra time in the kernel). The same
    limits set again at run time give the plain process's speed; memory freed stays with the worker."""
    import ctypes
    import sys

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # more threads than the worker's one core only spin against its peers
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): their allocators ignore the variable anyway
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's own upper bound for its adaptive threshold
    libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _as_stored(config: dict) -> dict:
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def _worker_extractor(name: str, options: dict):
    key = json.dumps([name, options], sort_keys=True)
    if key not in _BUILT:
        from featurize.extractors import build_extractor

        worker_process_setup()
        extractor = build_extractor(name, options)
        extractor.setup()
        _BUILT[key] = (extractor, _as_stored(extractor.config()))
    return _BUILT[key]


def check_worker_config(name: str, mine: dict, expected: dict) -> None:
    """The settings this worker computes with are the ones the feature group was fingerprinted with (by the
    process that plans and commits): a worker that resolves ``auto`` to another device or precision, or has
    other package versions, would write other values under the same fingerprint."""
    differ = sorted(k for k in set(mine) | set(expected) if mine.get(k) != expected.get(k))
    if differ:
        import socket

        shown = "; ".join(f"{k}: {mine.get(k)!r} here, {expected.get(k)!r} in the fingerprint" for k in differ[:4])
        raise RuntimeError(
            f"worker on {socket.gethostname()} would compute {name} with other settings than the feature group "
            f"was fingerprinted with ({shown}): give them explicitly (e.g. -o device=cuda -o autocast=bfloat16), "
            "or install the same packages where `featurize extract` runs and on the workers")


def compute_task(name: str, options: dict, utts: list,
                 expected: dict | None = None) -> list[tuple[str, dict | None, str | None]]:
    """One task on a worker: (utt_id, values or None, skip reason or None) per utterance, in order.
    ``expected``: the extractor's config as the extracting process fingerprinted it (`check_worker_config`)."""
    from featurize import pipeline

    extractor, config = _worker_extractor(name, options)
    if expected is not None:
        check_worker_config(name, config, expected)
    if extractor.batched:
        return pipeline.decode_and_compute(extractor, utts)
    return pipeline._work(extractor, utts)


def task_resources(extractor, workers: dict) -> dict | None:
    """What a task asks of its worker: one GPU when the extractor computes on cuda and workers declare GPUs
    (`dask worker ... --resources GPU=1`); asked of a cluster without any, a task would never be scheduled."""
    from featurize.extractors.neural import pick_device

    cuda = extractor.batched and hasattr(extractor, "device_opt") and \
        pick_device(extractor.device_opt, check=False).startswith("cuda")
    gpu_workers = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    return {"GPU": 1} if cuda and gpu_workers else None


def run_on_cluster(client, extractor, tasks: list[list], ahead: int | None = None) -> Iterator[list]:
    """Submit ``tasks`` (lists of utterances) to the cluster, a few per worker ahead, and yield their results
    in submission order."""
    options = dict(getattr(extractor, "init_options", {}))
    expected = _as_stored(extractor.config())
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    workers = max(1, len(info))
    ahead = ahead or workers * 4
    resources = task_resources(extractor, info)
    pending: deque = deque()
    todo = iter(enumerate(tasks))

    def submit_next() -> None:
        item = next(todo, None)
        if item is not None:
            i, utts = item
            # pure=False: a key per task and position, so equal utterance lists never share a result
            pending.append(client.submit(compute_task, extractor.name, options, utts, expected,
                                         key=f"featurize-{i}-{id(tasks)}", resources=resources, pure=False,
                                         retries=2))

    for _ in range(ahead):
        submit_next()
    while pending:
        future = pending.popleft()
        result = future.result()
        future.release()
        submit_next()
        yield result
