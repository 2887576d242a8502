"""Extractor registry: a name maps to an Extractor class; one file per extractor.

Two ways to run, chosen by the class:

* ``batched = False`` (CPU features: fbank, openSMILE): ``process_one`` is called per utterance in
  parallel worker processes (dask); the extractor must be picklable and cheap to build.
* ``batched = True`` (neural encoders): ``process_batch`` runs in the main process on batches of
  length-sorted utterances (so CUDA is only ever initialised there); audio is decoded in worker
  processes ahead of the compute.

Every extractor states its complete configuration (``config``), which fingerprints the store
group, and the arrays it writes (``arrays``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, ClassVar

import numpy as np

from featurize.records import Utterance
from featurize.store import ArraySpec


class Extractor:
    name: ClassVar[str] = ""
    needs: ClassVar[str] = "audio"  # "audio" or "text": what an utterance must have to be processed
    batched: ClassVar[bool] = False
    sample_rate: ClassVar[int] = 16000

    def __new__(cls, *args: Any, **kwargs: Any):
        # Record how this extractor was built (stored with its features), so that `train predict`
        # can rebuild the same one for new audio. Every constructor argument has a default.
        obj = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(obj, *args, **kwargs)
        obj.init_options = {k: str(v) for k, v in bound.arguments.items() if k != "self" and v is not None}
        return obj

    def config(self) -> dict[str, Any]:
        """The complete configuration, library versions included: any change makes a new group."""
        raise NotImplementedError

    def arrays(self) -> list[ArraySpec]:
        raise NotImplementedError

    def setup(self) -> None:
        """Load heavy state (models); called once in whichever process runs the extractor."""

    def process_one(self, utt: Utterance, audio: np.ndarray | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def process_batch(self, items: list[tuple[Utterance, np.ndarray | None]]) -> list[dict[str, np.ndarray]]:
        return [self.process_one(u, a) for u, a in items]

    def feature_name(self) -> str:
        """The store group's name before its fingerprint; extractors with variants refine it."""
        return self.name

    def describe(self) -> str:
        """One line for the disk estimate and `featurize ls` (e.g. which layers are stored)."""
        return self.name


EXTRACTORS: dict[str, type[Extractor]] = {}


def register(cls: type[Extractor]) -> type[Extractor]:
    EXTRACTORS[cls.name] = cls
    return cls


def get_extractor(name: str) -> type[Extractor]:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]


def estimate_bytes(arrays: list[ArraySpec], total_seconds: float, n_utts: int) -> int:
    """Uncompressed bytes the arrays will take for a corpus: the upper bound a user plans disk for."""
    total = 0
    for spec in arrays:
        row = int(np.prod(spec.tail)) * np.dtype(spec.dtype).itemsize
        if spec.kind == "utterance":
            rows = n_utts
        elif spec.rows_per_second:
            rows = total_seconds * spec.rows_per_second
        else:
            rows = n_utts * (spec.rows_per_utt or 1)
        total += int(rows * row)
    return total
