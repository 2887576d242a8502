"""Extraction end to end: parallel workers, broken files, resumption after SIGKILL, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from featurize.cli import app
from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.pipeline import COMMIT_BYTES, _Writer, run_extraction
from featurize.store import ArraySpec, FeatureStore
from tests.conftest import write_manifest_corpus


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every committed array of every feature group, keyed by group/array."""
    store = FeatureStore(path, create=False)
    out = {}
    for info in store.features():
        out[f"{info.name}/utt_ids"] = np.array(store.committed_ids(info.name))
        for name in info.arrays:
            fa = store.read(info.name, name)
            out[f"{info.name}/{name}"] = fa.data
            if fa.offsets is not None:
                out[f"{info.name}/{name}/offsets"] = fa.offsets
    return out


def test_parallel_extraction_equals_serial_and_skips_broken_files(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "c", 41, corrupt=1, broken=2)
    utts, report = read_corpus("manifest", manifest)
    assert report.n_skipped == 1 and "u0000.wav" in str(report.skipped)  # not audio: skipped by the reader
    serial = run_extraction(FeatureStore(tmp_path / "a.zarr"), utts, Fbank(), workers=1)
    parallel = run_extraction(FeatureStore(tmp_path / "b.zarr"), utts, Fbank(), workers=2)
    assert serial.processed == parallel.processed == 38
    assert set(serial.skipped) == {"corpus/u0001", "corpus/u0002"}  # NaN audio: skipped while extracting
    assert "u0001.wav" in serial.skipped["corpus/u0001"]  # the reason names the file
    assert not serial.complete  # skips leave the feature incomplete, and say so
    a, b = _arrays(tmp_path / "a.zarr"), _arrays(tmp_path / "b.zarr")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    fa = FeatureStore(tmp_path / "a.zarr").read("fbank")
    u = next(u for u in utts if u.utt_id == "corpus/u0005")
    n_samples = int(round(u.duration * 16000))
    assert len(fa.get(u.utt_id)) == 1 + (n_samples - 400) // 160  # Kaldi snip_edges frame count


def test_rerun_resumes_without_redoing_work(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "c", 12)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    first = run_extraction(store, utts, Fbank(), workers=1, limit=5)
    assert first.processed == 5 and not first.complete
    second = run_extraction(store, utts, Fbank(), workers=1)
    assert second.already_done == 5 and second.processed == 7 and second.complete
    third = run_extraction(store, utts, Fbank(), workers=1)
    assert third.processed == 0 and third.complete
    assert len(store.committed_ids(store.resolve_feature("fbank"))) == 12


def _committed(store_path: Path) -> int:
    try:
        feats = zarr.open_group(str(store_path / "features"), mode="r")
        return max((int(feats[g].attrs.get("n_committed", 0)) for g in feats.group_keys()), default=0)
    except Exception:
        return 0


def _layout(store_path: Path) -> str:
    """What a store's feature groups say of themselves and what files they hold: printed when the
    kill-and-resume comparison fails, so a failure says how the stores differ."""
    feats = zarr.open_group(str(store_path / "features"), mode="r")
    lines = []
    for g in feats.group_keys():
        attrs = dict(feats[g].attrs)
        shapes = {k: feats[g][k]["data"].shape for k in attrs["arrays"]}
        files = sorted(str(p.relative_to(store_path)) for p in (store_path / "features" / g).rglob("*") if p.is_file())
        lines.append(f"{g}: n_committed {attrs['n_committed']}, rows_committed {attrs['rows_committed']}, "
                     f"data shapes {shapes}, utt_ids {feats[g]['utt_ids'].shape}, files {files}")
    return "; ".join(lines)


def test_sigkill_mid_extraction_then_resume_gives_identical_arrays(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "c", 300, seconds=(0.8, 1.6))
    cmd = [
        sys.executable,
        "-m",
        "featurize.cli",
        "extract",
        "--corpus",
        "manifest",
        "--data",
        str(manifest),
        "--model",
        "opensmile",
        "-o",
        "set=egemaps",
        "--workers",
        "1",
    ]
    env = {**os.environ, "SERCACHE_COMMIT_SECONDS": "0.05"}
    killed = tmp_path / "killed.zarr"
    kills = 0
    for target in (60, 180):  # kill twice, at different points
        proc = subprocess.Popen(
            cmd + ["--store", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _committed(killed) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert 0 < _committed(killed) < 300 or kills == 0
    assert kills == 2, "extraction finished before it could be killed: make the corpus bigger"
    subprocess.run(cmd + ["--store", str(killed)], env=env, check=True, capture_output=True)
    clean = tmp_path / "clean.zarr"
    subprocess.run(cmd + ["--store", str(clean)], env=env, check=True, capture_output=True)
    a, b = _arrays(killed), _arrays(clean)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k}\nkilled: {_layout(killed)}\nclean: {_layout(clean)}")
    assert len(a[next(k for k in a if k.endswith("utt_ids"))]) == 300
    assert all(i.complete for i in FeatureStore(killed).features())


def test_fbank_matches_kaldi_native_fbank():
    knf = pytest.importorskip("kaldi_native_fbank")
    from featurize.extractors.fbank import kaldi_fbank
    from tests.conftest import tone

    x = tone(1.3, 220, amp=0.5)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.mel_opts.num_bins = 40
    ref = knf.OnlineFbank(opts)
    ref.accept_waveform(16000, (x * 32768).tolist())
    ref.input_finished()
    expected = np.stack([ref.get_frame(i) for i in range(ref.num_frames_ready)])
    ours = kaldi_fbank(x)
    assert ours.shape == expected.shape == (128, 40)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("feature_set", ["compare", "egemaps", "compare_lld"])
def test_opensmile_reused_instance_equals_process_signal(feature_set):
    """One openSMILE instance reset between utterances gives process_signal's values bit for bit, in
    any order: nothing of one utterance leaks into the next."""
    import opensmile

    from featurize.extractors.opensmile import FEATURE_SETS
    from tests.conftest import tone

    signals = [tone(1.7, 180, amp=0.4, seed=1), tone(0.6, 300, amp=0.2, seed=2), tone(2.4, 120, amp=0.6, seed=3)]
    fs, level, _, _ = FEATURE_SETS[feature_set]
    smile = opensmile.Smile(getattr(opensmile.FeatureSet, fs), getattr(opensmile.FeatureLevel, level))
    fresh = [smile.process_signal(x, 16000).to_numpy() for x in signals]
    reused = OpenSmile(feature_set)
    for order in ([0, 1, 2], [2, 0, 1]):
        for i in order:
            (values,) = reused.process_one(None, signals[i]).values()
            np.testing.assert_array_equal(values, fresh[i].reshape(values.shape).astype(np.float32))


def test_opensmile_names_an_utterance_too_short_for_it(tmp_path):
    import soundfile as sf

    from tests.conftest import tone

    manifest = write_manifest_corpus(tmp_path / "c", 2)
    blip = tmp_path / "c" / "blip.wav"
    sf.write(blip, tone(0.03, 200), 16000)
    with manifest.open("a") as f:
        f.write("blip,blip.wav,happy,s9,a blip,d9,0\n")
    utts, _ = read_corpus("manifest", manifest)
    result = run_extraction(FeatureStore(tmp_path / "s.zarr"), utts, OpenSmile("compare"), workers=1)
    assert result.processed == 2 and len(result.skipped) == 1
    (reason,) = result.skipped.values()
    assert "blip.wav" in reason and "too short for openSMILE compare" in reason


@pytest.mark.parametrize(
    "feature_set,dim,kind",
    [("compare", 6373, "utterance"), ("egemaps", 88, "utterance"), ("compare_lld", 65, "frames")],
)
def test_opensmile_sets(tmp_path, feature_set, dim, kind):
    manifest = write_manifest_corpus(tmp_path / "c", 3)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, OpenSmile(feature_set), workers=1)
    info = store.features()[0]
    assert info.name.startswith(f"opensmile_{feature_set}-")
    spec = next(iter(info.arrays.values()))
    assert spec.kind == kind and spec.tail == (dim,)
    fa = store.read(info.name)
    x = fa.get(utts[0].utt_id)
    assert np.isfinite(x).all() and x.shape[-1] == dim
    if kind == "frames":  # 10 ms hop
        assert abs(len(x) - utts[0].duration * 100) < 5


def test_opensmile_input_scaling_matters():
    # float32 in [-1, 1] is the one code path: the same sound scaled to int16 range gives other features.
    from tests.conftest import tone

    ex = OpenSmile("egemaps")
    x = tone(1.0, 150)
    a = ex.process_one(None, x)["functionals"]
    b = ex.process_one(None, x * 32768)["functionals"]
    assert not np.allclose(a, b)


def test_cli_extract_ls_and_errors(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "c", 6, broken=1)
    runner = CliRunner()
    store = str(tmp_path / "s.zarr")
    res = runner.invoke(
        app,
        [
            "extract",
            "--corpus",
            "manifest",
            "--data",
            str(manifest),
            "--model",
            "fbank",
            "--store",
            store,
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 3, res.output  # finished, but with skipped files
    assert "disk estimate" in res.output and "skipped" in res.output and "u0000.wav" in res.output.replace("\n", "")
    res = runner.invoke(app, ["ls", "--store", store])
    assert res.exit_code == 0 and "fbank-" in res.output and "5" in res.output
    res = runner.invoke(
        app, ["extract", "--corpus", "manifest", "--data", str(manifest), "--model", "nope", "--store", store]
    )
    assert res.exit_code == 2 and "unknown extractor 'nope'" in res.output
    res = runner.invoke(
        app,
        [
            "extract",
            "--corpus",
            "manifest",
            "--data",
            str(manifest),
            "--model",
            "fbank",
            "--store",
            store,
            "-o",
            "bogus=1",
        ],
    )
    assert res.exit_code == 2 and "takes no option" in res.output
    # -o values are parsed to the type the extractor declares; a bad one names the option before anything is stored
    for opt, says in (("n_mels=eighty", "option n_mels of fbank wants an integer, got 'eighty'"),
                      ("frame_ms=fast", "option frame_ms of fbank wants a number")):
        res = runner.invoke(app, ["extract", "--corpus", "manifest", "--data", str(manifest), "--model", "fbank",
                                  "--store", store, "-o", opt])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["extract", "--corpus", "manifest", "--data", str(manifest), "--model", "fbank",
                              "--store", store, "--workers", "1", "-o", "n_mels=24", "-o", "frame_ms=20",
                              "-o", "shift_ms=20"])
    assert res.exit_code == 3, res.output  # the same skipped file as above, the rest extracted
    info = next(i for i in FeatureStore(store).features() if i.config["n_mels"] == 24)
    assert info.arrays["fbank"].tail == (24,) and info.config["frame_ms"] == 20.0 and info.n_committed == 5


def test_export_to_hdf5(tmp_path):
    import h5py

    manifest = write_manifest_corpus(tmp_path / "c", 4)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, Fbank(), workers=1)
    res = CliRunner().invoke(
        app, ["export", "--feature", "fbank", "--out", str(tmp_path / "f.h5"), "--store", str(tmp_path / "s.zarr")]
    )
    assert res.exit_code == 0, res.output
    fa = store.read("fbank")
    with h5py.File(tmp_path / "f.h5") as h5:
        assert '"n_mels": 40' in h5.attrs["config"]
        for uid in fa.utt_ids:
            np.testing.assert_array_equal(h5["fbank"][uid][()], fa.get(uid))


def test_writer_commits_when_an_array_has_a_chunk_not_per_utterance_vector(tmp_path):
    """The writer sizes commits by the bytes each array holds: an utterance-level vector is one row,
    so a few MiB of frames is what triggers a commit, not the vector's width counted as rows."""
    store = FeatureStore(tmp_path / "s.zarr")
    specs = [ArraySpec("tokens", "frames", (384,)), ArraySpec("sentence", "utterance", (384,))]
    writer = store.writer("t", "t", {}, specs)
    commits: list[int] = []
    real_commit = writer.commit
    writer.commit = lambda ids, vals: (commits.append(len(ids)), real_commit(ids, vals))  # count, then commit
    sink = _Writer(writer, flush_seconds=1e9)
    sink.start()
    frames = np.zeros((20, 384), np.float16)  # 15 KiB of tokens per utterance
    for i in range(700):
        sink.inbox.put([(f"c/u{i}", {"tokens": frames, "sentence": frames[0]})])
    sink.inbox.put(None)
    sink.join()
    assert sink.error is None
    per_commit = -(-COMMIT_BYTES // frames.nbytes)
    assert commits[:2] == [per_commit, per_commit] and sum(commits) == 700
    assert store.committed_ids(writer.name) == [f"c/u{i}" for i in range(700)]


def test_an_utterance_whose_audio_changed_in_the_corpus_is_never_served_from_old_features(tmp_path):
    """Reading a corpus again where an utterance now points at another slice (or file) of audio marks every
    audio feature holding it stale; the next extract rebuilds it to what a fresh store gets. A change of
    transcript alone leaves audio features as they are."""
    import dataclasses

    manifest = write_manifest_corpus(tmp_path / "c", 8)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, Fbank(), workers=1)
    name = store.resolve_feature("fbank")

    retexted = [dataclasses.replace(u, text="other words") if i == 2 else u for i, u in enumerate(utts)]
    assert store.write_utterances(retexted) == []  # no feature here reads the transcript
    assert store.feature_info(name).stale is None

    sliced = [dataclasses.replace(u, start=0.1, end=0.3) if i == 3 else u for i, u in enumerate(retexted)]
    assert store.write_utterances(sliced, changed_by="a test") == [name]
    assert store.feature_info(name).stale.startswith("audio of 1 utterance(s) changed by a test")
    result = run_extraction(store, sliced, Fbank(), workers=1)
    assert result.processed == 8 and store.feature_info(name).stale is None
    fresh = FeatureStore(tmp_path / "fresh.zarr")
    run_extraction(fresh, sliced, Fbank(), workers=1)
    np.testing.assert_array_equal(store.read(name).get(utts[3].utt_id), fresh.read(name).get(utts[3].utt_id))
    assert len(store.read(name).get(utts[3].utt_id)) == 1 + (3200 - 400) // 160  # the 0.2 s slice


def test_each_speaker_of_a_stereo_dialogue_gets_the_features_of_its_own_channel(tmp_path):
    import soundfile as sf

    from featurize.extractors.fbank import kaldi_fbank
    from tests.conftest import tone

    left, right = tone(1.0, 200), tone(1.0, 1500, amp=0.05, seed=1)
    sf.write(tmp_path / "dialog.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    (tmp_path / "m.csv").write_text("path,label,speaker,channel,id\n"
                                    "dialog.wav,neu,a,0,a\ndialog.wav,ang,b,1,b\ndialog.wav,sad,c,,mix\n")
    utts, _ = read_corpus("manifest", tmp_path / "m.csv")
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, Fbank(), workers=1)
    feats = store.read(store.resolve_feature("fbank"))
    for uid, samples in (("m/a", left), ("m/b", right), ("m/mix", (left + right) / 2)):
        np.testing.assert_array_equal(feats.get(uid), kaldi_fbank(samples).astype(np.float16))
    assert np.abs(feats.get("m/a") - feats.get("m/b")).max() > 1.0


def test_fbank_at_another_sample_rate_is_a_feature_of_its_own(tmp_path):
    from featurize.audio import load_audio
    from featurize.extractors.fbank import kaldi_fbank

    manifest = write_manifest_corpus(tmp_path / "c", 4)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    run_extraction(store, utts, Fbank(), workers=1)
    run_extraction(store, utts, Fbank(sample_rate=48000), workers=1)
    assert store.resolve_feature("fbank").startswith("fbank-")  # the default rate keeps the plain name
    wide = store.read(store.resolve_feature("fbank_48k"))
    u = utts[1]
    expected = kaldi_fbank(load_audio(u.audio_path, sr=48000), sample_rate=48000).astype(np.float16)
    np.testing.assert_array_equal(wide.get(u.utt_id), expected)
    assert len(expected) == len(store.read("fbank").get(u.utt_id))  # the same 10 ms frames
    with pytest.raises(ValueError, match="sample_rate must be in"):
        Fbank(sample_rate=100)


def test_a_run_cut_short_keeps_the_skips_it_did_not_reach(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "c", 8, broken=2)  # two WAVs of NaN: skipped when decoded
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(tmp_path / "s.zarr")
    first = run_extraction(store, utts, Fbank(), workers=1)
    assert set(first.skipped) == {"corpus/u0000", "corpus/u0001"}
    again = run_extraction(store, utts, Fbank(), workers=1, limit=1)  # retries one broken file, not the other
    assert len(again.skipped) == 1
    skips = {uid for _, uid, _ in store.skips()}
    assert skips == {"corpus/u0000", "corpus/u0001"} and not store.feature_info(store.resolve_feature("fbank")).complete
