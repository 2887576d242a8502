"""Load audio as 16 kHz (or any rate) mono float32, whatever the file's rate, channels or subtype.

Every failure a corpus can throw at us (unreadable file, no samples, NaN/inf in a float WAV) is
raised as `AudioError` naming the file, so a featurizer can skip the utterance and say why.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf


def decoder_versions() -> dict[str, str]:
    """What turns a file into samples here (decoder and resampler): part of every audio feature's
    fingerprint, since another libsndfile or scipy may give other samples for the same file."""
    import scipy

    return {"soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__, "scipy": scipy.__version__}


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, or with non-finite samples."""


def audio_duration(path: str | Path, channel: int | None = None) -> float:
    """Duration in seconds from the file header alone (no samples are decoded). A WAV file shorter than its
    header says (a copy cut short), or one without the `channel` asked for, is an AudioError: libsndfile
    would quietly read what is there."""
    path = Path(path)
    try:
        # SoundFile, not sf.info: info also formats five descriptive strings per file, a quarter of the
        # time a 1440-file corpus took to read
        with sf.SoundFile(str(path)) as f:
            rate, frames, channels = f.samplerate, f.frames, f.channels
    except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot read audio header ({e})") from e
    if channel is not None:
        check_channel(path, channel, channels)
    if rate <= 0:
        raise AudioError(f"{path}: header has sample rate {rate}")
    if frames == 0:
        raise AudioError(f"{path}: no audio samples (the file holds a header only)")
    check_wav_length(path, rate)
    return frames / rate


def check_channel(path: Path, channel: int, channels: int) -> None:
    if not 0 <= channel < channels:
        raise AudioError(f"{path}: no channel {channel} (the file has {channels}, numbered from 0)")


def check_wav_length(path: Path, rate: int) -> None:
    """Raise AudioError when a RIFF/WAVE file's data chunk declares more bytes than the file holds."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return  # not a plain WAV (RF64, FLAC, ...): libsndfile's own checks apply
            block = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return
                cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if cid == b"fmt ":
                    fmt = f.read(size)
                    block = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    if size in (0, 0xFFFFFFFF):  # a streamed WAV: the size was never filled in
                        return
                    present = os.fstat(f.fileno()).st_size - f.tell()
                    if present < size and block:
                        raise AudioError(
                            f"{path}: truncated (the header declares {size // block / rate:.3f} s, "
                            f"the file holds {present // block / rate:.3f} s)")
                    return
                else:
                    f.seek(size + size % 2, 1)
    except OSError as e:
        raise AudioError(f"{path}: cannot read audio header ({e})") from e


def load_audio(
    path: str | Path, start: float | None = None, end: float | None = None, sr: int = 16000,
    channel: int | None = None,
) -> np.ndarray:
    """Read `path` (or its `[start, end)` slice, in seconds) as mono float32 at `sr` Hz.

    `channel` (0-based) reads that channel alone; without it the channels are averaged. Integer PCM comes
    back scaled to [-1, 1] by soundfile; float files are kept as they are (values beyond ±1 are legal
    there) but must be finite. An `end` past the end of the file is clipped to it, since corpus timings
    are often rounded up a little.
    """
    path = Path(path)
    if sr <= 0:
        raise ValueError(f"target sample rate must be positive, got {sr}")
    if start is not None and start < 0:
        raise AudioError(f"{path}: slice start {start} is negative")

    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            check_wav_length(path, rate)
            first = 0 if start is None else round(start * rate)
            last = f.frames if end is None else min(f.frames, round(end * rate))
            if channel is not None:
                check_channel(path, channel, f.channels)
            if last <= first:
                what = "no samples" if f.frames == 0 else f"empty slice [{start}, {end}] s"
                raise AudioError(f"{path}: {what} (file has {f.frames} frames at {rate} Hz)")
            # Seek and read only the slice, so cutting utterances out of a long dialogue is cheap.
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioError(f"{path}: cannot read audio ({e})") from e

    if data.shape[0] == 0:  # the header promised frames the file does not hold (truncated file)
        raise AudioError(f"{path}: no samples could be decoded")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains non-finite samples (NaN or inf)")

    mono = data[:, channel] if channel is not None else data.mean(axis=1, dtype=np.float32)
    if rate != sr:
        # Reduce the ratio so the polyphase filter is as short as possible (44.1k -> 16k is 160/441).
        from scipy.signal import resample_poly  # scipy.signal takes seconds to import: only when resampling

        g = gcd(rate, sr)
        mono = resample_poly(mono, sr // g, rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)
