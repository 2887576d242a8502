"""Shared fixtures: small generated corpora (real WAV files) and isolation from the user's HOME."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    # onnxruntime, espeak-ng and torch write caches under HOME/TMPDIR: keep tests from touching the user's.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tone(seconds: float, freq: float, sr: int = 16000, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_manifest_corpus(
    root: Path, n: int, seconds=(0.5, 1.5), broken: int = 0, corrupt: int = 0, seed: int = 0, sessions: bool = False
) -> Path:
    """n real WAV files (varied lengths, 4 labels, 4 speakers) + a manifest CSV. The first
    ``corrupt`` entries are not audio at all (the reader skips them); the next ``broken`` are
    valid float WAVs full of NaN (they fail only when decoded, during extraction)."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    labels = ["neutral", "happy", "sad", "angry"]
    rows = []
    for i in range(n):
        path = root / "wav" / f"u{i:04d}.wav"
        if i < corrupt:
            path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        elif i < corrupt + broken:
            sf.write(path, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
        else:
            dur = float(rng.uniform(*seconds))
            # The pitch carries the label (learnable); speakers cycle independently of labels.
            sf.write(path, tone(dur, 100 + 60 * (i % 4), seed=i), 16000, subtype="PCM_16")
        rows.append(
            {
                "id": f"u{i:04d}",
                "path": f"wav/{path.name}",
                "label": labels[i % 4],
                "speaker": f"s{(i // 4) % 8}",
                "text": f"utterance number {i}",
                "dialog": f"d{i // 8}",
                # with ``sessions``: two speakers and their dialogues a session, so loso keeps dialogues whole
                **({"session": f"ses{(i // 8) % 4}"} if sessions else {}),
                "turn": str(i % 8),
            }
        )
    manifest = root / "corpus.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def stored_values(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """feature group/array -> utterance -> its rows: what a reader sees, whatever the commit order."""
    from featurize.store import FeatureStore

    store = FeatureStore(path, create=False)
    out: dict[str, dict[str, np.ndarray]] = {}
    for info in store.features():
        for name in info.arrays:
            fa = store.read(info.name, name)
            out[f"{info.name}/{name}"] = {u: fa.get(u) for u in fa.utt_ids}
    return out


def assert_same_values(a: dict, b: dict) -> None:
    """Two ``stored_values`` equal: the same groups, utterances and bit-identical rows."""
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].keys() == b[k].keys(), k
        for uid in a[k]:
            np.testing.assert_array_equal(a[k][uid], b[k][uid], err_msg=f"{k} {uid}")
