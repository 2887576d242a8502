"""Corpus readers: IEMOCAP on a fixture tree, RAVDESS and manifests on generated files, and the real
RAVDESS / IEMOCAP-text data in ../shared when it is there."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from iemocap_fixture import make_iemocap_fixture

from featurize.corpora import read_corpus
from featurize.corpora.iemocap import LABEL_SETS as IEMOCAP_SETS
from featurize.corpora.iemocap_text import LABEL_SETS as IEMOCAP_TEXT_SETS
from featurize.corpora.ravdess import LABEL_SETS as RAVDESS_SETS
from featurize.records import CorpusReport, Utterance, Word

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS = SHARED / "ravdess"
IEMOCAP_PKL = SHARED / "iemocap_text" / "iemocap.pkl"


def _tone(path: Path, seconds: float = 0.1, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sr)) / sr
    sf.write(path, 0.2 * np.sin(2 * np.pi * 300 * t), sr, subtype="PCM_16")


# --- IEMOCAP full release (fixture) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, Utterance], CorpusReport]:
    expected = make_iemocap_fixture(tmp_path_factory.mktemp("iemocap"))
    utts, report = read_corpus("iemocap", expected["root"])
    return expected, {u.utt_id: u for u in utts}, report


def test_iemocap_ids_labels_and_fields(iemocap):
    expected, utts, _ = iemocap
    assert sorted(utts) == expected["ids"]
    assert {k: u.label for k, u in utts.items()} == expected["labels"]
    assert {k: u.speaker for k, u in utts.items()} == expected["speakers"]
    assert {k: u.session for k, u in utts.items()} == {k: v[:5] for k, v in expected["speakers"].items()}
    assert {k: u.turn for k, u in utts.items()} == expected["turns"]
    for k, text in expected["texts"].items():
        assert utts[k].text == text
    for k, seconds in expected["durations"].items():
        assert utts[k].duration == pytest.approx(seconds, abs=1e-9)
    u = utts["iemocap/Ses02M_script01_1_M000"]
    assert (u.corpus, u.dialog, u.start, u.end) == ("iemocap", "Ses02M_script01_1", None, None)
    assert u.audio_path.endswith("Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_M000.wav")
    assert Path(u.audio_path).is_file()


def test_iemocap_label_sets(iemocap):
    _, utts, _ = iemocap

    def mapped(name: str) -> dict[str, str]:
        table = IEMOCAP_SETS[name]
        return {k.removeprefix("iemocap/"): table[u.label] for k, u in utts.items() if u.label in table}

    assert mapped("4class") == {
        "Ses01F_impro01_F000": "neu",
        "Ses01F_impro01_F001": "hap",
        "Ses02M_script01_1_F000": "ang",
        "Ses02M_script01_1_M000": "hap",
        "Ses02M_script01_1_M001": "sad",
    }
    assert mapped("5class") == mapped("4class") | {"Ses01F_impro01_M000": "fru"}
    assert mapped("6class") == mapped("5class") | {"Ses01F_impro01_F001": "exc"}
    assert IEMOCAP_TEXT_SETS is IEMOCAP_SETS


def test_iemocap_soft_labels(iemocap):
    expected, utts, _ = iemocap
    for k, soft in expected["soft"].items():
        assert utts[k].soft_labels == soft, k  # exact: the fixture's shares are binary fractions
        assert sum(utts[k].soft_labels.values()) == pytest.approx(1.0)


def test_iemocap_words(iemocap):
    expected, utts, _ = iemocap
    for k, words in expected["words"].items():
        if words is None:
            assert utts[k].words is None and utts[k].word_source is None, k
        else:
            assert utts[k].words == [Word(*w) for w in words], k
            assert utts[k].word_source == "forced_alignment"


def test_iemocap_skips_are_counted_by_reason(iemocap):
    expected, _, report = iemocap
    assert report.skipped == expected["skipped"]


def test_iemocap_sessions_option_and_parent_path(tmp_path):
    expected = make_iemocap_fixture(tmp_path)
    utts, report = read_corpus("iemocap", tmp_path, sessions=[2, 3])  # the folder holding the release
    assert sorted(u.utt_id for u in utts) == [k for k in expected["ids"] if "Ses02" in k]
    assert [Path(p).name for p in report.skipped["missing session directory"]] == ["Session3"]
    with pytest.raises(ValueError, match="no Session1..Session5"):
        read_corpus("iemocap", expected["root"] / "Session1")


# --- RAVDESS ------------------------------------------------------------------------------------


def test_ravdess_generated(tmp_path):
    _tone(tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav", 0.25)
    _tone(tmp_path / "Actor_01" / "03-01-05-02-02-02-01.flac")
    _tone(tmp_path / "Actor_12" / "03-01-08-02-01-01-12.wav")
    _tone(tmp_path / "Actor_12" / "03-01-05-02.wav")  # malformed name
    _tone(tmp_path / "Actor_12" / "03-01-09-01-01-01-12.wav")  # no emotion 09
    _tone(tmp_path / "Actor_12" / "03-02-03-01-01-01-12.wav")  # song
    _tone(tmp_path / "Actor_12" / "03-01-04-01-01-01-07.wav")  # actor 07's file in actor 12's folder
    (tmp_path / "Actor_12" / "notes.txt").write_text("not audio")  # ignored, not counted

    utts, report = read_corpus("ravdess", tmp_path)  # no metadata.csv: fine
    by_id = {u.utt_id: u for u in utts}
    assert sorted(by_id) == [
        "ravdess/03-01-01-01-01-01-01",
        "ravdess/03-01-05-02-02-02-01",
        "ravdess/03-01-08-02-01-01-12",
    ]
    u = by_id["ravdess/03-01-05-02-02-02-01"]
    assert (u.label, u.speaker, u.session, u.corpus) == ("angry", "Actor_01", "1", "ravdess")
    assert u.text == "Dogs are sitting by the door" and u.word_source is None and u.words is None
    assert u.extra == {"intensity": "strong", "statement": "2", "repetition": "2", "gender": "male"}
    assert u.audio_path.endswith("Actor_01/03-01-05-02-02-02-01.flac")
    first = by_id["ravdess/03-01-01-01-01-01-01"]
    assert first.text == "Kids are talking by the door"
    assert first.duration == pytest.approx(0.25)
    assert by_id["ravdess/03-01-08-02-01-01-12"].extra["gender"] == "female"
    assert by_id["ravdess/03-01-08-02-01-01-12"].label == "surprised"
    assert {r: len(v) for r, v in report.skipped.items()} == {"malformed file name": 2,
                                                              "actor in the file name differs from its folder's": 1}
    assert report.excluded == {"not speech (vocal channel != 01)": 1}  # song: left out by design, not an error


def test_ravdess_label_sets():
    assert set(RAVDESS_SETS["rav8"]) == {
        "neutral",
        "calm",
        "happy",
        "sad",
        "angry",
        "fearful",
        "disgust",
        "surprised",
    }
    assert RAVDESS_SETS["rav4"] == {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}


@pytest.mark.skipif(not RAVDESS.is_dir(), reason="shared RAVDESS data not present")
def test_ravdess_real():
    utts, report = read_corpus("ravdess", RAVDESS)
    assert report.n_skipped == 0
    assert len(utts) == 1440
    assert len({u.speaker for u in utts}) == 24
    counts = Counter(u.label for u in utts)
    assert counts == {label: (96 if label == "neutral" else 192) for label in RAVDESS_SETS["rav8"]}
    assert sum(counts[label] for label in RAVDESS_SETS["rav4"]) == 672
    assert Counter(u.extra["gender"] for u in utts) == {"male": 720, "female": 720}


# --- manifest -----------------------------------------------------------------------------------


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    _tone(tmp_path / "audio" / "a.wav", 0.5)
    _tone(tmp_path / "audio" / "b.wav", 0.5)
    return tmp_path


def test_manifest_csv(audio_dir):
    (audio_dir / "mine.csv").write_text(
        "path,label,speaker,text,start,end,split,mood\n"
        "audio/a.wav,happy,s1,hello,,,train,sunny\n"
        f"{audio_dir / 'audio' / 'b.wav'},sad,s2,,0.1,0.3,test,\n"
        "audio/missing.wav,sad,s2,,,,test,\n"
        "audio/a.wav,sad,s2,,zero,,test,\n"
    )
    utts, report = read_corpus("manifest", audio_dir / "mine.csv")
    assert [u.utt_id for u in utts] == ["mine/a", "mine/b"]
    a, b = utts
    assert (a.label, a.speaker, a.text, a.split, a.corpus) == ("happy", "s1", "hello", "train", "mine")
    assert a.audio_path == str(audio_dir / "audio" / "a.wav")
    assert a.duration == pytest.approx(0.5) and a.extra == {"mood": "sunny"}
    assert (b.start, b.end, b.text, b.duration) == (0.1, 0.3, None, pytest.approx(0.2))
    assert report.skipped["missing audio file"] == [f"mine.csv line 4: {audio_dir / 'audio' / 'missing.wav'}"]
    assert report.skipped["bad number"] == ["mine.csv line 5: audio/a.wav: start = 'zero'"]


def test_manifest_jsonl(audio_dir):
    rows = [
        {"path": "audio/a.wav", "label": "neu", "speaker": "x", "id": "one", "turn": 0, "dialog": "d1"},
        {"path": "audio/b.wav", "label": "ang", "speaker": "y", "id": "two", "turn": 1, "dialog": "d1"},
        {"path": "audio/nope.wav", "label": "ang", "speaker": "y", "id": "three"},
    ]
    path = audio_dir / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    utts, report = read_corpus("manifest", path, corpus="demo")
    assert [(u.utt_id, u.turn, u.dialog, u.corpus) for u in utts] == [
        ("demo/one", 0, "d1", "demo"),
        ("demo/two", 1, "d1", "demo"),
    ]
    assert report.skipped == {"missing audio file": [f"set.jsonl line 3: {audio_dir / 'audio' / 'nope.wav'}"]}


def test_manifest_errors(audio_dir):
    csv_path = audio_dir / "nolabel.csv"
    csv_path.write_text("path,speaker\naudio/a.wav,s1\n")
    with pytest.raises(ValueError, match=r"nolabel\.csv.*'label'"):
        read_corpus("manifest", csv_path)

    jsonl_path = audio_dir / "nospeaker.jsonl"
    jsonl_path.write_text(json.dumps({"path": "audio/a.wav", "label": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"nospeaker\.jsonl.*'speaker'"):
        read_corpus("manifest", jsonl_path)

    dup = audio_dir / "dup.csv"
    dup.write_text("path,label,speaker\naudio/a.wav,x,s1\naudio/a.wav,y,s1\n")
    utts, report = read_corpus("manifest", dup)  # the first row is kept, the second named as a skip
    assert [u.label for u in utts] == ["x"]
    assert report.skipped == {"duplicate utterance id": ["dup.csv line 3: 'dup/a' (first on line 2); add a "
                                                         "unique `id` column"]}


# --- IEMOCAP text (COSMIC pkl) ------------------------------------------------------------------


@pytest.mark.skipif(not IEMOCAP_PKL.is_file(), reason="shared IEMOCAP text data not present")
def test_iemocap_text_real():
    utts, report = read_corpus("iemocap-text", IEMOCAP_PKL.parent)
    assert report.n_skipped == 0
    assert len(utts) == 7433
    assert len({u.utt_id for u in utts}) == 7433
    dialogs_by_split = {s: {u.dialog for u in utts if u.split == s} for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in dialogs_by_split.items()} == {"train": 108, "valid": 12, "test": 31}
    assert {u.session for u in utts if u.split == "test"} == {"Ses05"}
    assert {u.speaker for u in utts} == {f"Ses0{n}_{g}" for n in range(1, 6) for g in "FM"}

    first = next(u for u in utts if u.utt_id == "iemocap/Ses01F_impro01_000")
    assert (first.speaker, first.label, first.turn, first.text) == ("Ses01_F", "neu", 0, "Excuse me.")
    assert first.audio_path is None

    four = IEMOCAP_TEXT_SETS["4class"]
    trainval = Counter(four[u.label] for u in utts if u.split != "test" and u.label in four)
    test = Counter(four[u.label] for u in utts if u.split == "test" and u.label in four)
    assert trainval == {"hap": 1246, "sad": 839, "neu": 1324, "ang": 933}
    assert test == {"hap": 443, "sad": 245, "neu": 384, "ang": 170}
    assert sum(trainval.values()) == 4342 and sum(test.values()) == 1242


# --- other tools' corpus descriptions ------------------------------------------------------------

def test_lhotse_cuts_are_a_corpus(tmp_path):
    import gzip

    from tests.conftest import tone

    sf.write(tmp_path / "rec1.wav", tone(3.0, 200), 16000)
    sf.write(tmp_path / "rec2.wav", tone(1.0, 300), 16000)
    sf.write(tmp_path / "cut_short.wav", tone(1.0, 300), 16000)
    (tmp_path / "cut_short.wav").write_bytes((tmp_path / "cut_short.wav").read_bytes()[:30])  # header cut off

    def cut(cid, rec, start, dur, emotion, speaker="spk1", **extra):
        return {"id": cid, "start": start, "duration": dur, "channel": 0, "type": "MonoCut",
                "supervisions": [{"id": f"s-{cid}", "recording_id": rec, "start": 0.0, "duration": dur,
                                  "channel": 0, "text": "hello there", "speaker": speaker,
                                  "custom": {"emotion": emotion, **extra}}],
                "recording": {"id": rec, "sources": [{"type": "file", "channels": [0], "source": f"{rec}.wav"}],
                              "sampling_rate": 16000, "num_samples": 16000, "duration": dur, "channel_ids": [0]}}

    lines = [json.dumps(cut("c1", "rec1", 0.5, 1.0, "happy", sess="A")),
             json.dumps(cut("c2", "rec2", 0.0, 1.0, "sad", speaker="spk2", sess="B")),
             "{broken",
             json.dumps(cut("c3", "gone", 0.0, 1.0, "sad")),
             json.dumps(cut("c4", "cut_short", 0.0, 1.0, "sad"))]
    path = tmp_path / "cuts.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    utts, report = read_corpus("lhotse", path, columns={"session": "sess"})
    assert [u.utt_id for u in utts] == ["cuts/c1", "cuts/c2"]
    a = utts[0]
    assert (a.label, a.speaker, a.session, a.text, a.start, a.end) == ("happy", "spk1", "A", "hello there", 0.5, 1.5)
    assert a.audio_path == str(tmp_path / "rec1.wav")
    assert [w.split(":")[0] for w in report.skipped["unusable cut"]] == ["cuts.jsonl.gz line 3",
                                                                         "cuts.jsonl.gz line 4"]
    assert [w.split(":")[0] for w in report.skipped["unreadable audio"]] == ["cuts.jsonl.gz line 5"]
    with pytest.raises(ValueError, match="no field colour"):
        read_corpus("lhotse", path, columns={"colour": "x"})


def test_lhotse_cuts_read_the_channel_they_name(tmp_path):
    """A two-speaker stereo recording cut per channel, a recording kept as one file per channel, and cuts
    sercache cannot read as one signal (several channels, a channel no source holds or the file lacks)."""
    from featurize.audio import load_audio
    from tests.conftest import tone

    left, right = tone(2.0, 200), tone(2.0, 700, seed=1)
    sf.write(tmp_path / "dialog.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "mic0.wav", left, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mic1.wav", right, 16000, subtype="FLOAT")
    stereo = [{"type": "file", "channels": [0, 1], "source": "dialog.wav"}]
    per_file = [{"type": "file", "channels": [0], "source": "mic0.wav"},
                {"type": "file", "channels": [1], "source": "mic1.wav"}]
    claims_three = [{"type": "file", "channels": [0, 1, 2], "source": "dialog.wav"}]

    def cut(cid, sources, channel):
        return json.dumps({
            "id": cid, "start": 0.5, "duration": 1.0, "channel": channel, "type": "MonoCut",
            "supervisions": [{"id": f"s-{cid}", "start": 0.0, "duration": 1.0, "speaker": "spk",
                              "custom": {"emotion": "neu"}}],
            "recording": {"id": cid, "sources": sources, "sampling_rate": 16000, "num_samples": 32000,
                          "duration": 2.0, "channel_ids": sorted({c for s in sources for c in s["channels"]})}})

    lines = [cut("right", stereo, 1), cut("both", stereo, [0, 1]), cut("mic1", per_file, 1),
             cut("two_of_three", claims_three, [0, 1]), cut("nowhere", stereo, 4), cut("lacking", claims_three, 2)]
    path = tmp_path / "cuts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    utts, report = read_corpus("lhotse", path)
    by_id = {u.utt_id.split("/")[1]: u for u in utts}
    assert sorted(by_id) == ["both", "mic1", "right"]
    assert (by_id["right"].channel, by_id["both"].channel, by_id["mic1"].channel) == (1, None, None)
    assert by_id["mic1"].audio_path == str(tmp_path / "mic1.wav")
    half = slice(8000, 24000)
    np.testing.assert_array_equal(load_audio(by_id["right"].audio_path, 0.5, 1.5, channel=1), right[half])
    np.testing.assert_array_equal(load_audio(by_id["mic1"].audio_path, 0.5, 1.5), right[half])
    np.testing.assert_allclose(load_audio(by_id["both"].audio_path, 0.5, 1.5), (left[half] + right[half]) / 2,
                               atol=1e-7)
    unusable = report.skipped["unusable cut"]
    assert [w.split(":")[0] for w in unusable] == ["cuts.jsonl line 4", "cuts.jsonl line 5"]
    assert "reads channels [0, 1] of the 3 in dialog.wav" in unusable[0]
    assert "no file source of its recording holds channel(s) [4]" in unusable[1]
    (lacking,) = report.skipped["unreadable audio"]
    assert lacking.startswith("cuts.jsonl line 6") and "dialog.wav: no channel 2 (the file has 2" in lacking


def test_a_manifest_channel_column_picks_one_channel(tmp_path):
    from tests.conftest import tone

    sf.write(tmp_path / "stereo.wav", np.stack([tone(1.0, 200), tone(1.0, 700)], axis=1), 16000)
    (tmp_path / "m.csv").write_text("path,label,speaker,channel,id\n"
                                    "stereo.wav,neu,a,1,right\nstereo.wav,neu,b,,mean\nstereo.wav,neu,c,2,third\n")
    utts, report = read_corpus("manifest", tmp_path / "m.csv")
    assert [(u.utt_id, u.channel) for u in utts] == [("m/right", 1), ("m/mean", None)]
    (skip,) = report.skipped["unreadable audio"]
    assert "stereo.wav: no channel 2 (the file has 2" in skip


def test_manifest_column_mapping_and_name(tmp_path):
    from tests.conftest import tone

    sf.write(tmp_path / "a.wav", tone(0.5, 200), 16000)
    (tmp_path / "theirs.csv").write_text("wav,emo,who\na.wav,happy,s1\n")
    with pytest.raises(ValueError, match=r"missing required column 'path'.*--columns path=NAME"):
        read_corpus("manifest", tmp_path / "theirs.csv")
    utts, _ = read_corpus("manifest", tmp_path / "theirs.csv", corpus="mine",
                          columns={"path": "wav", "label": "emo", "speaker": "who"})
    assert [(u.utt_id, u.label, u.speaker) for u in utts] == [("mine/a", "happy", "s1")]
