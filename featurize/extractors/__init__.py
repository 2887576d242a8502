"""Extractor registry: a name maps to an Extractor class; one file per extractor.

Two ways to run, chosen by the class:

* ``batched = False`` (CPU features: fbank, openSMILE): ``process_one`` is called per utterance in
  parallel worker processes (dask); the extractor must be picklable and cheap to build.
* ``batched = True`` (neural encoders): ``process_batch`` runs on batches of length-sorted
  utterances. On a GPU it runs in the main process (so CUDA is only ever initialised there) while
  worker processes decode audio ahead; an extractor whose ``cpu_replicas()`` is true computes on a
  CPU as one single-threaded model replica per worker process instead (featurize/pipeline.py).

Every extractor states its complete configuration (``config``), which fingerprints the store
group, and the arrays it writes (``arrays``).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, ClassVar

import numpy as np

from featurize.records import Utterance
from featurize.registry import Registry
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

    def cpu_replicas(self) -> bool:
        """Whether this batched extractor, as configured, computes as one single-threaded replica per
        worker process (a torch model on a CPU); false keeps the compute in the main process."""
        return False

    def process_batch(self, items: list[tuple[Utterance, np.ndarray | None]]) -> list[dict[str, np.ndarray]]:
        return [self.process_one(u, a) for u, a in items]

    def feature_name(self) -> str:
        """The store group's name before its fingerprint; extractors with variants refine it."""
        return self.name

    def describe(self) -> str:
        """One line for the disk estimate and `featurize ls` (e.g. which layers are stored)."""
        return self.name


EXTRACTORS: Registry[type[Extractor]] = Registry("extractor", __name__)


def register(cls: type[Extractor]) -> type[Extractor]:
    return EXTRACTORS.add(cls.name, cls)


def get_extractor(name: str) -> type[Extractor]:
    return EXTRACTORS.get(name)


class OptionError(ValueError):
    pass


def build_extractor(name: str, options: dict[str, Any]) -> Extractor:
    """The extractor ``name`` built from ``options`` (``-o key=value`` strings are parsed to the type its
    constructor declares for ``key``). An unknown option, a value of the wrong type or one the extractor
    refuses is an OptionError naming the option and what it accepts."""
    cls = get_extractor(name)
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    unknown = [k for k in options if k not in params]
    if unknown:
        raise OptionError(f"extractor {name!r} takes no option {', '.join(unknown)}; it takes: {', '.join(params)}")
    hints = typing.get_type_hints(cls.__init__)
    typed = {k: parse_option(name, k, v, hints.get(k, str)) for k, v in options.items()}
    try:
        return cls(**typed)
    except (ValueError, TypeError) as e:
        raise OptionError(f"extractor {name!r}: {e}") from None


def parse_option(extractor: str, key: str, value: Any, hint: Any) -> Any:
    """A command-line string as the declared type (int, float, bool, str, or one of them | None)."""
    if not isinstance(value, str):
        return value
    types = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if type(None) in typing.get_args(hint) and value.lower() == "none":
        return None
    for t in (bool, int, float):
        if t in types:
            try:
                if t is bool:
                    if value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                        return value.lower() in ("1", "true", "yes", "on")
                    raise ValueError(value)
                return t(value)
            except ValueError:
                if str in types:
                    return value
                wants = {bool: "true or false", int: "an integer", float: "a number"}[t]
                raise OptionError(f"option {key} of {extractor} wants {wants}, got {value!r}") from None
    return value


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
