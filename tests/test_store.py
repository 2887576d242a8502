"""The store: round-trips, the schema check, fingerprints, atomic table swap."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from featurize.records import Utterance, Word
from featurize.store import CHUNK_BYTES, ArraySpec, FeatureStore, StoreError


def _utts(n: int) -> list[Utterance]:
    return [
        Utterance(
            f"c/u{i}",
            "c",
            f"s{i % 2}",
            "neu",
            text=None if i == 0 else f"t {i}",
            words=[Word("a", 0.0, 0.5)] if i == 1 else None,
            soft_labels={"neu": 0.75, "ang": 0.25},
            turn=i,
            channel=1 if i == 3 else None,
            duration=1.0 + i,
        )
        for i in range(n)
    ]


def test_utterance_table_round_trip(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    utts = _utts(5)
    store.write_utterances(utts)
    back = FeatureStore(tmp_path / "s.zarr", create=False).utterances()
    assert back == utts
    assert back[0].text is None and back[2].text == "t 2"  # absent text stays absent, not ""


def test_a_table_written_before_the_channel_column_reads_every_channel_as_the_mean(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    store.write_utterances(_utts(5))
    import shutil

    shutil.rmtree(tmp_path / "s.zarr" / "utterances" / "channel")  # as the first schema-1 stores were written
    older = FeatureStore(tmp_path / "s.zarr", create=False)
    older.validate()
    assert [u.channel for u in older.utterances()] == [None] * 5


def test_another_channel_of_the_same_file_is_another_audio_input():
    from featurize.store import input_changes

    left = Utterance("c/u", "c", "s", audio_path="/d/a.wav", start=1.0, end=2.0)
    right = Utterance("c/u", "c", "s", audio_path="/d/a.wav", start=1.0, end=2.0, channel=1)
    assert input_changes(left, right) == {"audio"}
    assert input_changes(right, right) == set()


def test_rereading_a_corpus_keeps_asr_words(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    u = _utts(3)
    u[2].words, u[2].word_source = [Word("x", 0.1, 0.2)], "asr"
    u[2].extra = {"asr_text": "x", "note": "old"}
    store.write_utterances(u)
    again = _utts(3)  # the corpus again, without words
    again[2].extra = {"note": "new"}
    store.write_utterances(again)
    assert store.utterances()[2].words == [Word("x", 0.1, 0.2)]
    assert store.utterances()[2].word_source == "asr"
    assert store.utterances()[2].extra == {"asr_text": "x", "note": "new"}  # kept, and the corpus's own wins


def test_frames_and_utterance_arrays_round_trip_float16_exactly(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    specs = [ArraySpec("f", "frames", (3, 8)), ArraySpec("u", "utterance", (8,))]
    w = store.writer("feat", "feat", {"a": 1}, specs)
    rng = np.random.default_rng(0)
    values = [{"f": rng.standard_normal((n, 3, 8)).astype(np.float16), "u": rng.standard_normal(8)} for n in (4, 0, 7)]
    w.commit(["c/a", "c/b"], values[:2])
    w.commit(["c/c"], values[2:])
    w.finish(True)
    f = store.read("feat", "f")
    assert f.utt_ids == ["c/a", "c/b", "c/c"]
    assert list(f.offsets) == [0, 4, 4, 11]
    for uid, v in zip(f.utt_ids, values, strict=True):
        np.testing.assert_array_equal(f.get(uid), v["f"])  # float16 in, float16 out: bit-exact
    assert f.get("c/b").shape == (0, 3, 8)
    sub = store.read("feat", "f", layers=[2, 0])
    np.testing.assert_array_equal(sub.get("c/c"), values[2]["f"][:, [2, 0]])
    np.testing.assert_allclose(store.read("feat", "u").get("c/c"), values[2]["u"].astype(np.float16))
    with pytest.raises(StoreError, match="has 3 layers"):
        store.read("feat", "f", layers=[5])


def test_whole_feature_read_matches_zarr_across_chunks_zero_chunks_and_uncommitted_rows(tmp_path):
    """store.read decodes chunk files itself: it must agree with zarr on full chunks, a chunk zarr never
    wrote (all fill value), the partial last chunk, and rows written past the commit marker."""
    store = FeatureStore(tmp_path / "s.zarr")
    w = store.writer("feat", "feat", {}, [ArraySpec("f", "frames", (64,))])
    per_chunk = CHUNK_BYTES // (64 * 2)  # float16 rows in one chunk
    rng = np.random.default_rng(1)
    first = rng.standard_normal((per_chunk + 5, 64)).astype(np.float16)
    zeros = np.zeros((per_chunk * 2, 64), np.float16)  # covers a whole chunk: zarr skips writing it
    last = rng.standard_normal((37, 64)).astype(np.float16)
    w.commit(["c/a", "c/b", "c/c"], [{"f": first}, {"f": zeros}, {"f": last}])
    data = store.root["features"][w.name]["f"]["data"]
    data.resize((data.shape[0] + 10, 64))
    data[-10:] = 7.0  # a killed run's rows past rows_committed: never read
    got = store.read("feat", "f")
    want = np.concatenate([first, zeros, last])
    np.testing.assert_array_equal(got.data, want)
    np.testing.assert_array_equal(got.data, data[: len(want)])


def test_commit_rejects_wrong_shape_and_non_finite_values(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    w = store.writer("feat", "feat", {}, [ArraySpec("f", "frames", (4,))])
    with pytest.raises(ValueError, match="c/x has rows of shape"):
        w.commit(["c/x"], [{"f": np.zeros((2, 5))}])
    with pytest.raises(ValueError, match="c/y has non-finite values"):
        w.commit(["c/y"], [{"f": np.array([[1e6, 0, 0, 0]])}])  # overflows float16
    assert store.features()[0].n_committed == 0


def test_changed_config_makes_a_new_group_and_names_resolve(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    spec = [ArraySpec("f", "frames", (4,))]
    a = store.writer("fbank", "fbank", {"n_mels": 40}, spec)
    a.commit(["c/a"], [{"f": np.ones((2, 4))}])
    assert store.writer("fbank", "fbank", {"n_mels": 40}, spec).name == a.name  # same config: resumed
    b = store.writer("fbank", "fbank", {"n_mels": 80}, spec)
    assert b.name != a.name
    assert store.committed_ids(a.name) == ["c/a"] and store.committed_ids(b.name) == []
    with pytest.raises(StoreError, match="ambiguous"):
        store.resolve_feature("fbank")
    assert store.resolve_feature(a.name) == a.name
    with pytest.raises(StoreError, match="no feature 'hubert'"):
        store.resolve_feature("hubert")


def test_schema_is_checked_on_open(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    store.write_utterances(_utts(2))
    w = store.writer("feat", "feat", {}, [ArraySpec("f", "frames", (4,))])
    meta = tmp_path / "s.zarr" / "features" / w.name / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["n_committed"]
    meta.write_text(json.dumps(doc))
    w.close()
    # a half-made group (an older sercache built groups in place) is ignored and named, never fatal ...
    again = FeatureStore(tmp_path / "s.zarr")
    assert [f.name for f in again.features()] == []
    assert "n_committed" in again.ignored[w.name]
    # ... and the next writer of that configuration rebuilds it
    rebuilt = again.writer("feat", "feat", {}, [ArraySpec("f", "frames", (4,))])
    assert rebuilt.name == w.name and rebuilt.n == 0
    rebuilt.finish(True)
    assert [f.name for f in FeatureStore(tmp_path / "s.zarr").features()] == [w.name]
    root = tmp_path / "t.zarr"
    FeatureStore(root)
    doc = json.loads((root / "zarr.json").read_text())
    doc["attributes"]["schema_version"] = 99
    (root / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="schema version 99"):
        FeatureStore(root)
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path / "missing.zarr", create=False)


def test_interrupted_table_swap_recovers(tmp_path):
    path = tmp_path / "s.zarr"
    store = FeatureStore(path)
    store.write_utterances(_utts(3))
    # A kill between the two renames of a table swap: only utterances.old is left.
    (path / "utterances").rename(path / "utterances.old")
    assert len(FeatureStore(path).utterances()) == 3
    assert not (path / "utterances.old").exists()


def test_uncommitted_rows_are_invisible_and_trimmed(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    w = store.writer("feat", "feat", {}, [ArraySpec("f", "frames", (2,))])
    w.commit(["c/a"], [{"f": np.ones((3, 2))}])
    data = w.group["f"]["data"]
    data.resize((10, 2))  # what a run killed after writing data but before its commit marker leaves
    data[3:10] = np.full((7, 2), 5.0)
    again = FeatureStore(tmp_path / "s.zarr").writer("feat", "feat", {}, [ArraySpec("f", "frames", (2,))])
    assert again.done_ids() == {"c/a"}
    assert store.read("feat", "f").data.shape == (3, 2)
    again.finish(False)
    assert w.group["f"]["data"].shape == (3, 2)


def test_schema_file_states_the_layout_the_code_writes():
    from featurize.store import ID_CHUNK, SCHEMA_VERSION, load_schema

    schema = load_schema()
    defaults = schema["feature"]["defaults"]
    assert defaults["chunk_bytes"] == CHUNK_BYTES and defaults["id_chunk"] == ID_CHUNK
    assert schema["schema_version"] == SCHEMA_VERSION


def test_commit_marker_is_one_write_of_consistent_attributes(tmp_path, monkeypatch):
    """Every state of a feature group's attributes that ever reaches the disk is consistent: a kill
    can land between any two file writes, so the marker must never be written key by key."""
    import zarr.storage._local as local

    store = FeatureStore(tmp_path / "s.zarr")
    spec = ArraySpec("vec", "utterance", (3,), "float32")
    writer = store.writer("toy", "toy", {"v": 1}, [spec])
    seen: list[dict] = []
    real_put = local._put

    def recording_put(path, value, exclusive=False):
        if path.name == "zarr.json" and path.parent.name == writer.name:
            seen.append(json.loads(bytes(value.as_buffer_like()))["attributes"])
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", recording_put)
    for k in range(3):
        writer.commit([f"u{k}a", f"u{k}b"], [{"vec": np.ones(3)}, {"vec": np.zeros(3)}])
    writer.finish(complete=True)
    assert len(seen) == 4  # one write per commit, one for finish
    assert all(a["rows_committed"]["vec"] == a["n_committed"] for a in seen)
    assert [a["n_committed"] for a in seen] == [2, 4, 6, 6]


def test_object_store_table_write_killed_in_the_second_of_the_last_one_keeps_that_table(monkeypatch):
    """On an object store each utterance table is a new version that the root points at once whole. Two writes
    in the same second by one process (transcribe saves every few hundred utterances) once built the second
    version under the first one's name, deleting the table readers were pointed at."""
    import time as time_module

    import zarr

    monkeypatch.setattr(time_module, "strftime", lambda *a: "20261207T000000")  # both writes in one second
    store = FeatureStore("memory://table-versions/s.zarr")
    store.write_utterances(_utts(3))
    first = store._table_name()
    real = zarr.Group.create_array
    calls = {"n": 0}

    def killed_while_building(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed while building the new table")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", killed_while_building)
    with pytest.raises(KeyboardInterrupt):
        store.write_utterances(_utts(5))
    monkeypatch.setattr(zarr.Group, "create_array", real)
    reader = FeatureStore("memory://table-versions/s.zarr", create=False)
    assert reader._table_name() == first
    assert [u.utt_id for u in reader.utterances()] == [u.utt_id for u in _utts(3)]
    reader.write_utterances(_utts(5))  # the next write completes, and drops the half-built version
    assert [u.utt_id for u in FeatureStore("memory://table-versions/s.zarr").utterances()] == \
        [u.utt_id for u in _utts(5)]


def test_a_writer_whose_group_was_taken_over_writes_nothing_more():
    """Two writers on one group (the first stalled past its lease and a second took the group over): the
    stalled one's next commit, and its finish, are refused by the commit-marker fence before they write, so
    the new owner's rows are neither overwritten nor trimmed."""
    from featurize.store import FeatureWriter

    store = FeatureStore("memory://fence/s.zarr")
    store.write_utterances([Utterance(f"c/{x}", "c", "s", "neu") for x in "abcxyz"])
    specs = [ArraySpec("f", "frames", (2,))]
    first = store.writer("feat", "feat", {}, specs)
    name = first.name
    first.close()
    group = lambda: FeatureStore("memory://fence/s.zarr").root["features"][name]  # noqa: E731
    stalled = FeatureWriter(group(), name, None, store)
    owner = FeatureWriter(group(), name, None, store)
    owner.commit(["c/a", "c/b", "c/c"], [{"f": np.full((k, 2), k, np.float16)} for k in (1, 2, 3)])
    for act in (lambda: stalled.commit(["c/x"], [{"f": np.zeros((5, 2), np.float16)}]),
                lambda: stalled.finish(False)):
        with pytest.raises(StoreError, match="another writer now owns the group"):
            act()
    owner.finish(True)
    after = FeatureStore("memory://fence/s.zarr")
    assert after.committed_ids(name) == ["c/a", "c/b", "c/c"] and after.verify(name).ok
    assert after.read(name, "f").offsets.tolist() == [0, 1, 3, 6]


def test_a_lease_not_renewed_for_half_its_time_counts_as_lost():
    """A waiter may break a lease once it has not been renewed for its ttl; the holder stops counting on it
    at half that, and so does every re-entrant holder in its process."""
    import time

    import fsspec

    from featurize.locks import LeaseLock

    fs = fsspec.filesystem("memory")
    lease = LeaseLock(fs, "/leases/silent.lock", "feature x", ttl=0.6).acquire()
    time.sleep(0.5)
    assert not lease.lost  # renewed every 0.2 s
    lease._stop.set()  # the keep-alive stops (the process stalls, or the server is unreachable)
    time.sleep(0.5)
    assert lease.lost
    assert LeaseLock(fs, "/leases/silent.lock", "feature x", ttl=0.6).acquire().lost


def test_a_half_made_group_named_in_full_is_an_error_naming_it():
    """An object store builds a group in place, attributes last: asked for by its full name while half made, it
    is refused with one line that says so (not a KeyError from deep inside)."""
    store = FeatureStore("memory://half-made/s.zarr")
    store.write_utterances(_utts(1))
    writer = store.writer("feat", "feat", {}, [ArraySpec("f", "utterance", (2,))])
    writer.finish(False)
    store.root["features"][writer.name].attrs.put({})  # what a reader sees while a writer rebuilds it
    reader = FeatureStore("memory://half-made/s.zarr")
    assert [f.name for f in reader.features()] == [] and writer.name in reader.ignored
    for call in (reader.read, reader.verify):
        with pytest.raises(StoreError, match=f"feature {writer.name} .* is half made"):
            call(writer.name)


def _two_groups(where: str) -> tuple[FeatureStore, list[str]]:
    store = FeatureStore(where)
    store.write_utterances(_utts(2))
    for n in (2, 3):
        w = store.writer("feat", "feat", {"n": n}, [ArraySpec("f", "utterance", (n,))])
        w.commit(["c/u0", "c/u1"], [{"f": np.ones(n)}, {"f": np.zeros(n)}])
        w.finish(True)
    return store, sorted(f.name for f in store.features())


@pytest.mark.parametrize("where", ["local", "memory://damaged-group/s.zarr"])
@pytest.mark.parametrize("damaged", ["zarr.json", "f/zarr.json", "f/data/zarr.json"])
def test_a_group_whose_metadata_is_damaged_is_named_and_the_others_stay_usable(tmp_path, where, damaged):
    """A feature group's zarr.json (its own or one of its arrays') cut short or overwritten: that group is set
    aside and named (verify shows it, --repair removes it, the next writer of its configuration rebuilds it), while
    every other group reads as before, locally and on an object store."""
    where = str(tmp_path / "s.zarr") if where == "local" else f"{where[:-7]}-{damaged.replace('/', '-')}/s.zarr"
    _, names = _two_groups(where)
    with fsspec.open(f"{where}/features/{names[0]}/{damaged}", "wb") as f:
        f.write(b"garbage")
    again = FeatureStore(where, create=False)
    assert [f.name for f in again.features()] == [names[1]]
    assert f"features/{names[0]}/{damaged} is not JSON" in again.ignored[names[0]]
    np.testing.assert_array_equal(again.read(names[1]).get("c/u1"), np.zeros(3))
    assert again.remove_ignored() == [names[0]]
    assert [f.name for f in FeatureStore(where, create=False).features()] == [names[1]]
    assert not FeatureStore(where, create=False).ignored
    # not repaired first: the next writer of that configuration rebuilds the group whole
    _, names = _two_groups(where)
    with fsspec.open(f"{where}/features/{names[0]}/{damaged}", "wb") as f:
        f.write(b"garbage")
    rebuilt = FeatureStore(where, create=False).writer("feat", "feat", {"n": 2}, [ArraySpec("f", "utterance", (2,))])
    assert rebuilt.name == names[0] and rebuilt.n == 0
    rebuilt.close()


def test_damaged_store_metadata_is_one_error_naming_the_file_and_a_foreign_folder_never_becomes_a_store(tmp_path):
    path = tmp_path / "s.zarr"
    _two_groups(str(path))
    table = (path / "utterances" / "zarr.json").read_text()
    for key in ("utterances/zarr.json", "zarr.json"):
        (path / key).write_text('{"zarr_format": 3, "node_t')  # cut short
        with pytest.raises(StoreError, match=f"damaged: {key} is not JSON"):
            FeatureStore(path, create=False)
        if key.startswith("utterances"):
            (path / key).write_text(table)
    (path / "zarr.json").unlink()  # lost: never replaced by a new empty root over the features still there
    with pytest.raises(StoreError, match=r"root metadata \(zarr.json\) is missing"):
        FeatureStore(path)
    corpus = tmp_path / "corpus"  # a corpus folder given as --store by mistake
    (corpus / "Actor_01").mkdir(parents=True)
    (corpus / "README.txt").write_text("mine")
    with pytest.raises(StoreError, match="is a folder that is not a feature store .*Actor_01, README.txt"):
        FeatureStore(corpus)
    assert sorted(p.name for p in corpus.iterdir()) == ["Actor_01", "README.txt"]
    with pytest.raises(StoreError, match="is a file, not a feature store"):
        FeatureStore(corpus / "README.txt")
    remote = "memory://lost-root/s.zarr"  # on an object store too
    _two_groups(remote)
    FeatureStore(remote).location.fs.rm("/lost-root/s.zarr/zarr.json")
    with pytest.raises(StoreError, match=r"root metadata \(zarr.json\) is missing"):
        FeatureStore(remote)
