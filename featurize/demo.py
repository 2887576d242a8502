"""`make demo`: the whole pipeline on a small SYNTHETIC corpus generated here (no download).

The audio is synthetic vowel-like speech, not recordings: each "syllable" is a harmonic source at
a pitch contour, shaped by formant resonators. The four emotions differ the way acted emotional
speech tends to (pitch level and movement, loudness, speaking rate, voice harshness); speakers
differ in base pitch and vocal-tract length. Transcripts carry an emotion cue only some of the
time, so text is informative but not perfect. It exercises every stage; its accuracies say
nothing about real corpora (see `make bench-accuracy` for those).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

SR = 16000
EMOTIONS = {
    #          pitch scale, pitch slope (per s), jitter, loudness, syllables/s, harshness
    "neutral": (1.00, 0.00, 0.02, 0.25, 4.0, 0.00),
    "happy": (1.30, 0.25, 0.06, 0.45, 5.0, 0.05),
    "sad": (0.85, -0.20, 0.01, 0.12, 2.8, 0.00),
    "angry": (1.15, -0.05, 0.08, 0.70, 5.2, 0.35),
}
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240)]
NEUTRAL_SENTENCES = [
    "the meeting is at noon",
    "we took the train to town",
    "the box is on the table",
    "she read the letter twice",
    "they will call tomorrow",
    "the door was left open",
]
CUES = {
    "happy": ["this is wonderful", "i am so glad"],
    "sad": ["i miss her so much", "nothing went right"],
    "angry": ["this is unacceptable", "stop doing that"],
    "neutral": ["as usual", "for the record"],
}


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    r = np.exp(-np.pi * bw / SR)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]
    return lfilter([1 - r], a, x)


def synth_utterance(emotion: str, base_f0: float, tract: float, rng: np.random.Generator) -> np.ndarray:
    scale, slope, jitter, loud, rate, harsh = EMOTIONS[emotion]
    n_syll = int(rng.integers(5, 10))
    pieces = [np.zeros(int(0.2 * SR))]
    f0 = base_f0 * scale * rng.uniform(0.95, 1.05)
    for _ in range(n_syll):
        dur = rng.uniform(0.7, 1.3) / rate
        n = int(dur * SR)
        t = np.arange(n) / SR
        contour = f0 * (1 + slope * t + jitter * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
        phase = 2 * np.pi * np.cumsum(contour) / SR
        src = sum(np.sin(k * phase) / k ** (1.2 - harsh) for k in range(1, 25))
        src = src + harsh * rng.standard_normal(n)
        formants = VOWELS[int(rng.integers(len(VOWELS)))]
        voiced = sum(_resonator(src, f * tract, 80 + 40 * i) for i, f in enumerate(formants))
        env = np.minimum(1, np.minimum(t, dur - t) / 0.03)
        voiced = voiced / (np.abs(voiced).max() + 1e-9) * env * loud * rng.uniform(0.8, 1.2)
        pieces += [voiced, np.zeros(int(rng.uniform(0.03, 0.12) / rate * 4 * SR))]
    pieces.append(np.zeros(int(0.2 * SR)))
    audio = np.concatenate(pieces) + 0.003 * rng.standard_normal(sum(len(p) for p in pieces))
    return np.clip(audio, -1, 1).astype(np.float32)


def make_corpus(out: Path, n_speakers: int = 8, per_class: int = 8, seed: int = 0) -> Path:
    """Write WAVs and a manifest CSV; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_speakers):
        base_f0 = 110 + 100 * (s % 2) + rng.uniform(-15, 15)  # alternate lower / higher voices
        tract = rng.uniform(0.9, 1.15)
        for emotion in EMOTIONS:
            for k in range(per_class):
                uid = f"spk{s:02d}_{emotion}_{k:02d}"
                path = out / "wav" / f"{uid}.wav"
                if not path.exists():
                    sf.write(path, synth_utterance(emotion, base_f0, tract, rng), SR, subtype="PCM_16")
                text = NEUTRAL_SENTENCES[int(rng.integers(len(NEUTRAL_SENTENCES)))]
                if rng.random() < 0.5:
                    text = f"{text} {CUES[emotion][int(rng.integers(2))]}"
                rows.append(
                    {
                        "id": uid,
                        "path": f"wav/{uid}.wav",
                        "label": emotion,
                        "speaker": f"spk{s:02d}",
                        "session": f"spk{s:02d}",
                        "text": text,
                    }
                )
    manifest = out / "demo.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def _sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *args], check=True)


def run(workdir: Path) -> None:
    t0 = time.monotonic()
    manifest = make_corpus(workdir / "corpus")
    store = str(workdir / "features.zarr")
    runs = workdir / "runs"
    print(f"synthetic demo corpus: {manifest} (generated speech, 8 speakers x 4 emotions x 8 utterances)")
    common = ["--corpus", "manifest", "--data", str(manifest), "--store", store]
    _sh("featurize.cli", "extract", *common, "--model", "fbank")
    _sh("featurize.cli", "extract", *common, "--model", "opensmile", "-o", "set=egemaps")
    _sh("featurize.cli", "extract", *common, "--model", "minilm")
    _sh("featurize.cli", "ls", "--store", store)
    cells = [
        ("linear", "opensmile", None, "audio: eGeMAPS -> logistic regression"),
        ("probe", "fbank", None, "audio: log-mel -> mean-pool probe"),
        ("linear", "minilm", None, "text: MiniLM sentence -> logistic regression"),
        ("dialog", "opensmile,minilm", "audio", "dialog head, audio only"),
        ("dialog", "opensmile,minilm", None, "dialog head, audio + text (logits fusion)"),
    ]
    results = []
    for head, feats, modality, what in cells:
        out = runs / f"{head}-{feats.replace(',', '+')}{'-' + modality if modality else ''}"
        args = [
            "train.cli",
            "run",
            "--head",
            head,
            "--feature",
            feats,
            "--corpus",
            "demo",
            "--protocol",
            "speaker-kfold",
            "--store",
            store,
            "--out",
            str(out),
            "--seeds",
            "0,1",
            "--max-epochs",
            "30",
        ]
        _sh(*args + (["--modality", modality] if modality else []))
        s = json.loads((out / "summary.json").read_text())
        results.append((what, s))
    print("\nDEMO RESULTS (synthetic speech; 5 speaker-independent folds x 2 seeds, mean ± std)")
    print(f"{'model':45s} {'WA':>15s} {'UA':>15s} {'macro-F1':>15s}")
    for what, s in results:
        cells_txt = [f"{100 * s[k]['mean']:6.2f} ± {100 * s[k]['std']:5.2f}" for k in ("wa", "ua", "macro_f1")]
        print(f"{what:45s} {cells_txt[0]:>15s} {cells_txt[1]:>15s} {cells_txt[2]:>15s}")
    print(f"demo finished in {time.monotonic() - t0:.0f} s; reports under {runs}/*/report.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="only write the synthetic corpus")
    mk.add_argument("--dir", type=Path, default=Path("cache/demo"))
    rn = sub.add_parser("run", help="write the corpus and run the whole pipeline")
    rn.add_argument("--dir", type=Path, default=Path("cache/demo"))
    a = ap.parse_args()
    if a.cmd == "make":
        print(make_corpus(a.dir / "corpus"))
    else:
        run(a.dir)


if __name__ == "__main__":
    main()
