"""fbank-rate: how much emotion information RAVDESS log-mel filterbanks lose at 16 kHz against the files' own
48 kHz, measured with a fixed simple classifier (issue #10, the FG-CME gap: the paper does not say at what rate
it computed its 40 filterbanks, and RAVDESS is recorded at 48 kHz).

    python bench/fbank_rate.py --data ../shared/data/ravdess

For each variant, every rav4 utterance's 40-d Kaldi log-mel frames (featurize/extractors/fbank.py's
``kaldi_fbank``, 25 ms / 10 ms, mel bands from 20 Hz to Nyquist) are summarised as per-band mean and standard
deviation (80 values), z-scored on the training speakers and fed to an L2 logistic regression whose C is
chosen on the validation speakers (UA), then refit on training + validation and scored once on the test actors:
the rav4 folds (by actor), the same for every variant. A proxy for the frame-level `cme` head, which is far
costlier to train: it says whether the band above 8 kHz carries information, not what `cme` would make of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import code_version, machine  # noqa: E402
from featurize.audio import load_audio  # noqa: E402
from featurize.corpora import read_corpus  # noqa: E402
from featurize.extractors.fbank import kaldi_fbank  # noqa: E402
from train.protocols import make_folds  # noqa: E402

RAV4 = {"neutral", "happy", "sad", "angry"}
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
VARIANTS = {  # name -> sample rate the audio is read at (the files are 48 kHz)
    "16 kHz (the `fbank` extractor: 40 bands, 20 Hz - 8 kHz)": 16000,
    "48 kHz (the files' rate: 40 bands, 20 Hz - 24 kHz)": 48000,
}


def summary_vector(path: str, sample_rate: int) -> np.ndarray:
    frames = kaldi_fbank(load_audio(path, sr=sample_rate), sample_rate=sample_rate).astype(np.float64)
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)])


def fold_ua(x: dict[str, np.ndarray], y: dict[str, str], fold) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import recall_score
    from sklearn.preprocessing import StandardScaler

    def xy(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([x[i] for i in ids]), np.array([y[i] for i in ids])

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = xy(fold.train), xy(fold.valid), xy(fold.test)

    def fit(xs: np.ndarray, ys: np.ndarray, c: float):
        scaler = StandardScaler().fit(xs)
        return scaler, LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(xs), ys)

    def ua(model, xs: np.ndarray, ys: np.ndarray) -> float:
        scaler, clf = model
        return recall_score(ys, clf.predict(scaler.transform(xs)), average="macro")

    best_c = max(C_GRID, key=lambda c: ua(fit(x_train, y_train, c), x_valid, y_valid))  # first of a tie
    refit = fit(np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), best_c)
    return ua(refit, x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ravdess"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    utts, _ = read_corpus("ravdess", args.data)
    utts = [u for u in utts if u.label in RAV4]
    folds = make_folds("rav4", utts, seed=0)
    labels = {u.utt_id: u.label for u in utts}
    print(f"fbank-rate: {len(utts)} rav4 utterances of {args.data}, {len(folds)} folds by actor")
    per_fold: dict[str, list[float]] = {}
    for name, rate in VARIANTS.items():
        t0 = time.perf_counter()
        x = {u.utt_id: summary_vector(u.audio_path, rate) for u in utts}
        per_fold[name] = [fold_ua(x, labels, f) for f in folds]
        uas = per_fold[name]
        print(f"  {name}: UA {100 * statistics.mean(uas):.2f} (folds {' '.join(f'{100 * u:.1f}' for u in uas)}), "
              f"{time.perf_counter() - t0:.0f} s")
    base, wide = per_fold.values()
    diffs = [100 * (b - a) for a, b in zip(base, wide, strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    print(f"48 kHz - 16 kHz, paired over the {len(diffs)} folds: {statistics.mean(diffs):+.2f} UA (SE {se:.2f})")
    print(f"machine: {machine()}; code {code_version()}")


if __name__ == "__main__":
    main()
