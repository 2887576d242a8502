"""The command lines as a new user meets them: a mistake gets one clear paragraph and its documented exit code
(no traceback), help lists what the registries hold, `--version` answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from featurize.corpora import read_corpus
from featurize.extractors import EXTRACTORS
from featurize.extractors.fbank import Fbank
from featurize.extractors.opensmile import OpenSmile
from featurize.pipeline import run_extraction
from featurize.store import FeatureStore
from tests.conftest import write_manifest_corpus
from train.heads import HEADS
from train.protocols import PROTOCOLS


def _cli(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{tool}.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    manifest = write_manifest_corpus(root / "c", 24, seconds=(0.5, 0.8))
    utts, _ = read_corpus("manifest", manifest)
    fs = FeatureStore(root / "s.zarr")
    run_extraction(fs, utts, Fbank(), workers=1)
    run_extraction(fs, utts, Fbank(n_mels=24), workers=1)  # two fbank configurations: "fbank" is ambiguous
    run_extraction(fs, utts, OpenSmile("egemaps"), workers=1)
    run_extraction(fs, utts, OpenSmile("compare"), workers=1)  # "opensmile" still means ComParE
    return manifest, root / "s.zarr"


def _mistakes(manifest: Path, store: Path, tmp: Path) -> list[tuple[str, list[str], int, list[str]]]:
    """(what the user did wrong, command, expected exit code, words the message must contain)."""
    train = ["train", "run", "--store", str(store), "--corpus", "corpus", "--protocol", "speaker-kfold"]
    dup = manifest.parent / "dup.csv"  # beside the corpus: its relative paths resolve there
    dup.write_text(manifest.read_text() + manifest.read_text().splitlines()[1] + "\n")
    sweeps = {"not_yaml": "grid:\n  - {head: linear, features: [opensmile]\n",
              "no_grid": "corpus: corpus\nprotocol: speaker-kfold\n",
              "option_at_cell_level": "corpus: corpus\nprotocol: speaker-kfold\ngrid:\n"
                                      "  - {head: linear, features: [opensmile], C: 0.1}\n",
              "no_protocol": "corpus: corpus\ngrid:\n  - {head: linear, features: [opensmile]}\n",
              "seeds_a_number": "corpus: corpus\nprotocol: speaker-kfold\nseeds: 3\ngrid:\n"
                                "  - {head: linear, features: [opensmile]}\n",
              "valid": "corpus: corpus\nprotocol: speaker-kfold\ngrid:\n  - {head: linear, features: [opensmile]}\n",
              "empty_option": "corpus: corpus\nprotocol: speaker-kfold\ngrid:\n"
                              "  - {head: linear, features: [opensmile], options: {C: []}}\n",
              "name_with_a_path": "corpus: corpus\nprotocol: speaker-kfold\ngrid:\n"
                                  "  - {name: ../escape, head: linear, features: [opensmile]}\n"}
    for name, text in sweeps.items():
        (tmp / f"{name}.yaml").write_text(text)
    sweep = ["train", "sweep", "--store", str(store), "--out", str(tmp / "sweep")]
    (tmp / "not-gzip").mkdir()
    (tmp / "not-gzip" / "cuts.jsonl.gz").write_bytes(b'{"id": "not gzip"}\n')
    (tmp / "iemo").mkdir()
    (tmp / "iemo" / "iemocap.pkl").write_bytes(b"")  # cut short: an empty pickle
    return [
        ("a sweep file that is not YAML", [*sweep, str(tmp / "not_yaml.yaml")], 2,
         ["not_yaml.yaml: a sweep file that is not YAML", "line 3"]),
        ("a sweep file without a grid", [*sweep, str(tmp / "no_grid.yaml")], 2, ["no_grid.yaml", "`grid` must be"]),
        ("a head option beside the head in a sweep", [*sweep, str(tmp / "option_at_cell_level.yaml")], 2,
         ["grid entry 1 (linear): unknown key(s) C", "under `options:`"]),
        ("a sweep cell without a protocol", [*sweep, str(tmp / "no_protocol.yaml")], 2,
         ["grid entry 1 (linear) gives no protocol"]),
        ("seeds as one number in a sweep", [*sweep, str(tmp / "seeds_a_number.yaml")], 2,
         ["cell linear: `seeds` must be a non-empty list", "got 3"]),
        ("a sweep cell named with a path", [*sweep, str(tmp / "name_with_a_path.yaml")], 2,
         ["'../escape'", "must not hold a /"]),
        ("a folder given as the sweep file", [*sweep, str(tmp)], 3, ["a folder, not a sweep file"]),
        ("a file given as the sweep's --out", ["train", "sweep", "--store", str(store), "--out", str(manifest),
                                               str(tmp / "valid.yaml")], 2, ["is a file, not a sweep directory"]),
        ("a cuts manifest that is not gzip", ["featurize", "extract", "--corpus", "lhotse", "--data",
                                              str(tmp / "not-gzip" / "cuts.jsonl.gz"), "--model", "fbank",
                                              "--store", str(tmp / "l.zarr")], 3,
         ["cuts.jsonl.gz: not a readable cuts manifest"]),
        ("an empty iemocap.pkl", ["featurize", "extract", "--corpus", "iemocap-text", "--data", str(tmp / "iemo"),
                                  "--model", "fbank", "--store", str(tmp / "i.zarr")], 3,
         ["iemocap.pkl: not a readable pickle"]),
        ("an option listing no values in a sweep", [*sweep, str(tmp / "empty_option.yaml")], 2,
         ["option(s) C list no values"]),
        ("layers that are not numbers", train + ["--head", "probe", "--feature", "opensmile@top"], 2,
         ["feature opensmile@top: the layers after @ are numbers"]),
        ("a folder given as a manifest", ["featurize", "extract", "--corpus", "manifest", "--data", str(tmp),
                                          "--model", "fbank", "--store", str(tmp / "f.zarr")], 3,
         ["a folder; the manifest corpus is a CSV or JSONL file"]),
        ("a file given as the RAVDESS folder", ["featurize", "extract", "--corpus", "ravdess", "--data",
                                                str(manifest), "--model", "fbank", "--store", str(tmp / "f.zarr")], 3,
         ["a file; the ravdess corpus is the folder holding Actor_01"]),
        ("a store given as the run's --out", train + ["--head", "linear", "--feature", "opensmile", "--out",
                                                      str(store)], 2, ["is a feature store, not a run directory"]),
        ("a limit of 0", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest), "--model",
                          "fbank", "--limit", "0", "--store", str(tmp / "f.zarr")], 2,
         ["--limit", "greater than or equal to 1"]),
        ("a head option of the wrong type", train + ["--head", "linear", "--feature", "opensmile", "--set", "C=abc"],
         2, ["option 'C' wants a number", "'abc'"]),
        ("a head option outside its choices", train + ["--head", "cme", "--feature", "fbank", "--set",
                                                       "excite=sideways"], 2,
         ["cme: excite must be one of both, audio, text, none", "'sideways'"]),
        ("unknown head", train + ["--head", "nope", "--feature", "fbank-x"], 2, ["unknown head 'nope'", "linear"]),
        ("unknown extractor, before the corpus is read",
         ["featurize", "extract", "--corpus", "manifest", "--data", "/nowhere.csv", "--model", "nope"], 2,
         ["unknown extractor 'nope'", "fbank"]),
        ("unknown feature", train + ["--head", "linear", "--feature", "hubert"], 3, ["no feature 'hubert'", "stored"]),
        ("ambiguous feature", train + ["--head", "probe", "--feature", "fbank"], 3, ["'fbank' is ambiguous",
                                                                                    "name one in full"]),
        ("unknown protocol", ["train", "run", "--store", str(store), "--corpus", "corpus", "--protocol", "lopo",
                              "--head", "linear", "--feature", "opensmile"], 2, ["unknown protocol 'lopo'"]),
        ("loso without sessions", ["train", "run", "--store", str(store), "--corpus", "corpus", "--protocol", "loso",
                                   "--head", "linear", "--feature", "opensmile"], 2, ["no session",
                                                                                     "speaker-kfold"]),
        ("missing data path", ["featurize", "extract", "--corpus", "manifest", "--data", str(tmp / "no.csv"),
                               "--model", "fbank", "--store", str(tmp / "x.zarr")], 3, ["no.csv", "does not exist"]),
        ("no store", ["train", "run", "--store", str(tmp / "none.zarr"), "--corpus", "corpus", "--protocol",
                      "speaker-kfold", "--head", "linear", "--feature", "fbank"], 3, ["no feature store",
                                                                                     "featurize extract"]),
        ("seeds that are not numbers", train + ["--head", "linear", "--feature", "opensmile", "--seeds", "a,b"], 2,
         ["--seeds", "'a,b'"]),
        ("an unknown --set key", train + ["--head", "linear", "--feature", "opensmile", "--set", "colour=red"], 2,
         ["colour"]),
        ("an unknown label set", train + ["--head", "linear", "--feature", "opensmile", "--labels", "rav9"], 2,
         ["no label set 'rav9'"]),
        ("a bad -o value", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest), "--model",
                            "fbank", "-o", "n_mels=many", "--store", str(tmp / "y.zarr")], 2,
         ["n_mels", "integer", "'many'"]),
        ("more mel bands than FFT bins", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest),
                                          "--model", "fbank", "-o", "n_mels=1000", "--store", str(tmp / "y.zarr")], 2,
         ["n_mels 1000 is too many", "at most 256 bands"]),
        ("an unknown -o option", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest),
                                  "--model", "opensmile", "-o", "sets=egemaps", "--store", str(tmp / "y.zarr")], 2,
         ["sets", "set"]),
        ("duplicate ids in a manifest", ["featurize", "extract", "--corpus", "manifest", "--data", str(dup),
                                         "--model", "fbank", "--store", str(tmp / "d.zarr"), "--workers", "1"], 3,
         ["duplicate utterance id", "dup.csv line"]),
        ("verify a store that does not exist", ["featurize", "verify", "--store", str(tmp / "none.zarr")], 3,
         ["no feature store"]),
        ("predict with a run directory that does not exist", ["train", "predict", str(tmp / "no-run"),
                                                               str(manifest)], 3, ["no-run"]),
        ("a model path that does not exist", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest),
                                              "--model", "hubert", "--model-path", str(tmp / "no-model"), "--store",
                                              str(tmp / "m.zarr")], 3, ["--model-path", "no-model does not exist"]),
        ("a Whisper model path that is a file", ["featurize", "transcribe", "--corpus", "manifest", "--data",
                                                 str(manifest), "--model-path", str(manifest), "--store",
                                                 str(tmp / "m.zarr")], 3, ["is a file, not a model directory"]),
        ("a Whisper model that is neither a folder nor a model name", ["featurize", "transcribe", "--corpus",
                                                                       "manifest", "--data", str(manifest),
                                                                       "--model-path", "nosuch", "--store",
                                                                       str(tmp / "m.zarr")], 3,
         ["--model-path nosuch does not exist"]),
        ("a negative worker count", ["featurize", "extract", "--corpus", "manifest", "--data", str(manifest),
                                     "--model", "fbank", "--workers", "-2", "--store", str(tmp / "m.zarr")], 2,
         ["--workers", "greater than or equal to 1"]),
        ("a C that is not positive", train + ["--head", "linear", "--feature", "opensmile", "--set", "C=0"], 2,
         ["linear: C must be positive", "got 0"]),
    ] + ([] if _has_cuda() else [
        ("training on a GPU this machine lacks", train + ["--head", "linear", "--feature", "opensmile", "--device",
                                                         "cuda"], 2, ["device cuda", "no CUDA device"]),
        ("extracting on a GPU this machine lacks", ["featurize", "extract", "--corpus", "manifest", "--data",
                                                    str(manifest), "--model", "minilm", "--device", "cuda",
                                                    "--store", str(tmp / "g.zarr")], 2, ["device cuda",
                                                                                         "no CUDA device"]),
    ])


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_user_mistakes_get_one_paragraph_and_their_exit_code(store, tmp_path):
    manifest, path = store
    cases = _mistakes(manifest, path, tmp_path)
    assert len(cases) >= 12
    for what, cmd, code, words in cases:
        res = _cli(cmd[0], *cmd[1:])
        said = " ".join(res.stderr.split())
        assert res.returncode == code, f"{what}: exit {res.returncode}, wanted {code}\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr and "File \"" not in res.stderr, f"{what}: traceback\n{res.stderr}"
        for w in words:
            assert w in said, f"{what}: {w!r} not in the message\n{res.stderr}"
        error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) <= 1, f"{what}: more than one error\n{res.stderr}"


def test_debug_shows_the_traceback(store, tmp_path):
    _, path = store
    cmd = ["run", "--store", str(path), "--corpus", "corpus", "--protocol", "speaker-kfold", "--head", "nope",
           "--feature", "fbank"]
    res = _cli("train", "--debug", *cmd)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_the_readmes_feature_names_work_with_several_configs_stored(store, tmp_path):
    _, path = store
    fs = FeatureStore(path, create=False)
    assert fs.resolve_feature("opensmile").startswith("opensmile_compare-")  # eGeMAPS is stored too
    assert fs.resolve_feature("opensmile_egemaps").startswith("opensmile_egemaps-")


def test_help_lists_the_registries_and_version_answers():
    res = _cli("train", "run", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for name in HEADS.names():
        assert name in text
    for protocol in PROTOCOLS:
        assert protocol in text
    assert "NAME[:ARRAY][@LAYERS]" in text and "rav4|rav8" in text
    res = _cli("featurize", "extract", "--help")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "wav2vec2" in text and "wavlm" in text
    for name in EXTRACTORS.names():
        assert name in text
    for tool in ("train", "featurize"):
        res = _cli(tool, "--version")
        assert res.returncode == 0 and res.stdout.startswith(f"{tool} (sercache) ")
        assert "--install-completion" in _cli(tool, "--help").stdout


def test_heads_and_models_print_their_tables():
    res = _cli("train", "heads")
    assert res.returncode == 0
    for name in HEADS.names():
        assert name in res.stdout
    assert "FG-CME" in res.stdout
    res = _cli("featurize", "models")
    assert res.returncode == 0 and all(n in res.stdout for n in EXTRACTORS.names())


def test_export_creates_its_folder(store, tmp_path):
    _, path = store
    out = tmp_path / "new" / "folder" / "f.h5"
    res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert out.exists()
    failed = tmp_path / "failed.h5"  # an export that fails leaves nothing behind, not even its .partial
    res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--array", "nope",
               "--out", str(failed))
    assert res.returncode != 0 and not list(tmp_path.glob("failed.h5*"))


def test_rm_removes_one_group_and_resolves_the_ambiguity(store, tmp_path):
    _, path = store
    copy = tmp_path / "s.zarr"
    shutil.copytree(path, copy)
    fs = FeatureStore(copy, create=False)
    before = {i.name for i in fs.features()}
    fbanks = sorted(i.name for i in fs.features() if i.extractor == "fbank")
    narrow = next(n for n in fbanks if fs.read(n).data.shape[1] == 24)
    res = _cli("featurize", "rm", "fbank", "--store", str(copy))  # a short name is refused: say which
    assert res.returncode == 2 and "full name" in res.stderr and fbanks[0] in res.stderr
    res = _cli("featurize", "rm", narrow, "--store", str(copy))
    assert res.returncode == 0, res.stderr
    assert f"removed {narrow}" in " ".join((res.stdout + res.stderr).split())
    fs = FeatureStore(copy, create=False)
    assert fs.read("fbank").data.shape[1] == 40  # the short name resolves again, to the one left
    assert len(fs.utterances()) == 24 and {i.name for i in fs.features()} == before - {narrow}


def test_a_refused_or_damaged_run_is_named_and_nothing_it_holds_is_changed(store, tmp_path):
    """A rerun refused for another configuration leaves the directory's run.yaml as it was; a bad option is
    refused before a run directory exists; a run file cut short is one line naming it (exit 3)."""
    manifest, path = store
    train = ["run", "--store", str(path), "--corpus", "corpus", "--protocol", "speaker-kfold", "--feature",
             "opensmile"]
    run = tmp_path / "run"
    res = _cli("train", *train, "--head", "linear", "--out", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    run_yaml = (run / "run.yaml").read_text()
    res = _cli("train", *train, "--head", "linear", "--set", "C=0.1", "--out", str(run))
    assert res.returncode == 2 and "holds results of a different configuration" in " ".join(res.stderr.split())
    assert (run / "run.yaml").read_text() == run_yaml  # still reruns what the directory holds
    res = _cli("train", *train, "--head", "linear", "--set", "C=abc", "--out", str(tmp_path / "bad"))
    assert res.returncode == 2 and not (tmp_path / "bad").exists()
    res = _cli("train", *train, "--head", "linear", "--out", str(manifest))
    assert res.returncode == 2 and "is a file, not a run directory" in " ".join(res.stderr.split())

    folds = sorted((run / "folds").iterdir())
    (folds[0] / "model.pt").write_bytes(b"")
    res = _cli("train", "predict", str(run), str(manifest.parent / "wav" / "u0000.wav"))
    said = " ".join(res.stderr.split())
    assert res.returncode == 3 and f"{folds[0] / 'model.pt'}: a fold's model, damaged" in said, res.stderr[-2000:]
    (folds[1] / "metrics.json").write_text("{}")
    for cmd in (["report", str(run)], ["compare", str(run), str(run)]):
        res = _cli("train", *cmd)
        said = " ".join(res.stderr.split())
        assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert f"{folds[1] / 'metrics.json'}: a fold's test metrics, damaged" in said
    (folds[1] / "metrics.json").write_text('{"wa": 0.5, "ua"')  # cut short
    res = _cli("train", "report", str(run))
    assert res.returncode == 3 and "not JSON" in res.stderr and "metrics.json" in res.stderr


def test_export_keeps_a_file_that_is_not_an_export(store, tmp_path):
    manifest, path = store
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--out", str(keep))
    assert res.returncode == 3 and "is not a feature exported by sercache" in " ".join(res.stderr.split())
    assert keep.read_text() == "mine"
    theirs = tmp_path / "theirs.h5"  # an HDF5 file of the user's own, not an export
    with h5py.File(theirs, "w") as h5:
        h5["x"] = [1, 2, 3]
    res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--out", str(theirs))
    assert res.returncode == 3 and "not a feature exported by sercache" in " ".join(res.stderr.split())
    with h5py.File(theirs, "r") as h5:
        assert list(h5["x"][:]) == [1, 2, 3]
    res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--out", str(tmp_path))
    assert res.returncode == 3 and "is a folder" in res.stderr and not list(tmp_path.glob("*.partial"))
    out = tmp_path / "f.h5"
    for _ in range(2):  # an earlier export is replaced
        res = _cli("featurize", "export", "--store", str(path), "--feature", "opensmile_egemaps", "--out", str(out))
        assert res.returncode == 0 and out.exists(), res.stderr


def _said(res: subprocess.CompletedProcess) -> str:
    return " ".join((res.stdout + res.stderr).split())  # rich wraps its lines


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_a_dry_run_counts_the_work_and_writes_nothing(store, tmp_path):
    manifest, _ = store
    new = tmp_path / "new.zarr"
    extract = ["extract", "--corpus", "manifest", "--data", str(manifest), "--model", "fbank", "--workers", "1"]
    res = _cli("featurize", *extract, "--store", str(new), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "24 to extract, 0 stored" in _said(res)
    assert not new.exists()  # no store, no lock file, no reading record
    res = _cli("featurize", *extract, "--store", str(new), "--limit", "5")
    assert res.returncode == 0, res.stderr
    before = _tree(new)
    res = _cli("featurize", *extract, "--store", str(new), "--dry-run", "--limit", "4")
    assert res.returncode == 0, res.stderr
    assert "4 to extract, 5 stored" in _said(res)
    res = _cli("featurize", *extract, "--store", str(new), "--dry-run", "-o", "n_mels=24")  # a group not made yet
    assert res.returncode == 0, res.stderr
    assert "24 to extract, 0 stored" in _said(res)
    assert _tree(new) == before  # the store is as the extraction left it
