"""Extraction on a real dask.distributed cluster (a LocalCluster, and `dask scheduler` + `dask worker` processes
on loopback): arrays identical to a local run, also when a worker is killed mid-run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.extractors.speech import SpeechEncoder
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore
from tests.conftest import assert_same_values, stored_values, write_manifest_corpus
from tests.test_neural import _save_tiny_hubert

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    utts, _ = read_corpus("manifest", write_manifest_corpus(root / "c", 40, seconds=(0.4, 1.2)))
    return root, utts


@pytest.fixture(scope="module")
def client():
    from featurize.cluster import connect

    c = connect("local:2")
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def test_local_cluster_gives_the_arrays_of_a_local_run(corpus, client, tmp_path):
    root, utts = corpus
    hubert = _save_tiny_hubert(tmp_path / "hubert", "group")
    extractors = lambda: [Fbank(), OpenSmile("egemaps"), SpeechEncoder(model_path=str(hubert), layers="all",  # noqa: E731
                                                                       dtype="float32")]
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker computes: float32 sums in another order differ in the last bit
    try:
        for ex in extractors():
            run_extraction(FeatureStore(local), utts, ex, workers=1)
    finally:
        torch.set_num_threads(threads)
    for ex in extractors():
        result = run_extraction(FeatureStore(remote), utts, ex, client=client)
        assert result.complete and result.processed == 40
    assert_same_values(stored_values(remote), stored_values(local))


def test_a_worker_killed_mid_run_changes_nothing(corpus, client, tmp_path):
    root, utts = corpus
    local = tmp_path / "local.zarr"
    run_extraction(FeatureStore(local), utts, OpenSmile("egemaps"), workers=1)
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 2

    def kill_one() -> None:
        time.sleep(1.0)  # a few tasks in: openSMILE takes ~0.1 s an utterance
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one)
    killer.start()
    remote = tmp_path / "remote.zarr"
    result = run_extraction(FeatureStore(remote), utts, OpenSmile("egemaps"), client=client)
    killer.join()
    assert result.complete and result.processed == 40
    assert_same_values(stored_values(remote), stored_values(local))
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_scheduler_and_worker_processes_on_loopback(corpus, tmp_path):
    root, utts = corpus
    port = _free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    bindir = Path(sys.executable).parent
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    worker = subprocess.Popen([str(bindir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2",
                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        manifest = root / "c" / "corpus.csv"
        remote, local = tmp_path / "remote.zarr", tmp_path / "local.zarr"
        deadline = time.monotonic() + 60
        while True:  # the workers take a few seconds to register
            from distributed import Client

            try:
                with Client(f"tcp://127.0.0.1:{port}", timeout=5) as c:
                    c.wait_for_workers(2, timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        cmd = [sys.executable, "-m", "featurize.cli", "extract", "--corpus", "manifest", "--data", str(manifest),
               "--model", "fbank"]
        res = subprocess.run(cmd + ["--store", str(remote), "--scheduler", f"tcp://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "2 workers" in res.stderr
        subprocess.run(cmd + ["--store", str(local), "--workers", "1"], check=True, capture_output=True)
        assert_same_values(stored_values(remote), stored_values(local))
    finally:
        for p in (worker, sched):
            p.send_signal(signal.SIGTERM)
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_bad_scheduler_is_one_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "featurize.cli", "extract", "--corpus", "manifest", "--data",
                          str(tmp_path / "x.csv"), "--model", "fbank", "--scheduler", "nowhere"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "local:N or a scheduler address" in res.stderr and "Traceback" not in res.stderr


def _start_then_wait(folder: str, name: str) -> str:
    """A task that says it started, then runs until the test opens the gate (at most a minute)."""
    (Path(folder) / f"started-{name}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not (Path(folder) / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return name


def test_long_tasks_go_one_per_free_worker_in_order(client, tmp_path):
    # a sweep's cells run for minutes each: the first two must start at once on the two workers (never
    # queued behind each other) and the rest wait at the client until a worker is free
    from featurize.cluster import one_per_worker

    tasks = [(n, (str(tmp_path), n)) for n in ("a", "b", "c", "d", "e")]
    done: list[str] = []
    runner = threading.Thread(target=lambda: done.extend(name for name, f in
                                                         one_per_worker(client, _start_then_wait, tasks, "t")
                                                         if f.result() == name))
    runner.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    started = sorted(p.name for p in tmp_path.glob("started-*"))
    assert started == ["started-a", "started-b"]  # in order, on two different processes, nothing else
    assert (tmp_path / "started-a").read_text() != (tmp_path / "started-b").read_text()
    assert len(client.processing()) == 2 and sum(len(v) for v in client.processing().values()) == 2
    (tmp_path / "gate").write_text("")
    runner.join(timeout=60)
    assert sorted(done) == ["a", "b", "c", "d", "e"]


def _page_faults_per_cycle(setup: bool) -> float:
    """Minor page faults per alloc / touch / free of a 2 MiB buffer, after ``worker_process_setup`` if asked."""
    import resource

    import numpy as np

    from featurize.cluster import worker_process_setup

    if setup:
        worker_process_setup()
    np.ones(1 << 18)  # warm up: the first buffer faults in whatever the allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        np.ones(1 << 18).sum()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_worker_setup_stops_the_nannys_malloc_setting_from_faulting_every_tensor_in(client):
    # a dask nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap threshold at
    # 128 KiB: each larger buffer is mapped afresh and its 512 pages fault in (training ran 2.3x slower);
    # in a process started that way, the setup brings the faults back to a plain process's
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    code = "from tests.test_distributed import _page_faults_per_cycle as f; print(f(False), f(True))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout.split()
    pinned, fixed = float(out[0]), float(out[1])
    assert pinned > 400 and fixed < 5
    # and on the cluster's own workers (the sweep and extraction tasks call the setup first)
    assert all(v < 5 for v in client.run(_page_faults_per_cycle, True).values())


def test_a_worker_computing_with_other_settings_than_the_fingerprint_is_refused(corpus, client, tmp_path):
    """The extracting process fingerprints the group; a worker that would compute otherwise (``auto`` resolved
    to a GPU the planner lacks, other package versions) fails its task with the differing settings named,
    instead of writing other values under that fingerprint."""
    from featurize.cluster import compute_task, task_resources

    root, utts = corpus
    hubert = _save_tiny_hubert(tmp_path / "hubert", "group")
    encoder = SpeechEncoder(model_path=str(hubert))
    planned = {**encoder.config(), "autocast": "bfloat16"}  # as a planner with a GPU would resolve `auto`
    future = client.submit(compute_task, encoder.name, dict(encoder.init_options), utts[:2], planned, pure=False)
    with pytest.raises(RuntimeError, match="autocast: 'none' here, 'bfloat16' in the fingerprint"):
        future.result()
    same = client.submit(compute_task, encoder.name, dict(encoder.init_options), utts[:2], encoder.config(),
                         pure=False).result()
    assert [uid for uid, values, _ in same] == [u.utt_id for u in utts[:2]] and all(v for _, v, _ in same)

    gpu_workers = {"w1": {"resources": {"GPU": 1}}}
    assert task_resources(SpeechEncoder(model_path=str(hubert), device="cuda"), gpu_workers) == {"GPU": 1}
    assert task_resources(SpeechEncoder(model_path=str(hubert), device="cuda"), {"w1": {"resources": {}}}) is None
    assert task_resources(SpeechEncoder(model_path=str(hubert), device="cpu"), gpu_workers) is None
    assert task_resources(Fbank(), gpu_workers) is None
    # a planner without a GPU fingerprints an explicit cuda run instead of refusing it
    assert SpeechEncoder(model_path=str(hubert), device="cuda").config()["autocast"] == "bfloat16"
