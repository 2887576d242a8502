"""`opensmile`: ComParE_2016 functionals (6373-d, the IS13 ComParE set), eGeMAPSv02 functionals
(88-d) or ComParE_2016 low-level descriptors (65-d every 10 ms).

Always fed float32 signals in [-1, 1], converted to 16-bit samples exactly as opensmile-python's
``Smile.process_signal`` does: int16 input without scaling, or the file path, would give different
features, so there is one code path only.

One openSMILE instance per worker runs every utterance: ``Smile.process_signal`` parses and builds the
whole ComParE configuration again for each call (a third of its time per RAVDESS file); SMILEapi's
``smile_reset`` returns a finished instance to its initial state instead. The values are bit-identical
to ``process_signal``'s (tests/test_pipeline.py checks it for every set).
"""

from __future__ import annotations

import os

import numpy as np

from featurize.audio import decoder_versions
from featurize.extractors import Extractor, register
from featurize.records import Utterance
from featurize.store import ArraySpec

# set name -> (openSMILE feature set, level, dimension, array kind)
FEATURE_SETS = {
    "compare": ("ComParE_2016", "Functionals", 6373, "utterance"),
    "egemaps": ("eGeMAPSv02", "Functionals", 88, "utterance"),
    "compare_lld": ("ComParE_2016", "LowLevelDescriptors", 65, "frames"),
}


@register
class OpenSmile(Extractor):
    name = "opensmile"
    needs = "audio"
    batched = False

    # float32, not the store's usual float16: ComParE functionals reach ~6e11 on real speech (energy
    # sums), far past float16's 65504, and the vectors are small (25 kB per utterance).
    def __init__(self, set: str = "compare", dtype: str = "float32"):  # noqa: A002 - the CLI option's name
        if set not in FEATURE_SETS:
            raise ValueError(f"unknown openSMILE set {set!r}; choose one of {', '.join(FEATURE_SETS)}")
        self.set, self.dtype = set, dtype
        self._smile = None

    def feature_name(self) -> str:
        return f"opensmile_{self.set}"

    def config(self) -> dict:
        import opensmile

        fs, level, dim, _ = FEATURE_SETS[self.set]
        return {
            "feature_set": fs,
            "level": level,
            "dim": dim,
            "sample_rate": self.sample_rate,
            "input": "float32 signal in [-1, 1]",
            "dtype": self.dtype,
            "opensmile": opensmile.__version__,
            **decoder_versions(),
        }

    def arrays(self) -> list[ArraySpec]:
        _, level, dim, kind = FEATURE_SETS[self.set]
        if kind == "frames":
            return [ArraySpec("lld", "frames", (dim,), self.dtype, rows_per_second=100)]
        return [ArraySpec("functionals", "utterance", (dim,), self.dtype)]

    def setup(self) -> None:
        import opensmile

        fs, level, _, _ = FEATURE_SETS[self.set]
        smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, fs),
                                feature_level=getattr(opensmile.FeatureLevel, level))
        self._smile = ReusedSmile(smile, self.sample_rate)

    def __getstate__(self) -> dict:
        # The openSMILE handle is not picklable; each worker process builds its own.
        return {**self.__dict__, "_smile": None}

    def process_one(self, utt: Utterance, audio: np.ndarray | None) -> dict[str, np.ndarray]:
        if self._smile is None:
            self.setup()
        try:
            rows = self._smile.run(audio)
        except Exception:
            self._smile.free()  # an instance that failed mid-run is not reused
            self._smile = None
            raise
        if len(rows) == 0:
            # opensmile-python would store a row of NaN here (with a warning); a NaN vector poisons
            # every normalisation it enters, so the utterance is skipped and named instead
            raise ValueError(f"too short for openSMILE {self.set}: no output from "
                             f"{len(audio) / self.sample_rate:.3f} s of audio")
        arr = self.arrays()[0]
        if arr.kind == "utterance":
            return {arr.name: rows.reshape(-1).astype(np.float32)}
        return {arr.name: rows.astype(np.float32)}

    def describe(self) -> str:
        fs, level, dim, _ = FEATURE_SETS[self.set]
        return f"opensmile: {fs} {level} ({dim}-d)"


class ReusedSmile:
    """One initialised openSMILE instance of ``smile``'s configuration, fed one signal per run through
    its external audio source and reset after each; ``run`` returns the rows its sink received."""

    def __init__(self, smile, sample_rate: int) -> None:
        from opensmile.core.config import config
        from opensmile.core.lib import OpenSMILE

        self.source, self.sink = config.EXTERNAL_SOURCE_COMPONENT, config.EXTERNAL_OUTPUT_COMPONENT
        # the options process_signal builds for each call (opensmile-python's own, so they follow it)
        options = smile._options()
        options["source"] = os.path.join(smile.default_config_root, config.EXTERNAL_INPUT_CONFIG)
        options["sampleRate"] = sample_rate
        options["nBits"] = 16
        self.handle = OpenSMILE()
        self.handle.initialize(config_file=smile.config_path, options=options, loglevel=smile.loglevel,
                               log_file=smile.logfile, debug=smile.verbose)

    def run(self, audio: np.ndarray) -> np.ndarray:
        if np.ndim(audio) != 1:
            raise ValueError(f"openSMILE is fed one mono signal, got an array of shape {np.shape(audio)}")
        rows: list[np.ndarray] = []
        # a reset instance forgets its sink callback; the wrapper keeps every one it was given alive,
        # so only the current one is kept
        self.handle.external_sink_set_callback_ex(self.sink, lambda data, meta: rows.append(data.copy()))
        del self.handle._callbacks[:-1]
        # as process_signal: scale, then truncate (float WAVs beyond +-1 wrap there too)
        samples = np.asarray(audio, dtype=np.float32) * 32768
        self.handle.external_audio_source_write_data(self.source, bytes(samples.astype(np.int16)))
        self.handle.external_audio_source_set_eoi(self.source)
        self.handle.run()
        self.handle.reset()
        return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def free(self) -> None:
        try:
            self.handle.free()
        except Exception:  # a handle in a failed state may refuse; it is dropped either way
            pass
