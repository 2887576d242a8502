"""Stores on object storage: a real S3-compatible server (moto's server mode, a separate process on loopback)
and s3fs as the client. Extraction gives the arrays of a local run, a kill at each commit point resumes to
the same store, the lease locks exclude and expire, and a training run reads the features from the bucket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore, StoreError
from tests.conftest import assert_same_values, stored_values, write_manifest_corpus

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server process on loopback; the AWS environment that points clients at it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url, "FSSPEC_S3_ENDPOINT_URL": url}
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(10)


@pytest.fixture
def bucket(s3_env):
    """A fresh bucket per test; its URL."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    name = f"t{uuid.uuid4().hex[:20]}"
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3corpus")
    manifest = write_manifest_corpus(root / "c", 48, seconds=(0.5, 1.0))
    utts, _ = read_corpus("manifest", manifest)
    local = root / "local.zarr"
    for ex in (Fbank(), OpenSmile("egemaps")):
        run_extraction(FeatureStore(local), utts, ex, workers=1)
    return manifest, utts, local


def test_extract_to_s3_gives_the_arrays_of_a_local_run(corpus, bucket):
    _, utts, local = corpus
    url = f"{bucket}/prefix/features.zarr"
    for ex in (Fbank(), OpenSmile("egemaps")):
        result = run_extraction(FeatureStore(url), utts, ex, workers=1)
        assert result.complete and result.processed == 48
    assert_same_values(stored_values(url), stored_values(local))
    store = FeatureStore(url, create=False)
    assert store.remote and len(store.utterances()) == 48
    assert {f.name for f in store.features()} == {f.name for f in FeatureStore(local).features()}
    assert all(store.verify(f.name).ok for f in store.features())
    # nothing of the local protocol's renames is left behind: no partial/, one table version
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    top = {p.rsplit("/", 1)[-1] for p in fs.ls(url.removeprefix("s3://"))}
    assert "partial" not in top and sum(p.startswith("utterances") for p in top) <= 2, top


def _extract_cmd(manifest: Path, store: str) -> list[str]:
    return [sys.executable, "-m", "featurize.cli", "extract", "--corpus", "manifest", "--data", str(manifest),
            "--model", "fbank", "--workers", "1", "--store", store]


# the points where an object store commits differently from a local one (tests/test_reliability.py has them all)
@pytest.mark.parametrize("point", ["table-swap", "commit-marker"])
def test_a_kill_at_each_commit_point_resumes_to_the_same_store(corpus, bucket, s3_env, point):
    manifest, _, local = corpus
    url = f"{bucket}/features.zarr"
    env = {**os.environ, **s3_env, "SERCACHE_COMMIT_SECONDS": "0.3"}
    died = subprocess.run(_extract_cmd(manifest, url), env={**env, "SERCACHE_DIE_AT": point}, capture_output=True)
    assert died.returncode != 0, died.stderr.decode()[-2000:]
    again = subprocess.run(_extract_cmd(manifest, url), env=env, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    want = {k: v for k, v in stored_values(local).items() if k.startswith("fbank")}
    assert_same_values(stored_values(url), want)
    assert len(FeatureStore(url, create=False).utterances()) == 48


def test_lease_lock_excludes_names_its_holder_and_expires(bucket):
    from featurize.locks import LeaseLock

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    key = f"{bucket.removeprefix('s3://')}/locks/feature-x.lock"
    held = LeaseLock(fs, key, "feature x", ttl=30).acquire()
    with LeaseLock(fs, key, "feature x", timeout=0) as again:  # re-entrant within the process
        assert again.held
    assert fs.exists(key)
    # another process's view: a second lease on the same key is refused, naming the holder
    other = subprocess.run([sys.executable, "-c", (
        "import s3fs, sys\n"
        "from featurize.locks import LeaseLock, LockTimeout\n"
        "fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)\n"
        f"try:\n    LeaseLock(fs, {key!r}, 'feature x', timeout=0.5).acquire()\n"
        "except LockTimeout as e:\n    print(e); sys.exit(7)\n")], capture_output=True, text=True)
    assert other.returncode == 7 and f"pid {os.getpid()}" in other.stdout, other.stdout + other.stderr
    held.release()
    assert not fs.exists(key)
    # a lease whose holder died (not renewed past its expiry) is broken by the next taker
    fs.pipe_file(key, json.dumps({"pid": 1, "host": "gone", "expires": time.time() - 1}).encode())
    with LeaseLock(fs, key, "feature x", timeout=5) as taken:
        assert taken.held and json.loads(fs.cat_file(key))["pid"] == os.getpid()


def test_a_lost_lease_stops_the_writer_before_its_next_commit(corpus, bucket):
    _, utts, _ = corpus
    store = FeatureStore(f"{bucket}/features.zarr")
    store.write_utterances(utts)
    writer = store.writer("fbank", "fbank", {"n_mels": 40}, Fbank().arrays())
    writer.lock.lost = True  # what the keep-alive thread sets when another writer took the lease over
    with pytest.raises(StoreError, match="lock was taken over"):
        import numpy as np

        writer.commit([utts[0].utt_id], [{"fbank": np.zeros((3, 40), dtype=np.float32)}])
    assert store.features()[0].n_committed == 0
    writer.close()


def test_training_reads_its_features_from_the_bucket(corpus, bucket, tmp_path):
    from train.cli import app

    _, utts, _ = corpus
    url = f"{bucket}/features.zarr"
    run_extraction(FeatureStore(url), utts, OpenSmile("egemaps"), workers=1)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--store", url, "--corpus", "corpus", "--protocol", "speaker-kfold",
                                   "--head", "linear", "--feature", "opensmile", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["per_fold"]) == 5 and summary["ua"]["mean"] > 0.6
    assert json.loads((out / "config.json").read_text())["request"]["store"] == url


def test_repair_on_an_object_store_is_refused_in_one_line(corpus, bucket):
    from featurize.store import FeatureCheck

    _, utts, _ = corpus
    store = FeatureStore(f"{bucket}/features.zarr")
    run_extraction(store, utts[:4], Fbank(), workers=1)
    name = store.features()[0].name
    with pytest.raises(StoreError, match="object stores lack"):
        store.repair(name, FeatureCheck(name, 4, damaged_index=[0]))


def test_an_object_store_that_cannot_be_reached_is_one_error_line(s3_env):
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {**os.environ, **s3_env, "AWS_ENDPOINT_URL": closed, "FSSPEC_S3_ENDPOINT_URL": closed,
           "AWS_MAX_ATTEMPTS": "1"}
    for cmd in (["featurize.cli", "ls"], ["train.cli", "run", "--head", "linear", "--feature", "fbank", "--corpus", "c",
                                           "--protocol", "speaker-kfold"]):
        res = subprocess.run([sys.executable, "-m", *cmd, "--store", "s3://bucket/features.zarr"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 3, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert "error: cannot reach the store s3://bucket/features.zarr: EndpointConnectionError" in res.stderr
