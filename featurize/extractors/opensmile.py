"""`opensmile`: ComParE_2016 functionals (6373-d, the IS13 ComParE set), eGeMAPSv02 functionals
(88-d) or ComParE_2016 low-level descriptors (65-d every 10 ms).

Always fed float32 signals in [-1, 1] through ``process_signal``: int16 input without scaling, or
the file path, would give different features, so there is one code path only.
"""

from __future__ import annotations

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
        self._smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, fs), feature_level=getattr(opensmile.FeatureLevel, level)
        )

    def __getstate__(self) -> dict:
        # The openSMILE handle is not picklable; each worker process builds its own.
        return {**self.__dict__, "_smile": None}

    def process_one(self, utt: Utterance, audio: np.ndarray | None) -> dict[str, np.ndarray]:
        if self._smile is None:
            self.setup()
        values = self._smile.process_signal(np.asarray(audio, dtype=np.float32), self.sample_rate).to_numpy()
        arr = self.arrays()[0]
        if arr.kind == "utterance":
            return {arr.name: values.reshape(-1).astype(np.float32)}
        return {arr.name: values.astype(np.float32)}

    def describe(self) -> str:
        fs, level, dim, _ = FEATURE_SETS[self.set]
        return f"opensmile: {fs} {level} ({dim}-d)"
