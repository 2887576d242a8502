"""A store nothing can silently corrupt: kills at chosen and random points, concurrent writers, damaged
chunks found by reading and by `featurize verify`, repaired and re-extracted to the same values."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import featurize.store as store_module
from featurize.cli import app
from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.locks import LockTimeout
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore, StoreError
from tests.conftest import assert_same_values, stored_values, write_manifest_corpus


def _extract_cmd(manifest: Path, store: Path, model: str = "fbank", *extra: str) -> list[str]:
    return [sys.executable, "-m", "featurize.cli", "extract", "--corpus", "manifest", "--data", str(manifest),
            "--model", model, "--workers", "1", "--store", str(store), *extra]


ENV = {**os.environ, "SERCACHE_COMMIT_SECONDS": "0.02"}


def _table_ok(path: Path, n: int) -> None:
    utts = FeatureStore(path, create=False).utterances()
    assert len(utts) == n and len({u.utt_id for u in utts}) == n


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A 60-utterance corpus and the store an uninterrupted fbank run makes of it."""
    root = tmp_path_factory.mktemp("reliability")
    manifest = write_manifest_corpus(root / "c", 60, seconds=(0.4, 1.0))
    clean = root / "clean.zarr"
    subprocess.run(_extract_cmd(manifest, clean), env=ENV, check=True, capture_output=True)
    return manifest, clean


# -- kills ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["group-built", "table-built", "table-swap", "commit-data", "commit-marker"])
def test_kill_at_each_critical_point_then_resume_gives_the_same_store(corpus, tmp_path, point):
    manifest, clean = corpus
    store = tmp_path / "s.zarr"
    died = subprocess.run(_extract_cmd(manifest, store), env={**ENV, "SERCACHE_DIE_AT": point}, capture_output=True)
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()[-2000:]
    # whatever the kill left, the store opens and lists without an error ...
    FeatureStore(store).features()
    # ... and a rerun completes it to the same values
    subprocess.run(_extract_cmd(manifest, store), env=ENV, check=True, capture_output=True)
    assert_same_values(stored_values(store), stored_values(clean))
    _table_ok(store, 60)
    assert not any((store / "partial").iterdir()) if (store / "partial").exists() else True
    assert all(i.complete for i in FeatureStore(store).features())


def _processes_with(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (forked workers keep their parent's)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="replace") and \
                    (d / "stat").read_text().split()[2] != "Z":
                out.append(int(d.name))
        except OSError:  # gone meanwhile
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_workers_exit_when_their_parent_is_killed(corpus, tmp_path):
    """kill -9 skips the pool's shutdown; the worker processes must not linger (each holds its memory)."""
    manifest, _ = corpus
    store = tmp_path / "orphans.zarr"
    cmd = _extract_cmd(manifest, store, "opensmile", "-o", "set=egemaps")
    cmd[cmd.index("--workers") + 1] = "2"
    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:  # not a pipe: a lingering worker would hold it open, and the run would hang
        died = subprocess.run(cmd, env={**ENV, "SERCACHE_DIE_AT": "commit-data"}, stdout=subprocess.DEVNULL,
                              stderr=err)
    assert died.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    deadline = time.monotonic() + 15
    while _processes_with(str(store)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _processes_with(str(store)) == []


def test_kill_at_random_points_of_extraction_and_training_then_resume(corpus, tmp_path):
    """16 kills at random moments of one extraction (each rerun resumes what the last one left), then 4 of
    one training run: both end identical to uninterrupted runs."""
    manifest, clean = corpus
    store = tmp_path / "s.zarr"
    rng = random.Random(7)
    kills = 0
    for _ in range(16):
        proc = subprocess.Popen(_extract_cmd(manifest, store, "opensmile", "-o", "set=egemaps"), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    subprocess.run(_extract_cmd(manifest, store, "opensmile", "-o", "set=egemaps"), env=ENV, check=True,
                   capture_output=True)
    reference = tmp_path / "ref.zarr"
    subprocess.run(_extract_cmd(manifest, reference, "opensmile", "-o", "set=egemaps"), env=ENV, check=True,
                   capture_output=True)
    assert_same_values(stored_values(store), stored_values(reference))
    _table_ok(store, 60)
    assert kills >= 8, f"only {kills} of 16 runs were still running when killed"

    train = [sys.executable, "-m", "train.cli", "run", "--store", str(clean), "--corpus", "corpus", "--protocol",
             "speaker-kfold", "--head", "probe", "--feature", "fbank", "--max-epochs", "3", "--seeds", "0"]
    killed_run, clean_run = tmp_path / "killed-run", tmp_path / "clean-run"
    subprocess.run(train + ["--out", str(clean_run)], check=True, capture_output=True)
    # Kills are timed from the run's own progress, not the clock: a fixed delay (or one scaled by a clean run,
    # whose start-up can be slower than the next runs') can land after a run has ended. Each run is killed at a
    # random point of the fold after the first one it finishes, so every kill lands inside a run.
    finished = sorted(f.stat().st_mtime for f in clean_run.glob("folds/*/metrics.json"))
    per_fold = (finished[-1] - finished[0]) / (len(finished) - 1)
    train_kills = 0
    for _ in range(len(finished) - 1):
        done_before = len(list(killed_run.glob("folds/*/metrics.json")))
        proc = subprocess.Popen(train + ["--out", str(killed_run)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list(killed_run.glob("folds/*/metrics.json"))) <= done_before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8) * per_fold)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            train_kills += 1
        proc.wait()
    subprocess.run(train + ["--out", str(killed_run)], check=True, capture_output=True)
    a = json.loads((killed_run / "summary.json").read_text())["per_fold"]
    b = json.loads((clean_run / "summary.json").read_text())["per_fold"]
    assert a == b
    assert train_kills >= 1


# -- concurrent writers ---------------------------------------------------------------------------------------
def _together(*cmds: list[str], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(c, p.returncode, o, e) for c, p, (o, e) in zip(cmds, procs, outs, strict=True)]


def _open_at_the_barrier(path: str, barrier, answers) -> None:
    barrier.wait()
    try:
        FeatureStore(path, on_wait=lambda msg: None)
        answers.put("ok")
    except Exception as e:  # noqa: BLE001 -- the answer is the test's evidence
        answers.put(f"{type(e).__name__}: {e}")


def test_jobs_opening_one_new_store_at_once_all_get_the_same_complete_store(tmp_path):
    """Two extractions started together on a new store raced to create its root (CI, stop 23): now one
    creates it under the utterances lock and the others wait, then open it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(8):
        path = str(tmp_path / f"new{round_}.zarr")
        barrier, answers = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_the_barrier, args=(path, barrier, answers)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [answers.get(timeout=5) for _ in procs] == ["ok"] * 4, f"round {round_}"
        opened = FeatureStore(path, create=False)
        assert opened.features() == [] and opened.utterances() == []


def test_two_features_at_once_equal_serial_runs(corpus, tmp_path):
    manifest, _ = corpus
    together, serial = tmp_path / "together.zarr", tmp_path / "serial.zarr"
    runs = _together(_extract_cmd(manifest, together), _extract_cmd(manifest, together, "opensmile", "-o",
                                                                     "set=egemaps"))
    assert all(r.returncode == 0 for r in runs), [r.stderr[-1500:] for r in runs]
    for model, extra in (("fbank", ()), ("opensmile", ("-o", "set=egemaps"))):
        subprocess.run(_extract_cmd(manifest, serial, model, *extra), env=ENV, check=True, capture_output=True)
    assert_same_values(stored_values(together), stored_values(serial))
    _table_ok(together, 60)


def test_two_corpora_into_one_feature_at_once_keep_every_utterance(tmp_path):
    a = write_manifest_corpus(tmp_path / "a", 30, seed=1)
    b = write_manifest_corpus(tmp_path / "b", 30, seed=2)
    b = b.rename(b.with_name("other.csv"))  # a manifest's corpus is its file stem: "corpus" and "other"
    together = tmp_path / "together.zarr"
    runs = _together(_extract_cmd(a, together), _extract_cmd(b, together))
    assert all(r.returncode == 0 for r in runs), [r.stderr[-1500:] for r in runs]
    store = FeatureStore(together)
    (info,) = store.features()
    assert info.n_committed == 60 and len(set(store.committed_ids(info.name))) == 60
    _table_ok(together, 60)
    serial = tmp_path / "serial.zarr"
    for m in (a, b):
        subprocess.run(_extract_cmd(m, serial), env=ENV, check=True, capture_output=True)
    assert_same_values(stored_values(together), stored_values(serial))


def test_the_same_feature_twice_waits_and_does_the_work_once(corpus, tmp_path):
    manifest, clean = corpus
    store = tmp_path / "s.zarr"
    runs = _together(_extract_cmd(manifest, store), _extract_cmd(manifest, store))
    assert all(r.returncode == 0 for r in runs), [r.stderr[-1500:] for r in runs]
    done = [r for r in runs if "60 extracted" in r.stderr]
    waited = [r for r in runs if "0 extracted" in r.stderr and "60 were already stored" in r.stderr]
    assert len(done) == 1 and len(waited) == 1, [r.stderr[-800:] for r in runs]
    assert "waiting for feature fbank-" in waited[0].stderr and "locked by pid" in waited[0].stderr
    assert_same_values(stored_values(store), stored_values(clean))


def test_a_held_lock_refuses_with_the_holders_name_and_a_dead_holder_never_blocks(corpus, tmp_path):
    manifest, _ = corpus
    store = FeatureStore(tmp_path / "s.zarr")
    utts, _ = read_corpus("manifest", manifest)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from featurize.store import FeatureStore; "
        f"s = FeatureStore({str(tmp_path / 's.zarr')!r}); l = s.lock('utterances').acquire(); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    refusing = FeatureStore(tmp_path / "s.zarr", lock_timeout=0.2)
    with pytest.raises(LockTimeout, match=f"the utterance table of .* is locked by pid {holder.pid}"):
        refusing.write_utterances(utts)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    refusing.write_utterances(utts)  # the kernel released the dead holder's lock: nothing to clean up
    assert len(store.utterances()) == 60


# -- damage ---------------------------------------------------------------------------------------------------
@pytest.fixture()
def small_chunks(monkeypatch):
    # 8 kB chunks: a 60-utterance fbank feature spans ~20 data chunks, so damage hits a few utterances, not all
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 8192)


def _fbank_store(manifest: Path, path: Path) -> FeatureStore:
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(path)
    run_extraction(store, utts, Fbank(), workers=1)
    return store


def _chunk(path: Path, feature: str, array: str, i: int) -> Path:
    (f,) = [p for p in (path / "features" / feature / array / "c").glob(f"{i}/**/*") if p.is_file()] or [
        path / "features" / feature / array / "c" / str(i)]
    return f


def _flip(file: Path, offset: int) -> None:
    raw = bytearray(file.read_bytes())
    raw[offset] ^= 0x5A
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["payload byte", "header byte", "deleted chunk", "ids chunk"])
def test_damage_is_found_by_reading_and_by_verify_then_repaired(corpus, tmp_path, small_chunks, damage):
    manifest, _ = corpus
    path = tmp_path / "s.zarr"
    store = _fbank_store(manifest, path)
    name = store.resolve_feature("fbank")
    before = stored_values(path)
    fa = store.read(name)
    lo, hi = 3 * 102, 4 * 102  # rows of data chunk 3 (8192 // 80 bytes a row = 102 rows a chunk)
    expected = {u for u in fa.utt_ids if fa.offsets[fa.position(u)] < hi and fa.offsets[fa.position(u) + 1] > lo}
    if damage == "payload byte":
        target = _chunk(path, name, "fbank/data", 3)
        _flip(target, target.stat().st_size // 2)
    elif damage == "header byte":
        _flip(_chunk(path, name, "fbank/data", 3), 2)
    elif damage == "deleted chunk":
        _chunk(path, name, "fbank/data", 3).unlink()
    else:
        _flip(_chunk(path, name, "utt_ids", 0), 10)
        expected = set(fa.utt_ids)  # every id is in chunk 0
    with pytest.raises(StoreError) as err:
        FeatureStore(path).read(name)
    message = str(err.value)
    assert name in message and ("utt_ids" in message or "fbank/data" in message)
    if damage != "ids chunk":
        assert "chunk 3" in message and sorted(expected)[0] in message
    reason = "chunk file missing" if damage == "deleted chunk" else "checksum mismatch"
    assert reason in message

    res = CliRunner().invoke(app, ["verify", "--store", str(path)])
    assert res.exit_code == 1 and reason in res.output and name in res.output
    check = FeatureStore(path).verify(name)
    if damage == "ids chunk":  # which utterances the rows belong to is lost with the ids: all are un-committed
        assert len(check.damaged) == 60 and all("id unreadable" in d for d in check.damaged)
    else:
        assert set(check.damaged) == expected

    res = CliRunner().invoke(app, ["verify", "--store", str(path), "--repair"])
    assert res.exit_code == 0, res.output
    repaired = FeatureStore(path)
    assert repaired.verify(name).ok
    assert len(repaired.committed_ids(name)) == 60 - len(expected)
    utts, _ = read_corpus("manifest", manifest)
    again = run_extraction(repaired, utts, Fbank(), workers=1)
    assert again.processed == len(expected)  # exactly the damaged utterances are redone
    assert_same_values(stored_values(path), before)
    assert CliRunner().invoke(app, ["verify", "--store", str(path)]).exit_code == 0


def test_offsets_that_disagree_with_the_attributes_are_damage(corpus, tmp_path, small_chunks):
    manifest, _ = corpus
    path = tmp_path / "s.zarr"
    store = _fbank_store(manifest, path)
    name = store.resolve_feature("fbank")
    offsets = store.root["features"][name]["fbank"]["offsets"]
    values = offsets[:]
    values[10] = values[12] + 5  # utterance 9 now ends past where utterance 10 ends: offsets go backwards
    offsets[:] = values
    check = FeatureStore(path).verify(name)
    assert not check.ok and any("decrease" in p for p in check.problems)
    ids = store.committed_ids(name)
    assert {ids[9], ids[10]} <= set(check.damaged)


# -- disk full ------------------------------------------------------------------------------------------------
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_disk_full_mid_run_leaves_a_readable_store_that_a_rerun_completes(tmp_path, monkeypatch):
    manifest = write_manifest_corpus(tmp_path / "c", 80, seconds=(2.0, 3.0))
    utts, _ = read_corpus("manifest", manifest)
    clean = tmp_path / "clean.zarr"
    run_extraction(FeatureStore(clean), utts, Fbank(), workers=1)
    disk = tmp_path / "disk"
    if _mount_tmpfs(disk, "6m"):  # a real full file system: a small tmpfs, filled up once the run is going
        try:
            store = disk / "s.zarr"
            proc = subprocess.Popen(_extract_cmd(manifest, store), env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while not (store / "features").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            filler = disk / "filler"
            with open(filler, "wb") as f:  # take every free byte
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            _, err = proc.communicate(timeout=120)
            assert proc.returncode != 0 and "No space left on device" in err, err[-2000:]
            FeatureStore(store).features()  # readable: the last commit is whole
            filler.unlink()
            subprocess.run(_extract_cmd(manifest, store), env=ENV, check=True, capture_output=True)
            assert_same_values(stored_values(store), stored_values(clean))
            assert FeatureStore(store).verify(FeatureStore(store).resolve_feature("fbank")).ok
        finally:
            subprocess.run(["umount", str(disk)], capture_output=True)
        return
    # Not root (no tmpfs): the store's file writes fail with ENOSPC after a few, as a full disk makes them.
    import errno

    import zarr.storage._local as local

    real, calls = local._put, {"n": 0}

    def full_after_some(path, value, exclusive=False):
        calls["n"] += 1
        if calls["n"] > 40 and "features" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, value, exclusive)

    monkeypatch.setattr(local, "_put", full_after_some)
    monkeypatch.setattr("featurize.pipeline.COMMIT_BYTES", 64 * 1024)  # several commits before the disk fills
    store = tmp_path / "s.zarr"
    with pytest.raises(OSError, match="No space left"):
        run_extraction(FeatureStore(store), utts, Fbank(), workers=1)
    monkeypatch.setattr(local, "_put", real)
    FeatureStore(store).features()
    run_extraction(FeatureStore(store), utts, Fbank(), workers=1)
    assert_same_values(stored_values(store), stored_values(clean))


@pytest.mark.parametrize("damage", ["last data chunk", "an ids chunk"])
def test_resume_refuses_a_lost_chunk_instead_of_hiding_it(corpus, tmp_path, small_chunks, monkeypatch, damage):
    """A run stopped half way, then a chunk lost: resuming would rewrite the last, partly filled chunk with fill
    values (and a fresh checksum), or read a lost ids chunk as empty ids and extract those utterances twice.
    It refuses, naming the chunk; after `verify --repair` the resumed run ends with the clean run's values."""
    monkeypatch.setattr(store_module, "ID_CHUNK", 8)  # 30 committed ids span 4 chunks: chunk 0 is not the last
    manifest, clean = corpus
    path = tmp_path / "s.zarr"
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(path)
    run_extraction(store, utts[:30], Fbank(), workers=1)
    name = store.resolve_feature("fbank")
    grp = store.root["features"][name]
    if damage == "last data chunk":
        rows = int(grp.attrs["rows_committed"]["fbank"])
        step = grp["fbank"]["data"].chunks[0]
        assert rows % step, "the test needs a partly filled last chunk"
        chunk, array = rows // step, "fbank/data"
    else:
        chunk, array = 0, "utt_ids"
    _chunk(path, name, array, chunk).unlink()
    with pytest.raises(StoreError, match=f"array {array}: chunk file missing .*chunk {chunk}\\)") as err:
        run_extraction(FeatureStore(path), utts, Fbank(), workers=1)
    assert "featurize verify" in str(err.value)
    assert FeatureStore(path).root["features"][name].attrs["n_committed"] == 30  # nothing was appended

    assert CliRunner().invoke(app, ["verify", "--store", str(path), "--repair"]).exit_code == 0
    run_extraction(FeatureStore(path), utts, Fbank(), workers=1)
    assert FeatureStore(path).verify(name).ok
    assert_same_values(stored_values(path), stored_values(clean))


@pytest.mark.parametrize("damage", ["deleted chunk", "flipped byte"])
def test_damage_to_the_utterance_table_is_an_error_not_empty_labels(corpus, tmp_path, damage):
    """zarr reads a lost chunk of a table column as empty strings or zeros: labels, speakers and times would
    silently go blank. Reading the table, and so `verify` and training, name the damaged column instead."""
    manifest, _ = corpus
    path = tmp_path / "s.zarr"
    _fbank_store(manifest, path)
    (chunk,) = [p for p in (path / "utterances" / "label" / "c").rglob("*") if p.is_file()]
    if damage == "deleted chunk":
        chunk.unlink()
    else:
        _flip(chunk, chunk.stat().st_size // 2)
    reason = "chunk file missing" if damage == "deleted chunk" else "checksum mismatch"
    with pytest.raises(StoreError, match=f"the utterance table is damaged: column label, chunk 0 .*{reason}"):
        FeatureStore(path).utterances()
    res = CliRunner().invoke(app, ["verify", "--store", str(path)])
    assert res.exit_code != 0 and "the utterance table is damaged" in res.output


def test_a_repair_killed_between_its_renames_is_finished_at_the_next_open(corpus, tmp_path, small_chunks):
    manifest, _ = corpus
    path = tmp_path / "s.zarr"
    store = _fbank_store(manifest, path)
    name = store.resolve_feature("fbank")
    _chunk(path, name, "fbank/data", 3).unlink()
    damaged = set(FeatureStore(path).verify(name).damaged)
    died = subprocess.run([sys.executable, "-m", "featurize.cli", "verify", "--store", str(path), "--repair"],
                          env={**ENV, "SERCACHE_DIE_AT": "repair-swap"}, capture_output=True)
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()[-2000:]
    assert not (path / "features" / name).exists()  # the kill left no group in features/
    reopened = FeatureStore(path)
    assert reopened.verify(name).ok and not list((path / "partial").glob(f"{name}.*"))
    assert set(reopened.committed_ids(name)) == {u.utt_id for u in read_corpus("manifest", manifest)[0]} - damaged


# -- a read-only store ----------------------------------------------------------------------------------------
def _read_only(path: Path) -> list[str]:
    """A command prefix under which the store at ``path`` is read-only: a read-only bind mount in a private mount
    namespace when run as root (whom file modes do not stop), its write bits taken off otherwise."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, str(path)]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("no read-only bind mount here (unshare -m, mount)")
    return prefix


def test_a_read_only_store_serves_its_readers_and_refuses_a_writer_in_one_line(tmp_path):
    """A store on a read-only mount (features shared with a cluster's readers): listing, verifying and training
    read it as they would a writable one; extracting into it is one line naming the store, not a traceback."""
    manifest = write_manifest_corpus(tmp_path / "c", 24, seconds=(0.4, 0.6))
    utts, _ = read_corpus("manifest", manifest)
    path = tmp_path / "s.zarr"
    run_extraction(FeatureStore(path), utts, Fbank(), workers=1)
    (path / "locks" / "utterances.lock").unlink()  # as a store copied without its lock files: none can be made
    prefix = _read_only(path)

    def cli(tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", f"{tool}.cli", *args], capture_output=True,
                              text=True, env=ENV, timeout=300)

    listed = cli("featurize", "ls", "--store", str(path))
    assert listed.returncode == 0 and "fbank" in listed.stdout, listed.stderr[-2000:]
    verified = cli("featurize", "verify", "--store", str(path))
    assert verified.returncode == 0 and "no damage" in verified.stdout, verified.stderr[-2000:]
    trained = cli("train", "run", "--store", str(path), "--corpus", "corpus", "--protocol", "speaker-kfold",
                  "--folds", "3", "--head", "probe", "--feature", "fbank", "--max-epochs", "2",
                  "--out", str(tmp_path / "run"))
    assert trained.returncode == 0 and (tmp_path / "run" / "summary.json").exists(), trained.stderr[-2000:]
    refused = cli("featurize", "extract", "--corpus", "manifest", "--data", str(manifest), "--model", "fbank",
                  "-o", "n_mels=24", "--workers", "1", "--store", str(path))
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "cannot be written" in said and ("read-only" in said or "not writable" in said) and str(path) in said
    assert not (path / "locks" / "utterances.lock").exists()
