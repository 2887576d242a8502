"""Running one extractor over a corpus into the store: plan, estimate, compute, write, resume.

* Resumable: utterances already committed to this exact configuration's group are skipped.
* Deterministic order: utterances are processed and committed in length-sorted order (so batches
  pad little), which a resumed run reproduces, so its arrays equal an uninterrupted run's.
* CPU extractors run in parallel worker processes, small tasks streamed a few per worker ahead;
  batched (neural) extractors compute in this process on a GPU, while worker processes decode audio
  ahead, and on a CPU as one single-threaded model replica per worker process (``_run_replicas``).
  (dask.distributed takes both to a cluster: featurize/cluster.py.)
* One background writer thread commits, buffering results to whole data chunks so appends are
  chunk-aligned; every commit is atomic (see featurize/store.py).
* A broken file is skipped and reported (with its path and the reason); the rest goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from threadpoolctl import threadpool_limits

from featurize.audio import AudioError, load_audio
from featurize.extractors import Extractor, estimate_bytes
from featurize.records import Utterance
from featurize.storage import Location
from featurize.store import CHUNK_BYTES, FeatureStore, FeatureWriter, feature_group_name

TASK_UTTS = 8  # utterances per worker task: amortises pickling, keeps the workers evenly loaded
# The writer commits when a data chunk's worth of rows is buffered, or after this many seconds.
COMMIT_SECONDS = float(os.environ.get("SERCACHE_COMMIT_SECONDS", "5"))
# A commit is due once an array holds this much: a few chunks, so the fixed cost of a commit (ids,
# offsets, the marker, the partly filled chunk rewritten) is paid rarely, and a crash loses little.
COMMIT_BYTES = 4 * CHUNK_BYTES
# Audio per task for CPU model replicas: small, so that the replicas' last tasks end close together.
REPLICA_TASK_SECONDS = 15.0


@dataclass
class ExtractPlan:
    feature: str
    todo: list[Utterance]
    already_done: int
    not_applicable: list[str]
    estimate_bytes: int
    audio_seconds: float
    remaining: int  # before --limit


@dataclass
class ExtractResult:
    feature: str
    processed: int = 0
    already_done: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # utt_id -> reason
    not_applicable: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    complete: bool = False


def utterance_seconds(u: Utterance) -> float:
    if u.duration is not None:
        return u.duration
    if u.start is not None and u.end is not None:
        return u.end - u.start
    return 0.0


def applicable(u: Utterance, extractor: Extractor) -> bool:
    if extractor.needs == "audio":
        return u.audio_path is not None
    return u.text is not None and u.text.strip() != ""


def plan(
    store: FeatureStore, utts: list[Utterance], extractor: Extractor, limit: int | None = None
) -> tuple[ExtractPlan, FeatureWriter]:
    """The extraction to do, with the writer (holding the group's lock) that will store it."""
    writer = store.writer(extractor.feature_name(), extractor.name, extractor.config(), extractor.arrays(),
                          init_options=getattr(extractor, "init_options", {}))
    return count_work(writer.name, utts, extractor, writer.done_ids(), limit), writer


def preview(store: str, utts: list[Utterance], extractor: Extractor, limit: int | None = None) -> ExtractPlan:
    """What ``plan`` would find, with nothing written: no store, group or lock file is created (`extract
    --dry-run`). A store that does not exist yet has nothing stored."""
    arrays = extractor.arrays()
    name = feature_group_name(extractor.feature_name(), extractor.name, extractor.config(), arrays)
    done: set[str] = set()
    if Location(store).exists("zarr.json"):
        done = FeatureStore(store, create=False).resumable_ids(name)
    return count_work(name, utts, extractor, done, limit)


def count_work(name: str, utts: list[Utterance], extractor: Extractor, done: set[str],
               limit: int | None) -> ExtractPlan:
    ok = [u for u in utts if applicable(u, extractor)]
    not_applicable = [u.utt_id for u in utts if not applicable(u, extractor)]
    todo = sorted((u for u in ok if u.utt_id not in done), key=lambda u: (utterance_seconds(u), u.utt_id))
    remaining = len(todo)
    todo = todo[:limit] if limit else todo
    secs = sum(utterance_seconds(u) for u in todo)
    est = estimate_bytes(extractor.arrays(), secs, len(todo))
    return ExtractPlan(name, todo, len(ok) - remaining, not_applicable, est, secs, remaining)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _load(u: Utterance, sample_rate: int) -> np.ndarray:
    return load_audio(u.audio_path, u.start, u.end, sr=sample_rate, channel=u.channel)


def empty_frames(extractor: Extractor, u: Utterance, values: dict) -> str | None:
    """Why ``values`` cannot be stored when a frames array holds no row (audio shorter than one frame):
    a 0-frame feature would train as silence, so the utterance is skipped and named instead."""
    empty = [s.name for s in extractor.arrays() if s.kind == "frames" and len(values[s.name]) == 0]
    if not empty:
        return None
    where = u.audio_path if extractor.needs == "audio" else u.utt_id
    return f"{where}: no {', '.join(empty)} frames ({utterance_seconds(u):.3f} s is shorter than one frame)"


def _work(extractor: Extractor, utts: list[Utterance]) -> list[tuple[str, dict | None, str | None]]:
    """One task: load and featurize a few utterances; failures become skip reasons."""
    out = []
    for u in utts:
        try:
            audio = _load(u, extractor.sample_rate) if extractor.needs == "audio" else None
            values = extractor.process_one(u, audio)
            why = empty_frames(extractor, u, values)
            out.append((u.utt_id, None if why else values, why))
        except AudioError as e:
            out.append((u.utt_id, None, str(e)))
        except Exception as e:  # a file that breaks the extractor is reported, not fatal
            out.append((u.utt_id, None, f"{u.audio_path}: {type(e).__name__}: {e}"))
    return out


# The extractor of a worker process, built once when the process starts (openSMILE's setup takes
# a good fraction of a second: paying it per task made two workers barely faster than one).
_worker_extractor: Extractor | None = None


def _exit_with_parent(parent: int) -> None:
    """Make this worker process exit once ``parent`` is gone. A parent killed with -9 never shuts its pool
    down, and a worker waiting for its next task would wait forever (its siblings hold the task pipe open),
    each holding its memory (a model replica's included)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _start_worker(extractor: Extractor, parent: int) -> None:
    global _worker_extractor
    _exit_with_parent(parent)
    # Parallelism is across worker processes. A forked worker inherits the parent's BLAS / OpenMP
    # thread pools (numpy's OpenBLAS, torch's OpenMP), so workers x threads would spin on the cores:
    # measured on 2 cores, two fbank workers were then slower than one.
    threadpool_limits(1)
    if "torch" in sys.modules:  # never import it just for this: that alone costs a second per worker
        sys.modules["torch"].set_num_threads(1)
    extractor.setup()
    _worker_extractor = extractor


def _work_in_worker(utts: list[Utterance]) -> list[tuple[str, dict | None, str | None]]:
    assert _worker_extractor is not None, "worker started without _start_worker"
    return _work(_worker_extractor, utts)


def decode_and_compute(extractor: Extractor, utts: list[Utterance]) -> list[tuple[str, dict | None, str | None]]:
    """One batched task where the model lives (a CPU replica, a cluster worker): decode, then compute."""
    items = (_decode_batch(utts, extractor.sample_rate) if extractor.needs == "audio"
             else [(u, None, None) for u in utts])
    return _compute(extractor, items)


def _compute_in_worker(utts: list[Utterance]) -> list[tuple[str, dict | None, str | None]]:
    assert _worker_extractor is not None, "worker started without _start_worker"
    return decode_and_compute(_worker_extractor, utts)


def _decode_batch(utts: list[Utterance], sample_rate: int) -> list[tuple[Utterance, np.ndarray | None, str | None]]:
    out = []
    for u in utts:
        try:
            out.append((u, _load(u, sample_rate), None))
        except AudioError as e:
            out.append((u, None, str(e)))
    return out


class _Writer(threading.Thread):
    """The one writer: buffers results and commits them in chunk-sized, atomic commits."""

    def __init__(self, writer: FeatureWriter, flush_seconds: float = COMMIT_SECONDS) -> None:
        super().__init__(daemon=True)
        self.writer = writer
        self.inbox: queue.Queue = queue.Queue(maxsize=64)
        self.flush_seconds = flush_seconds
        self.error: BaseException | None = None

    def run(self) -> None:
        ids: list[str] = []
        vals: list[dict] = []
        # Bytes waiting per array: a commit is due once any array has a chunk's worth. Counting per array
        # matters: an utterance adds many rows to a frame array but one row to an utterance-level one.
        pending: dict[str, int] = {}
        last = time.monotonic()
        while True:
            item = self.inbox.get()
            if item is not None:
                for uid, v in item:
                    ids.append(uid)
                    vals.append(v)
                    for name, x in v.items():
                        pending[name] = pending.get(name, 0) + np.asarray(x).nbytes
            full = max(pending.values(), default=0) >= COMMIT_BYTES
            due = item is None or full or time.monotonic() - last > self.flush_seconds
            if due and ids and self.error is None:
                try:
                    self.writer.commit(ids, vals)
                except BaseException as e:  # surfaced to the main thread, which stops the run
                    self.error = e
                ids, vals, pending, last = [], [], {}, time.monotonic()
            if item is None:
                return


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_extraction(
    store: FeatureStore,
    utts: list[Utterance],
    extractor: Extractor,
    workers: int = 2,
    batch_seconds: float = 60.0,
    console: Console | None = None,
    limit: int | None = None,
    client=None,
) -> ExtractResult:
    """Extract ``extractor`` for ``utts`` into ``store`` (resuming), and report what happened. With a
    dask.distributed ``client`` the computing runs on its workers (featurize/cluster.py); planning,
    committing and resuming stay here."""
    console = console or Console(stderr=True)
    for name in store.write_utterances(utts, changed_by="reading the corpus"):
        console.print(f"[yellow]stale[/] {name}: audio or text of some of its utterances changed in the corpus; "
                      "the next `featurize extract` of it rebuilds it")
    p, writer = plan(store, utts, extractor, limit)  # holds the feature's lock until finish / close
    try:
        return _extract(store, extractor, p, writer, workers, batch_seconds, console, client)
    finally:
        writer.close()


def _extract(store: FeatureStore, extractor: Extractor, p: ExtractPlan, writer: FeatureWriter, workers: int,
             batch_seconds: float, console: Console, client=None) -> ExtractResult:
    todo = p.todo
    # an object store has no fixed capacity to check against: its estimate is printed alone
    free = None if store.remote else shutil.disk_usage(store.path).free
    console.print(f"[bold]{extractor.describe()}[/] -> {store.where}/features/{p.feature}")
    console.print(
        f"  {len(todo)} utterances to extract ({p.audio_seconds / 3600:.2f} h of audio), "
        f"{p.already_done} already stored, {len(p.not_applicable)} without {extractor.needs}"
    )
    room = "" if free is None else f" ({human_bytes(free)} free)"
    console.print(f"  disk estimate: up to {human_bytes(p.estimate_bytes)} before compression{room}")
    if free is not None and p.estimate_bytes > free:
        raise RuntimeError(
            f"not enough disk for {p.feature}: needs up to {human_bytes(p.estimate_bytes)}, "
            f"{human_bytes(free)} free at {store.where}"
        )
    result = ExtractResult(p.feature, already_done=p.already_done, not_applicable=len(p.not_applicable))
    t0 = time.monotonic()
    sink = _Writer(writer)
    sink.start()
    stream = None
    try:
        with _progress(console) as bar:
            task = bar.add_task(extractor.name, total=len(todo), rate="")
            if client is not None:
                from featurize.cluster import run_on_cluster

                tasks = (length_batches(todo, batch_seconds) if extractor.batched
                         else [todo[i : i + TASK_UTTS] for i in range(0, len(todo), TASK_UTTS)])
                stream = run_on_cluster(client, extractor, tasks)
            elif extractor.batched:
                stream = _run_batched(extractor, todo, workers, batch_seconds)
            else:
                stream = _run_parallel(extractor, todo, workers)
            for chunk in stream:
                good = [(uid, v) for uid, v, err in chunk if err is None]
                for uid, _, err in chunk:
                    if err is not None:
                        result.skipped[uid] = err
                if good:
                    sink.inbox.put(good)
                if sink.error is not None:
                    raise sink.error
                result.processed += len(good)
                done = result.processed + len(result.skipped)
                el = time.monotonic() - t0
                bar.update(task, completed=done, rate=f"{done / max(el, 1e-9):.1f} utt/s")
    finally:
        if hasattr(stream, "close"):  # a run stopped early stops its workers now, not when collected
            stream.close()
        sink.inbox.put(None)
        sink.join()
    if sink.error is not None:
        raise sink.error
    result.seconds = time.monotonic() - t0
    secs = {u.utt_id: utterance_seconds(u) for u in todo}
    result.audio_seconds = sum(secs[u] for u in secs if u not in result.skipped)
    result.complete = not result.skipped and len(todo) == p.remaining
    writer.finish(result.complete, result.skipped)
    for uid, reason in list(result.skipped.items())[:20]:
        console.print(f"  [yellow]skipped[/] {uid}: {reason}")
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more skipped (listed in the feature's attributes)")
    return result


def _run_parallel(extractor: Extractor, todo: list[Utterance], workers: int) -> Iterator[list]:
    """Per-utterance extractors: small tasks stream through worker processes, a few per worker in
    flight, and their results come back in submission order (so commits follow the sorted order).
    A new task is submitted as each result is taken, so no worker waits for the slowest task of a
    batch: handing dask windows of tasks left one of two cores idle a quarter of the time."""
    tasks = [todo[i : i + TASK_UTTS] for i in range(0, len(todo), TASK_UTTS)]
    if workers <= 1:
        for t in tasks:
            yield _work(extractor, t)
        return
    pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(extractor, os.getpid()))
    try:
        yield from _in_order(pool, _work_in_worker, [(t,) for t in tasks], ahead=workers * 8)
    finally:  # also when the run stops early (a failed commit, Ctrl-C): queued tasks are dropped, not run
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool: ProcessPoolExecutor, fn, args: list[tuple], ahead: int) -> Iterator:
    """``fn(*a)`` for each ``a`` of ``args`` on the pool's workers, yielded in ``args``' order. At most
    ``ahead`` calls are in flight or waiting to be taken; the next is submitted as each result is taken,
    so the workers stay busy and a result taken is no longer held here."""
    in_flight = deque(pool.submit(fn, *a) for a in args[:ahead])
    for a in args[ahead:]:
        done = in_flight.popleft().result()
        in_flight.append(pool.submit(fn, *a))
        yield done
    while in_flight:
        yield in_flight.popleft().result()


def length_batches(todo: list[Utterance], batch_seconds: float, max_items: int = 64) -> list[list[Utterance]]:
    """Consecutive runs of the length-sorted list whose padded size (longest × count) stays under
    ``batch_seconds`` of audio, so batches are big when utterances are short."""
    out: list[list[Utterance]] = []
    cur: list[Utterance] = []
    for u in todo:
        if cur and ((len(cur) + 1) * max(utterance_seconds(u), 1e-3) > batch_seconds or len(cur) >= max_items):
            out.append(cur)
            cur = []
        cur.append(u)
    if cur:
        out.append(cur)
    return out


def _run_batched(extractor: Extractor, todo: list[Utterance], workers: int, batch_seconds: float) -> Iterator[list]:
    """Batched extractors compute here (CUDA stays in the main process); audio is decoded by
    worker processes a few batches ahead, overlapping decoding with compute. A torch model on a
    CPU computes in replicas instead (``_run_replicas``)."""
    extractor.setup()
    if extractor.cpu_replicas() and workers > 1:
        yield from _run_replicas(extractor, todo, workers, batch_seconds)
        return
    batches = length_batches(todo, batch_seconds)
    if extractor.needs != "audio":
        for b in batches:
            yield _compute(extractor, [(u, None, None) for u in b])
        return
    pool = ProcessPoolExecutor(max(1, workers), initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        decoded = _in_order(pool, _decode_batch, [(b, extractor.sample_rate) for b in batches],
                            ahead=max(2, workers * 2))
        for items in decoded:
            yield _compute(extractor, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def replica_pool(extractor: Extractor, workers: int) -> ProcessPoolExecutor:
    """``workers`` processes forked from this one after ``extractor.setup()``, each a one-thread replica."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                               initargs=(extractor, os.getpid()))


def _run_replicas(extractor: Extractor, todo: list[Utterance], workers: int, batch_seconds: float) -> Iterator[list]:
    """One model replica per worker process, each on one thread, decoding and computing its own tasks;
    results come back in task order. On the quiet 2-core box two one-thread replicas of HuBERT-base
    computed 1.10x as fast as one process with two threads (bench/feat_neural.py's (b') / (b), 2026-12-01): two
    threads wait on each other at every op, and decoding is a small part of the work. The workers are forked
    after ``setup``, so they share the model's weights (copy-on-write) instead of each loading them;
    a forked worker must stay at one thread (torch's OpenMP pool does not survive a fork: a second
    thread hangs), which ``_start_worker`` sets. Results equal a one-thread run in this process."""
    tasks = length_batches(todo, min(batch_seconds, REPLICA_TASK_SECONDS))
    pool = replica_pool(extractor, workers)
    try:
        yield from _in_order(pool, _compute_in_worker, [(t,) for t in tasks], ahead=workers * 2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _compute(extractor: Extractor, items: list) -> list[tuple[str, dict | None, str | None]]:
    ready = [(u, a) for u, a, err in items if err is None]
    out = [(u.utt_id, None, err) for u, _, err in items if err is not None]
    if ready:
        for (u, _), v in zip(ready, extractor.process_batch(ready), strict=True):
            why = empty_frames(extractor, u, v)
            out.append((u.utt_id, None if why else v, why))
    # Keep the length-sorted order for the writer.
    order = {u.utt_id: i for i, (u, _, _) in enumerate(items)}
    return sorted(out, key=lambda r: order[r[0]])
