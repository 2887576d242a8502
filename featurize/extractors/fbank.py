"""`fbank`: Kaldi-compatible log-mel filterbank (40 bins, 25 ms window, 10 ms shift, 16 kHz; `-o sample_rate=48000`
reads the audio at another rate).

Follows Kaldi's compute-fbank-feats: frames with snip_edges, DC removal, pre-emphasis 0.97, the
Povey window, FFT padded to a power of two, power spectrum, triangular filters on Kaldi's mel scale
(1127 ln(1 + f/700)) from 20 Hz to Nyquist, natural log floored at float32 epsilon. Dither is 0 so
the features are deterministic. Samples are scaled to the int16 range first, as Kaldi reads WAVs.
Checked against kaldi-native-fbank in tests/test_extractors.py.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from featurize.audio import decoder_versions
from featurize.extractors import Extractor, register
from featurize.records import Utterance
from featurize.store import ArraySpec


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] filter weights; the Nyquist bin gets no weight, as in Kaldi."""
    n_bins = n_fft // 2
    low_mel, high_mel = _mel(low_hz), _mel(high_hz)
    delta = (high_mel - low_mel) / (n_mels + 1)
    bin_mel = _mel(np.arange(n_bins) * sample_rate / n_fft)
    banks = np.zeros((n_mels, n_bins + 1), dtype=np.float64)
    for m in range(n_mels):
        left, center, right = low_mel + m * delta, low_mel + (m + 1) * delta, low_mel + (m + 2) * delta
        up = (bin_mel - left) / (center - left)
        down = (right - bin_mel) / (right - center)
        w = np.where(bin_mel <= center, up, down)
        inside = (bin_mel > left) & (bin_mel < right)
        banks[m, :n_bins] = np.where(inside, w, 0.0)
    return banks


@lru_cache(maxsize=8)
def povey_window(win: int) -> np.ndarray:
    return ((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))) ** 0.85).astype(np.float32)


@lru_cache(maxsize=8)
def _banks_float32(n_mels: int, n_fft: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    return np.ascontiguousarray(kaldi_mel_banks(n_mels, n_fft, sample_rate, low_hz, high_hz).T, dtype=np.float32)


def _rfft(frames: np.ndarray) -> np.ndarray:
    # scipy's pocketfft keeps float32 and ran these 512-point frames ~3x faster than numpy's; it is
    # imported here, in the worker that needs it, because importing it costs a third of a second.
    import scipy.fft

    return scipy.fft.rfft(frames, axis=1)


def kaldi_fbank(
    audio: np.ndarray,
    sample_rate: int = 16000,
    n_mels: int = 40,
    frame_ms: float = 25.0,
    shift_ms: float = 10.0,
    preemph: float = 0.97,
    low_hz: float = 20.0,
    high_hz: float = 0.0,
) -> np.ndarray:
    """Log-mel filterbank [frames, n_mels] float32 of float audio in [-1, 1].

    Computed in float32, as Kaldi does, in one zero-padded frame buffer: each step works in place on it,
    so an utterance costs one copy of its frames, one FFT and one matrix product."""
    x = np.asarray(audio, dtype=np.float32) * np.float32(32768.0)
    win, hop = int(sample_rate * frame_ms / 1000), int(sample_rate * shift_ms / 1000)
    if len(x) < win:
        return np.zeros((0, n_mels), dtype=np.float32)
    n_frames = 1 + (len(x) - win) // hop
    n_fft = 1 << (win - 1).bit_length()
    padded = np.zeros((n_frames, n_fft), dtype=np.float32)
    frames = padded[:, :win]
    windows = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n_frames]  # a view: no copy yet
    np.subtract(windows, windows.mean(axis=1, keepdims=True, dtype=np.float32), out=frames)
    # Kaldi pre-emphasis: x[i] -= c * x[i-1], and the first sample uses itself as its predecessor
    # (the right-hand side is computed whole before the in-place subtraction).
    frames[:, 1:] -= np.float32(preemph) * frames[:, :-1]
    frames[:, 0] *= np.float32(1 - preemph)
    frames *= povey_window(win)
    spectrum = _rfft(padded)
    power = spectrum.real**2 + spectrum.imag**2
    high = high_hz if high_hz > 0 else sample_rate / 2 + high_hz
    energies = power @ _banks_float32(n_mels, n_fft, sample_rate, low_hz, high)
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


@register
class Fbank(Extractor):
    name = "fbank"
    needs = "audio"
    batched = False

    def __init__(self, n_mels: int = 40, frame_ms: float = 25.0, shift_ms: float = 10.0, dtype: str = "float16",
                 sample_rate: int = 16000):
        """``sample_rate``: the rate the audio is read at (resampled to it when the file's differs); the mel
        bands reach its Nyquist frequency. 16 kHz is Kaldi's and the encoders'; RAVDESS is recorded at 48 kHz,
        whose band above 8 kHz the default drops (`bench/fbank_rate.py` measures what that costs)."""
        if n_mels < 1:
            raise ValueError(f"n_mels must be at least 1, got {n_mels}")
        if not (0 < frame_ms <= 1000 and 0 < shift_ms <= 1000):
            raise ValueError(f"frame_ms and shift_ms must be in (0, 1000] ms, got {frame_ms} and {shift_ms}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        if not 8000 <= sample_rate <= 192000:
            raise ValueError(f"sample_rate must be in [8000, 192000] Hz, got {sample_rate}")
        bins = (1 << (int(sample_rate * frame_ms / 1000) - 1).bit_length()) // 2 + 1  # the frame's FFT bins
        if n_mels >= bins:  # most bands would read no bin: constant columns
            raise ValueError(f"n_mels {n_mels} is too many for {frame_ms} ms frames at {sample_rate} Hz: the FFT has "
                             f"{bins} bins, so there can be at most {bins - 1} bands")
        self.n_mels, self.frame_ms, self.shift_ms, self.dtype = n_mels, frame_ms, shift_ms, dtype
        self.sample_rate = sample_rate

    def feature_name(self) -> str:
        # another rate is another feature beside the default one (`--feature fbank` stays unambiguous)
        return self.name if self.sample_rate == 16000 else f"{self.name}_{self.sample_rate // 1000}k"

    def config(self) -> dict:
        return {
            "n_mels": self.n_mels,
            "frame_ms": self.frame_ms,
            "shift_ms": self.shift_ms,
            "sample_rate": self.sample_rate,
            "preemph": 0.97,
            "window": "povey",
            "dither": 0.0,
            "low_hz": 20.0,
            "mel": "kaldi",
            "input_scale": 32768,
            "dtype": self.dtype,
            "numpy": np.__version__,
            **decoder_versions(),
            "code_version": 2,  # 2: float32 throughout, as Kaldi (1: float64; values within 1e-4)
        }

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("fbank", "frames", (self.n_mels,), self.dtype, rows_per_second=1000 / self.shift_ms)]

    def process_one(self, utt: Utterance, audio: np.ndarray | None) -> dict[str, np.ndarray]:
        feats = kaldi_fbank(audio, self.sample_rate, self.n_mels, self.frame_ms, self.shift_ms)
        return {"fbank": feats}

    def describe(self) -> str:
        return (f"fbank: {self.n_mels}-d log-mel, {self.frame_ms:g} ms / {self.shift_ms:g} ms at "
                f"{self.sample_rate / 1000:g} kHz (Kaldi-compatible)")
