"""load_audio: any rate / channels / subtype -> mono float32 at the target rate; bad files -> AudioError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from featurize.audio import AudioError, audio_duration, load_audio


def _sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * freq * t)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * sr / len(x)


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype", "freq"),
    [
        ("stereo44k.wav", 44100, 2, "PCM_16", 440.0),
        ("narrow8k.flac", 8000, 1, "PCM_16", 1000.0),
        ("float16k.wav", 16000, 1, "FLOAT", 700.0),
        ("deep48k.wav", 48000, 1, "PCM_24", 3000.0),
    ],
)
def test_formats_become_16k_mono_float32(tmp_path: Path, name, rate, channels, subtype, freq):
    seconds = 1.0
    mono = _sine(freq, seconds, rate)
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    path = tmp_path / name
    sf.write(path, data, rate, subtype=subtype)

    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000 * seconds) <= 1
    assert np.abs(x).max() <= 1.0
    assert _peak_hz(x, 16000) == pytest.approx(freq, abs=2.0)  # resampling kept the pitch
    # Channels are averaged: the stereo file's mean is 0.75 of the left channel's 0.5 amplitude.
    expected_amp = 0.375 if channels == 2 else 0.5
    assert np.abs(x[100:-100]).max() == pytest.approx(expected_amp, rel=0.02)
    assert audio_duration(path) == pytest.approx(seconds)


def test_a_channel_asked_for_is_read_alone(tmp_path: Path):
    left, right = _sine(300, 1.0, 16000, 0.5), _sine(900, 1.0, 16000, 0.25)
    path = tmp_path / "two_speakers.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, channel=1), right.astype(np.float32))
    np.testing.assert_array_equal(load_audio(path, start=0.5, channel=0), left[8000:].astype(np.float32))
    assert _peak_hz(load_audio(path, channel=1), 16000) == pytest.approx(900, abs=2.0)
    for bad in (2, -1):
        with pytest.raises(AudioError, match=f"two_speakers.wav: no channel {bad} \\(the file has 2"):
            load_audio(path, channel=bad)
        with pytest.raises(AudioError, match=f"no channel {bad}"):
            audio_duration(path, channel=bad)


def test_float_wav_beyond_unit_range_is_kept(tmp_path: Path):
    path = tmp_path / "loud.wav"
    sf.write(path, np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32))


def test_slice_reads_only_the_span(tmp_path: Path):
    ramp = (np.arange(16000) / 16000).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, start=0.25, end=0.5), ramp[4000:8000])
    np.testing.assert_array_equal(load_audio(path, start=0.75), ramp[12000:])
    np.testing.assert_array_equal(load_audio(path, end=2.0), ramp)  # end past the file is clipped

    path44 = tmp_path / "tone44.wav"
    sf.write(path44, _sine(500, 1.0, 44100), 44100, subtype="PCM_16")
    x = load_audio(path44, start=0.2, end=0.7)
    assert abs(len(x) - 8000) <= 1
    assert _peak_hz(x, 16000) == pytest.approx(500, abs=2.0)


def test_corrupt_file(tmp_path: Path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    with pytest.raises(AudioError, match="corrupt.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="corrupt.wav"):
        audio_duration(path)


def test_empty_files(tmp_path: Path):
    zero_bytes = tmp_path / "zerobytes.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match="zerobytes.wav"):
        load_audio(zero_bytes)

    no_frames = tmp_path / "noframes.wav"
    sf.write(no_frames, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="noframes.wav.*no samples"):
        load_audio(no_frames)

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="short.wav.*empty slice"):
        load_audio(short, start=0.5, end=0.8)  # the file ends at 0.1 s


def test_non_finite_float_wav(tmp_path: Path):
    path = tmp_path / "nan.wav"
    data = np.zeros(1000, dtype=np.float32)
    data[10] = np.nan
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*non-finite"):
        load_audio(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(AudioError, match="absent.flac"):
        load_audio(tmp_path / "absent.flac")
