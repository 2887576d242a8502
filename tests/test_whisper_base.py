"""Whisper base (multilingual, 512-d) from `make models`: found by name, transcribes, and encodes 512-d frames.
Skipped when it is not installed (`python -m featurize.models install`)."""

from __future__ import annotations

import numpy as np
import pytest

from featurize.models import WHISPER_BASE_BYTES, local_model
from tests.conftest import tone

BASE = local_model("whisper-base")
pytestmark = pytest.mark.skipif(BASE is None, reason="Whisper base not installed (make models)")


def test_the_joined_model_is_the_checked_one():
    assert (BASE / "model.bin").stat().st_size == WHISPER_BASE_BYTES


def test_whisper_encoder_by_name_is_512_wide():
    from featurize.extractors import build_extractor
    from featurize.records import Utterance

    ex = build_extractor("whisper", {"model_id": "base", "dtype": "float32"})
    assert ex.model_path == str(BASE)
    (spec,) = ex.arrays()
    assert spec.tail == (512,)
    ex.setup()
    x = tone(1.0, 220)
    (out,) = ex.process_batch([(Utterance("t/a", "t", "s", duration=1.0), x)])
    frames = out["encoder"]
    assert frames.shape == (50, 512) and np.isfinite(frames).all()


def test_transcriber_by_name_reads_speech():
    from featurize.asr import Transcriber
    from featurize.audio import load_audio
    from tests.conftest import SHARED_DATA

    t = Transcriber("base", threads=1)
    assert t.location == str(BASE)
    wav = SHARED_DATA / "ravdess" / "Actor_01" / "03-01-01-01-01-01-01.flac"
    if not wav.exists():
        pytest.skip("RAVDESS not in ../shared/data")
    text, words = t.transcribe(load_audio(wav))
    assert "talking by the door" in text.lower() and len(words) >= 5  # statement 01: "Kids are talking by the door"
