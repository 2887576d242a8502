"""A catalogue of bad input: every case ends in an extracted utterance or a named skip with its reason, the
good files are always extracted, the store always reads, and the run's status says something was skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from featurize.cli import app
from featurize.corpora import read_corpus
from featurize.store import FeatureStore
from tests.conftest import tone

SR = 16000


def _wav(path: Path, seconds: float = 0.8, sr: int = SR, channels: int = 1, subtype: str = "PCM_16",
         fmt: str | None = None, freq: float = 180.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(seconds, freq, sr=sr)
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    sf.write(path, x, sr, subtype=subtype, format=fmt)
    return path


def _truncated(path: Path) -> Path:
    """A 2 s WAV cut to its first third, as an interrupted copy leaves it (the header still says 2 s)."""
    _wav(path, seconds=2.0)
    raw = path.read_bytes()
    path.write_bytes(raw[: 44 + (len(raw) - 44) // 3])
    return path


# (id, how the row is made, "extracted" or the reason it is skipped under)
def _catalogue(root: Path) -> list[dict]:
    a = root / "audio"
    rows = [
        ("good_a", {"path": _wav(a / "good a.wav")}, "extracted"),
        ("good_b", {"path": _wav(a / "good_b.wav", freq=300)}, "extracted"),
        ("zero_bytes", {"path": (a / "empty.wav", (a / "empty.wav").write_bytes(b""))[0]}, "unreadable audio"),
        ("text_as_wav", {"path": (a / "notes.wav", (a / "notes.wav").write_text("not audio"))[0]},
         "unreadable audio"),
        ("missing", {"path": a / "nowhere.wav"}, "missing audio file"),
        ("directory", {"path": (a / "folder.wav", (a / "folder.wav").mkdir())[0]}, "missing audio file"),
        ("header_only", {"path": _wav(a / "header.wav", seconds=0.0)}, "unreadable audio"),
        ("truncated", {"path": _truncated(a / "truncated.wav")}, "unreadable audio"),
        ("empty_speaker", {"path": _wav(a / "nospk.wav"), "speaker": ""}, "missing speaker"),
        ("one_ms_slice", {"path": _wav(a / "long.wav", seconds=1.0), "start": "0.2", "end": "0.201"},
         "extraction"),
        ("nan", {"path": _nonfinite(a / "nan.wav", np.nan)}, "extraction"),
        ("inf", {"path": _nonfinite(a / "inf.wav", np.inf)}, "extraction"),
        ("ten_minutes", {"path": _wav(a / "ten_minutes.wav", seconds=600.0)}, "extracted"),
        ("eight_khz", {"path": _wav(a / "8k.wav", sr=8000)}, "extracted"),
        ("hi_res", {"path": _wav(a / "96k24.wav", sr=96000, subtype="PCM_24")}, "extracted"),
        ("six_channels", {"path": _wav(a / "six.wav", channels=6)}, "extracted"),
        ("mp3", {"path": _wav(a / "clip.mp3", fmt="MP3", subtype="MPEG_LAYER_III")}, "extracted"),
        ("ogg", {"path": _wav(a / "clip.ogg", fmt="OGG", subtype="VORBIS")}, "extracted"),
        ("unicode", {"path": _wav(a / "été déjà vu 情.wav")}, "extracted"),
        ("empty_label", {"path": _wav(a / "unlabelled.wav"), "label": ""}, "extracted"),
        ("end_past_file", {"path": _wav(a / "short.wav", seconds=0.8), "start": "0.1", "end": "9.0"}, "extracted"),
        ("start_past_file", {"path": _wav(a / "short2.wav", seconds=0.8), "start": "5.0", "end": "6.0"},
         "bad number"),
        ("reversed", {"path": _wav(a / "rev.wav"), "start": "0.6", "end": "0.2"}, "bad number"),
        ("negative_start", {"path": _wav(a / "neg.wav"), "start": "-1"}, "bad number"),
        ("not_a_number", {"path": _wav(a / "nan_time.wav"), "start": "soon"}, "bad number"),
        ("good_a", {"path": _wav(a / "dup.wav")}, "duplicate utterance id"),
    ]
    out = []
    for uid, fields, outcome in rows:
        row = {"id": uid, "path": str(fields["path"]), "label": "happy", "speaker": "s1"}
        row.update({k: str(v) for k, v in fields.items() if k != "path"})
        out.append({"row": row, "outcome": outcome})
    return out


def _nonfinite(path: Path, value: float) -> Path:
    x = tone(0.8, 200)
    x[100:200] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("bad")
    cases = _catalogue(root)
    manifest = root / "catalogue.csv"
    fields = ["id", "path", "label", "speaker", "start", "end"]
    # a BOM and CRLF line ends, as a spreadsheet saves it, plus a row with a surplus cell
    with manifest.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(fields)
        for c in cases:
            w.writerow([c["row"].get(k, "") for k in fields])
        w.writerow(["surplus", str(root / "audio" / "good_b.wav"), "sad", "s2", "", "", "one too many"])
    return manifest, cases


def test_every_bad_input_is_extracted_or_named(catalogue, tmp_path):
    manifest, cases = catalogue
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(app, ["extract", "--corpus", "manifest", "--data", str(manifest), "--model", "fbank",
                                   "--store", str(store), "--workers", "1"])
    out = " ".join(res.output.split())
    assert res.exit_code == 3, res.output  # something was skipped: the status says so
    fs = FeatureStore(store, create=False)
    extracted = set(fs.committed_ids(fs.resolve_feature("fbank")))
    skips = fs.skips()
    named = {what: reason for _, what, reason in skips}
    assert len(cases) >= 25
    for c in cases:
        uid, outcome = f"catalogue/{c['row']['id']}", c["outcome"]
        path = c["row"]["path"]
        if outcome == "extracted":
            assert uid in extracted, f"{uid} should have been extracted; skips: {skips}"
        elif outcome == "extraction":  # read fine, refused by the extractor: the feature's skips name it
            assert uid not in extracted and uid in named, f"{uid}: {skips}"
            assert Path(path).name in named[uid]
        else:  # refused while reading the manifest, with its line
            hits = [(what, reason) for what, reason in named.items() if reason == outcome and
                    (Path(path).name in what or c["row"]["id"] in what)]
            assert hits, f"{uid} should be skipped as {outcome!r}; skips: {skips}"
            assert "catalogue.csv line" in hits[0][0]
            assert Path(path).name in out or c["row"]["id"] in out  # and printed
    assert any(reason == "more cells than columns" for reason in named.values())
    assert "truncated.wav: truncated (the header declares 2.000 s, the file holds 0.667 s)" in " ".join(named)
    assert "no fbank frames" in named["catalogue/one_ms_slice"]
    assert "non-finite" in named["catalogue/nan"]
    # the store reads, and the good files' features look like audio
    fa = fs.read("fbank")
    assert len(fa.utt_ids) == len(extracted) and np.isfinite(fa.data.astype(np.float32)).all()
    assert len(fa.get("catalogue/ten_minutes")) == 1 + (600 * SR - 400) // 160
    ls = CliRunner().invoke(app, ["ls", "--store", str(store), "--skips"])
    assert ls.exit_code == 0 and "truncated" in ls.output and "duplicate utterance id" in ls.output


def test_broken_jsonl_lines_and_a_manifest_with_nothing_readable(tmp_path):
    good = _wav(tmp_path / "a.wav")
    lines = [json.dumps({"path": str(good), "label": "sad", "speaker": "s1"}), "{not json", "[1, 2]",
             json.dumps({"path": str(tmp_path / "gone.wav"), "label": "sad", "speaker": "s1"})]
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    utts, report = read_corpus("manifest", jsonl)
    assert [u.utt_id for u in utts] == ["set/a"]
    assert report.skipped["malformed line"] == ["set.jsonl line 2", "set.jsonl line 3"]
    nothing = tmp_path / "nothing.csv"
    nothing.write_text(f"path,label,speaker\n{tmp_path / 'gone.wav'},sad,s1\n")
    res = CliRunner().invoke(app, ["extract", "--corpus", "manifest", "--data", str(nothing), "--model", "fbank",
                                   "--store", str(tmp_path / "s.zarr"), "--workers", "1"])
    assert res.exit_code == 3 and "no utterance could be read" in res.output and "gone.wav" in res.output


def test_a_manifest_that_is_not_utf8_names_the_file_and_line(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path,label,speaker\na.wav,happy,s1\nb.wav,tr\xe8s,s2\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv line 3: not UTF-8 text \(byte 0xe8\)"):
        read_corpus("manifest", bad)
