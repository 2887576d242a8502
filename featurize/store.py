"""The feature store: the one module that knows the Zarr layout (documented in store_schema.yaml).

Layout (Zarr format v3, a directory)::

    <store>/                        attrs: schema_version
      utterances/                   the utterance table, one 1-D array per column
      features/<extractor>-<fp>/    one group per feature; <fp> fingerprints its complete config
        attrs                       extractor, config, fingerprint, arrays, n_committed, rows_committed
        utt_ids                     [n] str, in commit order
        <array>/data                [total_rows, *tail]  (frames: rows of all utterances back to back;
                                                          utterance: one row per utterance)
        <array>/offsets             [n + 1] int64, frames arrays only

Why it is crash-safe: zarr's LocalStore writes every key atomically (temp file + rename), and a
commit writes data, then offsets and ids, then the group attributes that say how many utterances
are committed. Readers and resuming writers trust only ``n_committed``/``rows_committed``; rows a
killed run wrote past them are ignored, then overwritten on resume.

Object stores (``s3://...`` and other fsspec URLs, see featurize/storage.py): every PUT of one object is
atomic there too, so commits work unchanged; what they lack is rename. So a feature group is built in place
with its attributes written last (a group without them is ignored by readers and rebuilt by the next
writer, who holds its lock); a deleted group loses its attributes before its objects; the utterance table
is written as a new version ``utterances-<time>-<pid>`` and the root attribute ``utterance_table`` is then
pointed at it (one PUT), so readers need no lock. Locks are lease objects (featurize/locks.py: LeaseLock).
``verify --repair`` needs a rename and refuses there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import yaml
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

from featurize import DEFAULT_STORE  # noqa: F401 - importable from here too
from featurize.faults import die_at
from featurize.locks import FileLock, LeaseLock, LockTimeout, NoLock
from featurize.records import Utterance
from featurize.storage import Location

SCHEMA_VERSION = 1
LOCK_DIR = "locks"  # <store>/locks/<part>.lock: see featurize/locks.py
PARTIAL = "partial"  # <store>/partial/<group>: a feature group being built, renamed into features/ when whole
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "store_schema.yaml"
# Uncompressed bytes per data chunk: 1 MiB blosc-lz4 chunks decode in parallel (see _read_rows);
# 4 MiB zstd chunks were 3x smaller on disk than float32 but 4x slower to read.
CHUNK_BYTES = 1024 * 1024


# what zarr raises reading a zarr.json that is cut short or overwritten
DAMAGED_METADATA = (json.JSONDecodeError, UnicodeDecodeError)


class StoreError(RuntimeError):
    pass


# Write every chunk, even one that holds only the fill value: then a chunk file that is missing inside the
# committed rows is damage, never "all zeros" (zarr's default skips such chunks and reads them back as 0).
zarr.config.set({"array.write_empty_chunks": True})


@dataclass(frozen=True)
class ArraySpec:
    """One array an extractor writes for every utterance.

    kind ``frames``: a variable number of rows per utterance (frames, tokens, words);
    kind ``utterance``: exactly one row per utterance. ``tail`` is the shape of one row
    (``(dim,)`` or ``(layers, dim)``). ``rows_per_second`` (frames of audio) or ``rows_per_utt``
    (tokens, words) feed the disk estimate.
    """

    name: str
    kind: str
    tail: tuple[int, ...]
    dtype: str = "float16"
    rows_per_second: float | None = None
    rows_per_utt: float | None = None

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "tail": list(self.tail),
            "dtype": self.dtype,
            "rows_per_second": self.rows_per_second,
            "rows_per_utt": self.rows_per_utt,
        }

    @classmethod
    def from_json(cls, name: str, d: dict) -> ArraySpec:
        return cls(name, d["kind"], tuple(d["tail"]), d["dtype"], d.get("rows_per_second"), d.get("rows_per_utt"))


@dataclass
class FeatureInfo:
    name: str
    extractor: str
    fingerprint: str
    config: dict
    arrays: dict[str, ArraySpec]
    n_committed: int
    complete: bool
    nbytes_stored: int
    created: str = ""
    init_options: dict = field(default_factory=dict)
    stale: str | None = None  # why the group no longer matches the utterance table (see mark_stale)


@dataclass
class FeatureCheck:
    """What ``FeatureStore.verify`` found in one feature group."""

    feature: str
    n_committed: int
    chunks: int = 0  # chunks read
    checksummed: bool = True  # every array carries a CRC-32C (groups written before sercache added them do not)
    problems: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # ids of the utterances to un-commit
    damaged_index: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class FeatureArray:
    """One array of a feature held in memory. Frames arrays: rows of utterance i are
    ``data[offsets[i]:offsets[i + 1]]``; utterance arrays: row i."""

    utt_ids: list[str]
    data: np.ndarray
    offsets: np.ndarray | None
    spec: ArraySpec
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {u: i for i, u in enumerate(self.utt_ids)}

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._index

    def position(self, utt_id: str) -> int:
        return self._index[utt_id]

    def get(self, utt_id: str) -> np.ndarray:
        i = self._index[utt_id]
        if self.offsets is None:
            return self.data[i]
        return self.data[self.offsets[i] : self.offsets[i + 1]]


def fingerprint(config: dict) -> str:
    """Short hash of a complete extractor configuration; any change gives a new feature group."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def feature_group_name(feature_name: str, extractor: str, config: dict, arrays: Sequence[ArraySpec]) -> str:
    """``<feature_name>-<fingerprint>``: the one place the group of a configuration is named (extract and
    `train predict` both ask here)."""
    return f"{feature_name}-{fingerprint({'extractor': extractor, 'arrays': [s.to_json() for s in arrays], **config})}"


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


# Utterance ids and offsets per chunk. A partial last chunk is still decoded whole, so a chunk much
# larger than a corpus makes every read pay for it (65536 strings took 10 ms to read 1440 ids).
ID_CHUNK = 4096


def _compressors() -> tuple:
    # Byte-shuffled lz4: lossless, decodes several times faster than zstd, and still takes float16
    # features to ~0.38 of float32 raw (fbank on RAVDESS), inside the 0.55 budget. Then a CRC-32C of the
    # compressed chunk, so a flipped byte anywhere is an error instead of a silently different value.
    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())


def _checksum() -> tuple:
    """String arrays (ids, table columns): stored as written, with a CRC-32C per chunk."""
    return (Crc32cCodec(),)


def dimension_names(spec: ArraySpec) -> tuple[str, ...]:
    """Names of a data array's axes (zarr v3 ``dimension_names``, what xarray reads): rows are frames (or
    tokens, words) back to back for ``frames`` arrays, one per utterance for ``utterance`` arrays."""
    row = "row" if spec.kind == "frames" else "utterance"
    tail = ("dim",) if len(spec.tail) == 1 else ("layer", "dim") if len(spec.tail) == 2 else tuple(
        f"axis{i}" for i in range(1, len(spec.tail) + 1))
    return (row, *tail)


def _chunk_rows(tail: Sequence[int], itemsize: int) -> int:
    row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * itemsize)
    return max(1, CHUNK_BYTES // row_bytes)


# ----------------------------------------------------------------------------------------------
# The utterance table: one column per record field. None is "" for strings, NaN for floats, -1 for
# turn and channel; nested fields (words, soft labels, extra) are JSON strings.
_STR_COLS = ("utt_id", "corpus", "speaker", "label", "session", "dialog", "audio_path", "text", "word_source", "split")
_FLOAT_COLS = ("start", "end", "duration")
_JSON_COLS = ("soft_labels", "words", "extra")
_INT_COLS = ("turn", "channel")


def _table_columns(utts: Sequence[Utterance]) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for c in _STR_COLS:
        cols[c] = np.array([getattr(u, c) or "" for u in utts], dtype=object)
    for c in _FLOAT_COLS:
        cols[c] = np.array([np.nan if getattr(u, c) is None else getattr(u, c) for u in utts], dtype=np.float64)
    for c in _INT_COLS:
        cols[c] = np.array([-1 if getattr(u, c) is None else getattr(u, c) for u in utts], dtype=np.int64)
    # None and "absent" differ for text: an utterance without a transcript must not look like "".
    cols["has_text"] = np.array([u.text is not None for u in utts], dtype=bool)
    for c in _JSON_COLS:
        vals = []
        for u in utts:
            v = getattr(u, c)
            if c == "words" and v is not None:
                v = [[w.word, w.start, w.end] for w in v]
            vals.append(json.dumps(v))
        cols[c] = np.array(vals, dtype=object)
    return cols


def _rows_from_columns(cols: dict[str, np.ndarray]) -> list[Utterance]:
    n = len(cols["utt_id"])
    out = []
    for i in range(n):
        d: dict[str, Any] = {}
        for c in _STR_COLS:
            d[c] = str(cols[c][i]) or None
        if cols["has_text"][i]:
            d["text"] = str(cols["text"][i])
        for c in _FLOAT_COLS:
            v = float(cols[c][i])
            d[c] = None if math.isnan(v) else v
        for c in _INT_COLS:
            # a table written before a column existed (channel: schema 1's first stores) reads it as None
            v = int(cols[c][i]) if c in cols else -1
            d[c] = None if v < 0 else v
        for c in _JSON_COLS:
            d[c] = json.loads(str(cols[c][i]))
        if d["words"] is not None:
            d["words"] = [{"word": w, "start": s, "end": e} for w, s, e in d["words"]]
        d["extra"] = d["extra"] or {}
        out.append(Utterance.from_dict(d))
    return out


class FeatureStore:
    """A Zarr feature store on disk. Opening an existing store checks it against store_schema.yaml."""

    def __init__(self, path: str | Path, create: bool = True, lock_timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        """``lock_timeout``: seconds to wait for a lock another process holds (None: as long as it takes,
        0: refuse at once); ``on_wait`` is told when a wait begins (default: a line on stderr)."""
        self.location = Location(path)
        self.remote = self.location.remote
        self.path = self.location.local  # the directory of a local store (None for an object store)
        self.where = str(self.location)  # how messages name the store: its path or URL
        self._zstore = self.location.zarr_store()
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.ignored: dict[str, str] = {}  # half-made feature groups: name -> why
        self.damaged: set[str] = set()  # groups whose metadata does not parse (``_set_aside``; also in ignored)
        if not self.remote and (self.path / "utterances.old").exists():  # a table swap was cut short
            with self.lock("utterances"):
                self._recover_table_swap()
        if not self.remote and (self.path / PARTIAL).is_dir():
            self._recover_repairs()
        if not self._root_exists():
            if not create:
                raise StoreError(f"no feature store at {self.where} (run `featurize extract` first)")
            self._refuse_foreign_folder()
            # two jobs starting on one new store: one creates it under the lock, the other then opens it
            with self.lock("utterances"):
                if not self.location.exists("zarr.json"):
                    self._create_root()
        try:
            self.root = zarr.open_group(self._zstore, mode="r+", zarr_format=3)
            if "schema_version" not in self.root.attrs or "features" not in self.root:
                with self.lock("utterances", shared=True):  # seen mid-creation: wait for its creator to finish
                    self._reopen()
            version = self.root.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where}: store schema version {version!r}, this sercache reads "
                    f"version {SCHEMA_VERSION}; re-extract into a new store"
                )
            self.validate()
        except DAMAGED_METADATA as e:  # the root's or the utterance table's own metadata: nothing is usable
            raise StoreError(f"{self.where}: damaged: {self._damaged_metadata() or 'its metadata'} is not JSON ({e}); "
                             "restore the store from a copy, or extract into a new store") from None

    def _damaged_metadata(self, keys: Sequence[str] = ("zarr.json", "utterances/zarr.json", "features/zarr.json"),
                          ) -> str | None:
        """The first of these metadata files (default: the store's own) that does not parse."""
        for key in keys:
            try:
                if self.location.exists(key):
                    json.loads(self.location.read_bytes(key))
            except DAMAGED_METADATA:
                return key
        return None

    def _refuse_foreign_folder(self) -> None:
        """A new store is made in a new or empty folder (one holding only the locks of a store another job is
        creating): never in a file, nor among a folder's own files (a corpus given as --store by mistake).
        A store whose root metadata is lost is never given a new, empty root over the features still there
        (on an object store: its table's or its features' metadata is still under the prefix)."""
        parts = ("features", "utterances")  # what a store holds beside its root
        lost_root = StoreError(f"{self.where}: damaged: its root metadata (zarr.json) is missing; restore the store "
                               "from a copy, or extract into a new store")
        if self.remote:  # no folders to list: the parts' own metadata tells a store from an empty prefix
            if any(self.location.exists(f"{part}/zarr.json") for part in parts):
                raise lost_root
            return
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise StoreError(f"{self.where} is a file, not a feature store: give --store a folder")
        # zarr.json*: the root another job is writing now (it holds the lock; this one then waits for it)
        others = sorted(p.name for p in self.path.iterdir()
                        if p.name != LOCK_DIR and not p.name.startswith("zarr.json"))
        if not others or self.location.exists("zarr.json"):
            return
        if set(parts) & set(others):
            raise lost_root
        raise StoreError(f"{self.where} is a folder that is not a feature store (it holds {', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}): give --store a new folder, or a store's")

    def _create_root(self) -> None:
        """Write an empty store: its root (with the schema version) and features/. The caller holds the
        utterances lock."""
        root = zarr.open_group(self._zstore, mode="a", zarr_format=3)
        root.update_attributes({"schema_version": SCHEMA_VERSION, "created_by": "sercache"})
        root.require_group("features")

    # -- locks -----------------------------------------------------------------------------------
    def lock(self, part: str, shared: bool = False) -> FileLock | LeaseLock | NoLock:
        """The cross-process lock of one part of the store: ``utterances`` or ``feature <group name>``.
        Readers of an object store take none (``shared``): its utterance table is never replaced in place."""
        if shared and self.remote:
            return NoLock()
        what = "the utterance table" if part == "utterances" else part
        return self.location.lock(f"{LOCK_DIR}/{part.replace(' ', '-')}.lock", f"{what} of {self.where}",
                                  shared=shared, timeout=self.lock_timeout, on_wait=self.on_wait)

    def _root_exists(self) -> bool:
        """Whether the store's root is there; the first touch of an object store, where a wrong endpoint, missing
        credentials or a refused bucket come up, each turned into one error naming the store."""
        if not self.remote:
            return self.location.exists("zarr.json")
        try:
            return self.location.exists("zarr.json")
        except Exception as e:  # botocore's, gcsfs's, aiohttp's own classes, none of them OSError
            raise StoreError(f"cannot reach the store {self.where}: {type(e).__name__}: {e} (check the URL, the "
                             "endpoint (AWS_ENDPOINT_URL for an S3-compatible server) and the credentials)") from None

    def _reopen(self) -> None:
        self.root = zarr.open_group(self._zstore, mode="r+", zarr_format=3)

    # -- the contract ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the store against store_schema.yaml: required groups, attributes and arrays."""
        schema = load_schema()
        missing = [a for a in schema["root"]["attrs"] if a not in self.root.attrs]
        if missing:
            raise StoreError(f"{self.where}: root attributes {missing} missing (store_schema.yaml)")
        if self._table_name() in self.root:
            table = self.root[self._table_name()]
            cols = set(table.array_keys())
            need = {c for c, spec in schema["utterances"]["columns"].items() if not spec.get("added_later")}
            if need - cols:
                raise StoreError(f"{self.where}: utterance table lacks columns {sorted(need - cols)}")
        feat_schema = schema["feature"]
        for name, grp in self._feature_groups():
            for arr, spec in grp.attrs["arrays"].items():
                if spec["kind"] not in feat_schema["array_kinds"]:
                    raise StoreError(f"{self.where}: feature {name} array {arr}: unknown kind {spec['kind']!r}")
                need = feat_schema["array_kinds"][spec["kind"]]
                try:
                    lacking = arr not in grp or any(k not in grp[arr] for k in need)
                except DAMAGED_METADATA as e:  # an array's own zarr.json: that group alone is set aside
                    keys = [f"features/{name}/{arr}/zarr.json", *(f"features/{name}/{arr}/{k}/zarr.json" for k in need)]
                    self._set_aside(name, self._damaged_metadata(keys) or f"features/{name}", e)
                    break
                if lacking:
                    raise StoreError(f"{self.where}: feature {name} array {arr} lacks {need}")

    # -- the utterance table ---------------------------------------------------------------------
    def utterances(self) -> list[Utterance]:
        with self.lock("utterances", shared=True):  # never half-swapped by a writer in another process
            return self._read_table()

    def _table_name(self) -> str:
        """The group holding the utterance table: ``utterances``, or on an object store the version the root
        points at (see ``_swap_table``)."""
        return self.root.attrs.get("utterance_table", "utterances")

    def _read_table(self) -> list[Utterance]:
        self._reopen()
        name = self._table_name()
        if name not in self.root:
            return []
        table = self.root[name]
        n = int(table.attrs.get("n", -1))
        cols = {}
        for k in table.array_keys():
            z = table[k]
            try:  # every chunk checked: zarr would read a lost one as empty labels, speakers and ids
                cols[k] = _read_checked(z, self.location, z.shape[0] if n < 0 else n)
            except ChunkError as e:
                raise StoreError(
                    f"{self.where}: the utterance table is damaged: column {k}, chunk {e.index} (utterances "
                    f"{e.lo}-{e.hi - 1}): {e.reason}. Features cannot be matched to utterances without it: "
                    "restore the store from a copy, or extract into a new store") from None
        return _rows_from_columns(cols)

    def write_utterances(self, utts: Iterable[Utterance], changed_by: str = "an update of the utterance table"
                         ) -> list[str]:
        """Upsert records by utt_id (new ids appended, existing ones updated), written atomically:
        the new table is built beside the old one and swapped in by directory renames.

        Re-reading a corpus never erases what a later step added: when the incoming record has no
        transcript or no word times but the stored one has (from `featurize transcribe`), those are kept,
        and so are stored ``extra`` entries the incoming record does not set (the ASR transcript).

        An updated utterance whose audio (file or slice), transcript or word list changed makes every feature
        group holding it that was computed from that input stale (``mark_stale``). Returns those groups.
        """
        with self.lock("utterances"):  # read, merge and swap as one step: a concurrent writer's rows are kept
            inputs_changed = self._upsert_utterances(utts)
        # after the table's lock is released: a feature group's lock may be held for a whole extraction
        if not inputs_changed:
            return []
        what = "/".join(sorted(set().union(*inputs_changed.values())))
        return self.mark_stale(inputs_changed, f"{what} of {len(inputs_changed)} utterance(s) changed by {changed_by} "
                               f"at {time.strftime('%Y-%m-%dT%H:%M:%S')}")

    def _upsert_utterances(self, utts: Iterable[Utterance]) -> dict[str, set[str]]:
        """Returns the updated utterances whose feature inputs changed: id -> what changed (`input_changes`)."""
        current = {u.utt_id: u for u in self._read_table()}
        changed = False
        inputs_changed: dict[str, set[str]] = {}
        for u in utts:
            old = current.get(u.utt_id)
            if old is not None:
                if u.words is None and old.words is not None:
                    u.words, u.word_source = old.words, old.word_source
                if u.text is None and old.text is not None:
                    u.text = old.text
                u.extra = {**old.extra, **u.extra}
                if what := input_changes(old, u):
                    inputs_changed[u.utt_id] = what
            changed = changed or u != old
            current[u.utt_id] = u
        if not changed and self._table_name() in self.root:  # a resumed run: the table is already right
            return inputs_changed
        rows = list(current.values())
        cols = _table_columns(rows)
        if self.remote:
            # an object store has no rename: each table is a new version, and the root attributes point at it
            # once it is whole. Its name is new every time (two writes in one second by one process must not
            # build over the version readers are pointed at); a version a killed writer left half built is
            # deleted by the next swap.
            tmp_name = f"utterances-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        else:
            tmp_name = "utterances.new"
            if tmp_name in self.root:
                del self.root[tmp_name]
        grp = self.root.create_group(tmp_name)
        for c, values in cols.items():
            dtype = str if values.dtype == object else values.dtype
            arr = grp.create_array(
                c,
                shape=values.shape,
                dtype=dtype,
                chunks=(max(1, min(len(values), 65536)),),
                compressors=_compressors() if dtype is not str else _checksum(),
                dimension_names=("utterance",),
            )
            if len(values):
                arr[:] = values
        grp.attrs["n"] = len(rows)
        die_at("table-built")
        self._swap_table(tmp_name)
        return inputs_changed

    def _swap_table(self, built: str) -> None:
        """Put the table built as ``built`` in place. Local: directory renames (recovered at open when cut
        short). Object store: one write of the root attributes points readers at the new version (a PUT is
        atomic); the version before it is kept for readers still reading it, older ones are deleted."""
        if self.remote:
            previous = self._table_name()
            self.root.update_attributes({"utterance_table": built})
            die_at("table-swap")
            with warnings.catch_warnings():  # locks/ holds lease objects, not zarr: zarr warns while listing
                warnings.simplefilter("ignore")
                names = list(self.root.group_keys())
            for name in names:
                if name.startswith("utterances") and name not in (built, previous):
                    self.location.remove_tree(name)
            self._reopen()
            return
        base, new, old = (self.path / n for n in ("utterances", "utterances.new", "utterances.old"))
        if base.exists():
            base.rename(old)
        die_at("table-swap")
        new.rename(base)
        if old.exists():
            shutil.rmtree(old)
        self._reopen()

    def _recover_table_swap(self) -> None:
        # A kill between the renames in _swap_table leaves utterances.old (and maybe .new): finish
        # the swap if the new table is complete, else go back to the old one.
        base, new, old = (self.path / n for n in ("utterances", "utterances.new", "utterances.old"))
        if old.exists() and not base.exists():
            if new.exists():
                new.rename(base)
                shutil.rmtree(old)
            else:
                old.rename(base)
        elif old.exists():
            shutil.rmtree(old)

    def _recover_repairs(self) -> None:
        """Finish the swap of a repair killed between its renames (its group is whole under partial/ as
        ``<name>.repaired``, none is in features/), and clear what a finished or abandoned one left. A repair
        still running holds the group's lock: it is left alone."""
        partial = self.path / PARTIAL
        names = {p.name.removesuffix(".repaired") for p in partial.glob("*.repaired")}
        names |= {p.name.split(".damaged-")[0] for p in partial.glob("*.damaged-*")}  # killed after its swap
        for name in sorted(names):
            repaired = partial / f"{name}.repaired"
            try:
                lock = self.location.lock(f"{LOCK_DIR}/feature-{name}.lock", f"feature {name} of {self.where}",
                                          shared=False, timeout=0, on_wait=None).acquire()
            except LockTimeout:
                continue
            try:
                if repaired.exists() and not (self.path / "features" / name).exists():
                    os.rename(repaired, self.path / "features" / name)
                elif repaired.exists():  # built by a repair killed before its first rename: features/ has the group
                    shutil.rmtree(repaired)
                if (self.path / "features" / name).exists():  # the swap is done: the damaged copy is not needed
                    for doomed in partial.glob(f"{name}.damaged-*"):
                        shutil.rmtree(doomed)
            finally:
                lock.release()

    def record_reading(self, source: str, entries: list[tuple[str, str]]) -> None:
        """Keep what reading ``source`` (a corpus and its location) skipped: [(what, reason)], replacing what
        an earlier read of it recorded (`featurize ls --skips` lists them)."""
        with self.lock("utterances"):
            self._reopen()
            skips = dict(self.root.attrs.get("reading_skips", {}))
            if entries or source in skips:
                skips[source] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "skipped": [list(e) for e in entries]}
                self.root.update_attributes({"reading_skips": skips})

    def skips(self) -> list[tuple[str, str, str]]:
        """(where: a corpus source or a feature group, what, reason) for every skip the store knows of."""
        out = [(src, what, reason) for src, rec in sorted(self.root.attrs.get("reading_skips", {}).items())
               for what, reason in rec["skipped"]]
        for name, grp in self._feature_groups():
            out += [(name, uid, reason) for uid, reason in sorted(dict(grp.attrs.get("skipped", {})).items())]
        return out

    # -- features --------------------------------------------------------------------------------
    def _feature_groups(self) -> list[tuple[str, zarr.Group]]:
        """The usable feature groups. A group without its attributes (half made by a killed writer of an
        older sercache, which built groups in place) is left out, noted in ``ignored``, and removed by the
        next writer of that configuration or by ``featurize verify --repair``."""
        if "features" not in self.root:
            return []
        feats = self.root["features"]
        need = load_schema()["feature"]["attrs"]
        out = []
        try:
            names = sorted(feats.group_keys())
        except DAMAGED_METADATA:  # zarr parses every group's zarr.json to list them: list their folders instead
            names = self.location.child_folders("features")
        for name in names:
            if name in self.damaged:
                continue
            try:
                grp = feats[name]
            except KeyError:  # a folder with no metadata: not a group (zarr would not list it either)
                continue
            except DAMAGED_METADATA as e:  # the other groups stay usable; verify names it, --repair removes it
                self._set_aside(name, f"features/{name}/zarr.json", e)
                continue
            absent = [a for a in need if a not in grp.attrs]
            if absent:
                self.ignored[name] = f"half-made group (no {', '.join(absent)}): ignored"
            else:
                out.append((name, grp))
        return out

    def _set_aside(self, name: str, key: str, error: Exception) -> None:
        """A group whose metadata file ``key`` does not parse: left out of every listing, named in ``ignored``
        (verify shows it, --repair removes it) and rebuilt whole by the next writer of its configuration."""
        self.damaged.add(name)
        self.ignored[name] = f"damaged: {key} is not JSON ({error}), so its arrays cannot be read: ignored"

    def features(self) -> list[FeatureInfo]:
        return [self._info(name, grp) for name, grp in self._feature_groups()]

    def feature_info(self, name: str) -> FeatureInfo:
        """One group's description by its full name, without sizing every other group (a ``du`` each on S3)."""
        if "features" in self.root and name in self.root["features"]:
            grp = self.root["features"][name]
            if all(a in grp.attrs for a in load_schema()["feature"]["attrs"]):  # not a half-made group
                return self._info(name, grp)
        known = ", ".join(n for n, _ in self._feature_groups()) or "none"
        raise StoreError(f"no feature group {name!r} in {self.where} (stored: {known}); give the full name "
                         f"`featurize ls` shows")

    def _info(self, name: str, grp) -> FeatureInfo:
        a = grp.attrs
        return FeatureInfo(
            name=name,
            extractor=a["extractor"],
            fingerprint=a["fingerprint"],
            config=dict(a["config"]),
            arrays={k: ArraySpec.from_json(k, v) for k, v in a["arrays"].items()},
            n_committed=int(a["n_committed"]),
            complete=bool(a.get("complete", False)),
            nbytes_stored=self.location.tree_bytes(f"features/{name}"),
            created=a.get("created", ""),
            init_options=dict(a.get("init_options", {})),
            stale=a.get("stale"),
        )

    def resolve_feature(self, name: str) -> str:
        """A feature group name from a full name (``fbank-1a2b3c4d``) or an extractor name
        (``fbank``) when exactly one configuration of that extractor is stored."""
        if "features" in self.root and name in self.root["features"]:  # a full name: no need to list the groups
            absent = [a for a in load_schema()["feature"]["attrs"] if a not in self.root["features"][name].attrs]
            if absent:  # an object store builds a group in place: it may be half made
                raise StoreError(f"feature {name} in {self.where} is half made (no {', '.join(absent)}): being "
                                 "created by a writer now, or left by a killed one (the next extract of it, or "
                                 "`featurize verify --repair`, rebuilds or removes it)")
            return name
        names = [n for n, _ in self._feature_groups()]
        # Match the feature name (``opensmile_compare``) or the extractor (``opensmile``).
        matches = [n for n in names if name in (n.rsplit("-", 1)[0], self.root["features"][n].attrs["extractor"])]
        if len(matches) > 1:
            # an extractor's name means its default configuration when that one is stored once: `opensmile`
            # is ComParE_2016 even with eGeMAPS beside it
            from featurize.extractors import EXTRACTORS

            if name in EXTRACTORS.names():
                default = EXTRACTORS.get(name)().feature_name()
                preferred = [n for n in matches if n.rsplit("-", 1)[0] == default]
                matches = preferred if len(preferred) == 1 else matches
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(names) or "none"
            raise StoreError(f"no feature {name!r} in {self.where} (stored: {known}); run `featurize extract`")
        raise StoreError(
            f"{name!r} is ambiguous in {self.where}: {', '.join(matches)} (different configs); name one in full, "
            f"or remove the one you no longer want with `featurize rm NAME --store {self.where}`"
        )

    def writer(self, feature_name: str, extractor: str, config: dict, arrays: Sequence[ArraySpec],
               init_options: dict | None = None) -> FeatureWriter:
        """Open (or create) the group ``<feature_name>-<fingerprint>`` for this exact configuration, holding
        its lock until the writer's ``finish`` or ``close`` (another process writing it is waited for).
        An existing group with the same fingerprint is resumed; a different configuration never
        touches it. ``init_options`` (how the extractor was built) are kept so it can be rebuilt."""
        name = feature_group_name(feature_name, extractor, config, arrays)
        lock = self.lock(f"feature {name}").acquire()
        try:
            self._reopen()  # what another writer did while we waited
            feats = self.root.require_group("features")
            try:
                attrs = feats[name].attrs if name in feats else None
                # inputs changed since (see mark_stale), or half made by an older sercache: rebuilt whole
                rebuild = name in self.damaged or (
                    attrs is not None and (attrs.get("stale") or "n_committed" not in attrs))
            except DAMAGED_METADATA:  # its metadata does not parse (verify names it): its arrays are lost anyway
                rebuild = True
            if rebuild:
                self._remove_group(name)
            if name not in self.root["features"]:
                self._create_group(name, extractor, config, arrays, init_options or {})
            writer = FeatureWriter(self.root["features"][name], name, lock, self)
            try:
                writer.check_resumable()
            except ChunkError as e:
                raise StoreError(self._damage_message(
                    name, e, "; not resumed: the next commit would rewrite that chunk and hide the damage")) from None
            return writer
        except BaseException:
            lock.release()
            raise

    def _create_group(self, name: str, extractor: str, config: dict, arrays: Sequence[ArraySpec],
                      init_options: dict) -> None:
        """Build the group whole under partial/ (arrays, then attributes), then rename it into features/:
        a kill at any point leaves either no group or a complete one. The caller holds the group's lock.
        An object store has no rename: the group is built in place, attributes last, and until they are
        written readers see a half-made group, which they ignore and the next writer rebuilds."""
        if self.remote:
            self._build_group(f"features/{name}", name, extractor, config, arrays, init_options)
        else:
            self._build_group(f"{PARTIAL}/{name}", name, extractor, config, arrays, init_options)
            die_at("group-built")
            self.location.rename(f"{PARTIAL}/{name}", f"features/{name}")
        self._reopen()

    def _build_group(self, where: str, name: str, extractor: str, config: dict, arrays: Sequence[ArraySpec],
                     init_options: dict) -> zarr.Group:
        """An empty feature group at ``where`` (a key in the store), attributes last."""
        self.location.remove_tree(where)  # left by a writer killed while building it
        # local: a group of its own at that directory (nothing written above it, so partial/ empties again)
        target = {"store": self._zstore, "path": where} if self.remote else {"store": str(self.path / where)}
        grp = zarr.open_group(**target, mode="w", zarr_format=3)
        for spec in arrays:
            sub = grp.create_group(spec.name)
            rows = _chunk_rows(spec.tail, np.dtype(spec.dtype).itemsize)
            sub.create_array("data", shape=(0, *spec.tail), dtype=spec.dtype, chunks=(rows, *spec.tail),
                             compressors=_compressors(), dimension_names=dimension_names(spec))
            if spec.kind == "frames":
                off = sub.create_array("offsets", shape=(1,), dtype="int64", chunks=(ID_CHUNK,),
                                       compressors=_compressors(), dimension_names=("utterance_edge",))
                off[:] = np.zeros(1, dtype=np.int64)
        grp.create_array("utt_ids", shape=(0,), dtype=str, chunks=(ID_CHUNK,), compressors=_checksum(),
                         dimension_names=("utterance",))
        grp.update_attributes(
            {
                "extractor": extractor,
                "fingerprint": name.rsplit("-", 1)[1],
                "config": json.loads(json.dumps(config, default=str)),
                "arrays": {s.name: s.to_json() for s in arrays},
                "n_committed": 0,
                "rows_committed": {s.name: 0 for s in arrays},
                "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "init_options": init_options,
            }
        )
        return grp

    def _remove_group(self, name: str) -> None:
        """Delete a feature group (the caller holds its lock): renamed out of features/ first, so no reader
        ever sees it half deleted; on an object store its attributes are cleared first (readers then ignore
        it as half made), then its objects are deleted."""
        if self.remote:
            try:
                self.root["features"][name].attrs.put({})
            except DAMAGED_METADATA:  # readers ignore it already
                pass
            self.location.remove_tree(f"features/{name}")
        else:
            doomed = self.path / PARTIAL / f"{name}.deleting-{os.getpid()}"
            doomed.parent.mkdir(exist_ok=True)
            os.rename(self.path / "features" / name, doomed)
            shutil.rmtree(doomed)
        self.ignored.pop(name, None)
        self.damaged.discard(name)
        self._reopen()

    def mark_stale(self, changed: dict[str, set[str]], reason: str) -> list[str]:
        """Mark every feature group that holds an utterance of ``changed`` (id -> what changed: ``audio``,
        ``text``, ``words``; see `input_changes`) and was computed from what changed as stale: readers refuse
        it and the next extract rebuilds it. Returns the groups marked."""
        from featurize.extractors import get_extractor  # here: the extractors import this module

        marked = []
        for name, grp in self._feature_groups():
            try:
                needs = get_extractor(grp.attrs.get("extractor", "")).needs
            except ValueError:  # an extractor this sercache does not know: it may have read anything
                needs = None
            if needs == "audio":
                reads = {"audio"}
            elif needs == "text":
                from_words = str(grp.attrs.get("config", {}).get("words_from", "")).startswith("utterance words")
                reads = {"text", "words"} if from_words else {"text"}
            else:
                reads = {"audio", "text", "words"}
            ids = {u for u, what in changed.items() if what & reads}
            if ids and ids.intersection(self.committed_ids(name)):
                with self.lock(f"feature {name}"):
                    grp.update_attributes({"stale": reason})
                marked.append(name)
        return marked

    # -- checking -------------------------------------------------------------------------------
    def verify(self, feature: str, table_ids: set[str] | None = None) -> FeatureCheck:
        """Read every committed chunk of a feature group and check it against its attributes: chunks present
        and their checksums right, offsets starting at 0, monotone and ending at the committed rows, ids
        unique and in the utterance table. Returns what was found, per utterance where it can be said."""
        grp = self.root["features"][self.resolve_feature(feature)]
        attrs = grp.attrs
        n = int(attrs["n_committed"])
        check = FeatureCheck(feature, n)
        bad: set[int] = set()  # indices (commit order) of damaged utterances

        def problem(where: str, what: str, indices: Iterable[int] = ()) -> None:
            idx = sorted(set(indices))
            bad.update(idx)
            check.problems.append(f"{where}: {what}")

        ids_arr = grp["utt_ids"]
        check.checksummed = _has_crc(ids_arr)
        if ids_arr.shape[0] < n:
            problem("utt_ids", f"{ids_arr.shape[0]} ids for {n} committed utterances", range(ids_arr.shape[0], n))
        ids, broken = _read_tolerant(ids_arr, self.location, min(n, ids_arr.shape[0]), check)
        ids = [str(u) for u in ids]
        broken_ids = broken
        for i, lo, hi, why in broken:
            problem(f"utt_ids chunk {i}", why, range(lo, hi))
        seen: dict[str, int] = {}
        # the utterance table's ids (a caller checking every group reads them once and passes them)
        table = table_ids if table_ids is not None else {u.utt_id for u in self.utterances()}
        for i, u in enumerate(ids):
            if any(lo <= i < hi for _, lo, hi, _ in broken):
                continue
            if u in seen:
                problem("utt_ids", f"{u!r} committed twice (positions {seen[u]} and {i})", [i])
            seen[u] = i
            if u not in table:
                problem("utt_ids", f"{u!r} is not in the utterance table", [i])
        rows_committed = attrs["rows_committed"]
        for name, js in attrs["arrays"].items():
            spec = ArraySpec.from_json(name, js)
            data = grp[name]["data"]
            check.checksummed = check.checksummed and _has_crc(data)
            rows = int(rows_committed.get(name, -1))
            if rows < 0 or rows > data.shape[0]:
                problem(f"{name}/data", f"{rows} rows committed, the array holds {data.shape[0]}", range(n))
                continue
            if spec.kind == "utterance":
                if rows != n:
                    problem(f"{name}/data", f"{rows} rows committed for {n} utterances", range(min(rows, n), n))
                _, broken = _read_tolerant(data, self.location, rows, check, keep=False)
                for i, lo, hi, why in broken:
                    problem(f"{name}/data chunk {i}", why, range(lo, hi))
                continue
            offs_arr = grp[name]["offsets"]
            check.checksummed = check.checksummed and _has_crc(offs_arr)
            if offs_arr.shape[0] < n + 1:
                problem(f"{name}/offsets", f"{offs_arr.shape[0]} offsets for {n} utterances", range(n))
                continue
            offsets, off_broken = _read_tolerant(offs_arr, self.location, n + 1, check)
            known = np.ones(n + 1, dtype=bool)
            for i, lo, hi, why in off_broken:
                known[lo:hi] = False
                problem(f"{name}/offsets chunk {i}", why, range(max(lo - 1, 0), min(hi, n)))
            if known[0] and offsets[0] != 0:
                problem(f"{name}/offsets", f"start at {offsets[0]}, not 0", [0])
            if known[n] and offsets[n] != rows:
                problem(f"{name}/offsets", f"end at {offsets[n]}, {rows} rows committed", range(n))
            step = np.diff(offsets)
            backwards = [i for i in np.flatnonzero(step < 0) if known[i] and known[i + 1]]
            if backwards:
                # offsets[i] or offsets[i + 1] is wrong: utterance i and the neighbour sharing the wrong one
                near = {j for i in backwards for j in (i - 1, i, i + 1) if 0 <= j < n}
                problem(f"{name}/offsets", f"decrease at {len(backwards)} utterance(s)", near)
            outside = [i for i in range(n) if known[i + 1] and offsets[i + 1] > rows]
            if outside:
                problem(f"{name}/offsets", f"{len(outside)} utterance(s) end past the committed rows", outside)
            _, broken = _read_tolerant(data, self.location, rows, check, keep=False)
            for i, lo, hi, why in broken:
                hit = [u for u in range(n) if not (known[u] and known[u + 1])
                       or (offsets[u] < hi and offsets[u + 1] > lo)]
                problem(f"{name}/data chunk {i} (rows {lo}-{hi - 1})", why, hit)
        unreadable = {i for _, lo, hi, _ in broken_ids for i in range(lo, hi)}
        check.damaged = [ids[i] if i < len(ids) and i not in unreadable else f"#{i} (id unreadable)"
                         for i in sorted(bad)]
        check.damaged_index = sorted(bad)
        return check

    def repair(self, feature: str, check: FeatureCheck) -> int:
        """Un-commit exactly the damaged utterances of ``check``: the group is rebuilt beside the old one from
        every intact utterance (in commit order) and swapped in, so the next extract redoes only the damaged
        ones. Returns how many were un-committed."""
        if not check.damaged_index:
            return 0
        if self.remote:
            raise StoreError(f"{self.where}: repair needs a rename, which object stores lack; copy the store to "
                             f"a local directory, repair it there and copy it back")
        with self.lock(f"feature {feature}"):
            grp = self.root["features"][feature]
            attrs = dict(grp.attrs)
            n = int(attrs["n_committed"])
            doomed = set(check.damaged_index)
            keep = [i for i in range(n) if i not in doomed]
            ids = [str(u) for u in _read_tolerant(grp["utt_ids"], self.location, n, None)[0]]
            specs = [ArraySpec.from_json(k, v) for k, v in attrs["arrays"].items()]
            values: list[dict] = [{} for _ in keep]
            for spec in specs:
                rows = int(attrs["rows_committed"][spec.name])
                data = _read_tolerant(grp[spec.name]["data"], self.location, rows, None)[0]
                if spec.kind == "utterance":
                    for v, i in zip(values, keep, strict=True):
                        v[spec.name] = data[i]
                else:
                    offsets = _read_tolerant(grp[spec.name]["offsets"], self.location, n + 1, None)[0]
                    for v, i in zip(values, keep, strict=True):
                        v[spec.name] = data[offsets[i] : offsets[i + 1]]
            rebuilt = f"{PARTIAL}/{feature}.repaired"
            new = self._build_group(rebuilt, feature, attrs["extractor"], attrs["config"], specs,
                                    attrs.get("init_options", {}))
            new.update_attributes({"fingerprint": attrs["fingerprint"], "created": attrs.get("created", "")})
            writer = FeatureWriter(new, feature)
            writer.commit([ids[i] for i in keep], values)
            writer.finish(False, {**attrs.get("skipped", {})})
            old = f"{PARTIAL}/{feature}.damaged-{os.getpid()}"
            self.location.rename(f"features/{feature}", old)
            die_at("repair-swap")  # a kill here leaves no group in features/: `_recover_repairs` finishes the swap
            self.location.rename(rebuilt, f"features/{feature}")
            shutil.rmtree(self.path / old)
            self._reopen()
        return len(doomed)

    def remove_ignored(self) -> list[str]:
        """Delete the half-made groups ``ignored`` lists (``featurize verify --repair``)."""
        removed = []
        for name in list(self.ignored):
            with self.lock(f"feature {name}"):
                self._reopen()
                feats = self.root["features"]
                try:  # gone, or a writer finished it (a group damaged inside is removed whatever its attributes)
                    done = name not in self.damaged and (name not in feats or "n_committed" in feats[name].attrs)
                except DAMAGED_METADATA:
                    done = False
                if done:
                    self.ignored.pop(name)
                    continue
                self._remove_group(name)
            removed.append(name)
        return removed

    def resumable_ids(self, feature: str) -> set[str]:
        """The utterances a writer of group ``feature`` would find committed and skip, read without opening it
        for writing (`extract --dry-run`): none for a group that is missing, half made, damaged or stale,
        which a writer rebuilds whole."""
        if "features" not in self.root or feature in self.damaged:
            return set()
        try:
            info = self.feature_info(feature)
        except (StoreError, *DAMAGED_METADATA):
            return set()
        return set() if info.stale else set(self.committed_ids(feature))

    def committed_ids(self, feature: str) -> list[str]:
        grp = self.root["features"][feature]
        n = int(grp.attrs["n_committed"])
        if not n:
            return []
        try:  # checked: a lost ids chunk would read as empty ids
            return [str(u) for u in _read_checked(grp["utt_ids"], self.location, n)]
        except ChunkError as e:
            raise StoreError(self._damage_message(feature, e)) from None

    def read(
        self, feature: str, array: str | None = None, layers: Sequence[int] | None = None, dtype: str | None = None
    ) -> FeatureArray:
        """Load one array of a feature into memory (committed utterances only).

        ``layers`` selects entries of the layer axis of ``[rows, layers, dim]`` arrays while
        reading, so a subset of a large layered feature never has to fit in memory whole.
        zarr fetches and decodes the chunks concurrently (blosc decodes on all cores).
        """
        feature = self.resolve_feature(feature)
        grp = self.root["features"][feature]
        specs = {k: ArraySpec.from_json(k, v) for k, v in grp.attrs["arrays"].items()}
        if array is None:
            if len(specs) != 1:
                raise StoreError(f"feature {feature} has arrays {sorted(specs)}: name one")
            array = next(iter(specs))
        if array not in specs:
            raise StoreError(f"feature {feature} has no array {array!r} (has {sorted(specs)})")
        spec = specs[array]
        n = int(grp.attrs["n_committed"])
        rows = int(grp.attrs["rows_committed"][array])
        if layers is not None:
            if len(spec.tail) != 2:
                raise StoreError(f"feature {feature}/{array} has no layer axis (row shape {spec.tail})")
            layers = list(layers)
            bad = [i for i in layers if not 0 <= i < spec.tail[0]]
            if bad:
                raise StoreError(f"feature {feature}/{array} has {spec.tail[0]} layers; asked for {bad}")
        zdata = grp[array]["data"]
        try:
            ids = [str(u) for u in _read_checked(grp["utt_ids"], self.location, n)] if n else []
            offsets = _read_checked(grp[array]["offsets"], self.location, n + 1) if spec.kind == "frames" else None
            if layers is not None:
                # Orthogonal selection decodes chunk by chunk, so only the chosen layers are ever held whole.
                _require_chunks(zdata, self.location, rows)
                data = zdata.oindex[:rows, layers]
            else:
                data = _read_rows(zdata, self.location, rows)
        except ChunkError as e:
            raise StoreError(self._damage_message(feature, e)) from None
        except (ValueError, RuntimeError) as e:  # zarr's own read path: a checksum or a codec failed
            raise StoreError(f"{self.where}: feature {feature}/{array}: unreadable ({e}); "
                             f"run `featurize verify --store {self.where}`") from None
        if layers is not None:
            spec = ArraySpec(
                spec.name, spec.kind, (len(layers), spec.tail[1]), spec.dtype, spec.rows_per_second, spec.rows_per_utt
            )
        if dtype is not None:
            data = data.astype(dtype)
        return FeatureArray(ids, data, offsets, spec)

    def _damage_message(self, feature: str, e: ChunkError, consequence: str = "") -> str:
        """One line naming the feature, the array, the chunk and the utterances it holds (and ``consequence``:
        what was not done because of it)."""
        affected = self._utterances_in(feature, e.array, e.lo, e.hi)
        who = (f"{len(affected)} utterance(s) affected: {', '.join(affected[:5])}"
               + (f" and {len(affected) - 5} more" if len(affected) > 5 else "")) if affected else \
            "the utterances it holds cannot be named (their ids or offsets are damaged too)"
        return (f"{self.where}: feature {feature}, array {e.array}: {e.reason} (rows {e.lo}-{e.hi - 1}, chunk "
                f"{e.index}); {who}{consequence}. Run `featurize verify --store {self.where} --repair`, then "
                "extract again")

    def _utterances_in(self, feature: str, array_path: str, lo: int, hi: int) -> list[str]:
        """Ids of the committed utterances with rows in [lo, hi) of ``array_path`` (relative to the group),
        as far as the ids and offsets can still be read."""
        grp = self.root["features"][feature]
        n = int(grp.attrs["n_committed"])
        try:
            ids = [str(u) for u in _read_checked(grp["utt_ids"], self.location, n)]
        except (ChunkError, ValueError, RuntimeError):
            return []
        name, _, part = array_path.partition("/")
        if name == "utt_ids":
            return ids[lo:hi]
        spec = grp.attrs["arrays"][name]
        if spec["kind"] == "utterance" or part == "offsets":
            return ids[max(lo - (part == "offsets"), 0) : hi]
        try:
            offsets = _read_checked(grp[name]["offsets"], self.location, n + 1)
        except (ChunkError, ValueError, RuntimeError):
            return []
        return [ids[i] for i in range(n) if offsets[i] < hi and offsets[i + 1] > lo]

    def delete_feature(self, feature: str) -> None:
        feature = self.resolve_feature(feature)
        with self.lock(f"feature {feature}"):
            self._remove_group(feature)


def input_changes(old: Utterance, new: Utterance) -> set[str]:
    """What of an utterance's feature inputs an update changes: ``audio`` (its file, slice or channel), ``text`` (its
    transcript), ``words`` (its word strings; new word times alone change no feature)."""
    what = set()
    if (old.audio_path, old.start, old.end, old.channel) != (new.audio_path, new.start, new.end, new.channel):
        what.add("audio")
    if old.text != new.text:
        what.add("text")
    if [w.word.strip() for w in old.words or []] != [w.word.strip() for w in new.words or []]:
        what.add("words")
    return what


class ChunkError(StoreError):
    """A chunk inside the committed rows of an array is missing or fails its checksum / decoding."""

    def __init__(self, array: str, index: int, lo: int, hi: int, reason: str) -> None:
        super().__init__(f"{array}: chunk {index} (rows {lo}-{hi - 1}): {reason}")
        self.array, self.index, self.lo, self.hi, self.reason = array, index, lo, hi, reason


def _array_name(z: zarr.Array) -> str:
    """``<array>/data``, ``<array>/offsets`` or ``utt_ids``: the path inside its feature group."""
    parts = z.path.split("/")
    return "/".join(parts[2:]) if parts[0] == "features" else z.path


def _chunk_key(z: zarr.Array, i: int) -> str:
    # default chunk keys, chunked along the first axis only: c/<i>/0/.../0
    return "/".join([z.path, "c", str(i), *("0" for _ in z.shape[1:])])


def _chunk_bounds(z: zarr.Array, rows: int) -> list[tuple[int, int, int]]:
    step = z.chunks[0]
    return [(i, i * step, min((i + 1) * step, rows)) for i in range(math.ceil(rows / step))]


def _require_chunks(z: zarr.Array, loc: Location, rows: int) -> None:
    """Every chunk holding one of the first ``rows`` rows exists: zarr itself would hand back fill values
    for a missing one. (Stores write every chunk, empty ones too: see ``zarr.config`` below.)"""
    for i, lo, hi in _chunk_bounds(z, rows):
        if not loc.exists(_chunk_key(z, i)):
            raise ChunkError(_array_name(z), i, lo, hi, "chunk file missing")


def _require_tail(z: zarr.Array, loc: Location, rows: int) -> None:
    """The chunk holding committed rows that an append after the first ``rows`` rows rewrites (none when
    ``rows`` ends on a chunk boundary) is present and decodes."""
    step = z.chunks[0]
    if rows % step == 0:
        return
    i, lo = rows // step, rows // step * step
    if not loc.exists(_chunk_key(z, i)):
        raise ChunkError(_array_name(z), i, lo, rows, "chunk file missing")
    try:
        z[lo:rows]
    except (ValueError, RuntimeError) as e:
        raise ChunkError(_array_name(z), i, lo, rows, _why(e)) from None


def _read_checked(z: zarr.Array, loc: Location, rows: int) -> np.ndarray:
    """The first ``rows`` rows through zarr, with missing chunks and failed checksums as ChunkError."""
    _require_chunks(z, loc, rows)
    try:
        return z[:rows]
    except (ValueError, RuntimeError):
        for i, lo, hi in _chunk_bounds(z, rows):  # find the chunk that fails, to name it
            try:
                z[lo:hi]
            except (ValueError, RuntimeError) as e:
                raise ChunkError(_array_name(z), i, lo, hi, _why(e)) from None
        raise


def _read_tolerant(z: zarr.Array, loc: Location, rows: int, check: FeatureCheck | None,
                   keep: bool = True) -> tuple[np.ndarray | None, list[tuple[int, int, int, str]]]:
    """The first ``rows`` rows read chunk by chunk, a damaged chunk's rows left as fill values:
    (rows or None when not ``keep``, [(chunk, first row, end row, why) for each damaged chunk])."""
    out = np.empty((rows, *z.shape[1:]), dtype=object if z.dtype.kind in "OTU" else z.dtype) if keep else None
    broken = []
    for i, lo, hi in _chunk_bounds(z, rows):
        if check is not None:
            check.chunks += 1
        if not loc.exists(_chunk_key(z, i)):
            broken.append((i, lo, hi, "chunk file missing"))
            continue
        try:
            block = z[lo:hi]
        except (ValueError, RuntimeError) as e:
            broken.append((i, lo, hi, _why(e)))
            continue
        if keep:
            out[lo:hi] = block
    if keep:
        for _, lo, hi, _ in broken:
            out[lo:hi] = "" if out.dtype == object else 0
    return out, broken


def _has_crc(z: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in z.metadata.codecs)


def _why(e: Exception) -> str:
    text = str(e)
    if "checksum" in text.lower():
        return "checksum mismatch (the chunk's bytes changed after they were written)"
    return f"cannot be decoded ({type(e).__name__}: {text})"


def _read_rows(z: zarr.Array, loc: Location, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a data array written by this module, decoded straight into one array.

    zarr's generic read path decodes each chunk into a buffer of its own and then copies it into the
    result, which made loading a feature about 2x slower than a plain read of the same bytes. Our data
    arrays have one layout (chunked along rows only, default chunk keys, bytes + blosc [+ crc32c]), so each
    chunk file can be read, its checksum checked and blosc-decoded into its slice of the result, on all
    cores (blosc and crc32c release the GIL). Any other layout goes through zarr. A missing chunk or a
    failed checksum raises ChunkError: never fill values in committed rows.
    """
    md = z.metadata
    codecs = md.codecs
    with_crc = len(codecs) == 3 and isinstance(codecs[2], Crc32cCodec)
    simple = (
        len(codecs) == 2 + with_crc
        and isinstance(codecs[0], BytesCodec)
        and isinstance(codecs[1], BloscCodec)
        and tuple(z.chunks[1:]) == tuple(z.shape[1:])
        and md.chunk_key_encoding.name == "default"
        and getattr(md.chunk_key_encoding, "separator", "/") == "/"
        and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
    )
    if rows == 0:
        return z[:0]
    if not simple:
        return _read_checked(z, loc, rows)
    out = np.empty((rows, *z.shape[1:]), dtype=z.dtype)
    flat = out.reshape(-1).view(np.uint8)
    chunk_nbytes = z.chunks[0] * (flat.size // rows)
    codec = Blosc()
    # one read buffer per thread, reused for every chunk it reads: a new bytes object per chunk cost
    # more than decoding it (fresh pages to fault in); blosc's worst case is its 16-byte header more
    buffers = threading.local()

    def decode(bounds: tuple[int, int, int]) -> None:
        i, row_lo, row_hi = bounds
        lo, hi = i * chunk_nbytes, min((i + 1) * chunk_nbytes, flat.size)
        if not hasattr(buffers, "chunk"):
            buffers.chunk = np.empty(chunk_nbytes + 64, dtype=np.uint8)
        try:
            buf = loc.read_into(_chunk_key(z, i), buffers.chunk)
        except FileNotFoundError:
            raise ChunkError(_array_name(z), i, row_lo, row_hi, "chunk file missing") from None
        if with_crc:
            body, stored = buf[:-4], buf[-4:].tobytes()
            if np.uint32(google_crc32c.value(body)).tobytes() != stored:
                raise ChunkError(_array_name(z), i, row_lo, row_hi,
                                 "checksum mismatch (the chunk's bytes changed after they were written)")
        else:
            body = buf
        try:
            if hi - lo == chunk_nbytes:
                codec.decode(body, out=flat[lo:hi])
            else:  # the last chunk is stored whole; keep its committed rows
                flat[lo:hi] = np.frombuffer(codec.decode(body), dtype=np.uint8)[: hi - lo]
        except (RuntimeError, ValueError) as e:
            raise ChunkError(_array_name(z), i, row_lo, row_hi, _why(e)) from None

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(decode, _chunk_bounds(z, rows)))
    return out


def _grow(arr: zarr.Array, rows: int) -> None:
    """Make room for ``rows`` rows, growing by at least half so that appends rewrite the array's
    metadata only now and then. Rows past the commit marker are ignored by readers and trimmed by
    ``FeatureWriter.finish``."""
    if arr.shape[0] < rows:
        arr.resize((max(rows, arr.shape[0] * 3 // 2), *arr.shape[1:]))


class FeatureWriter:
    """Appends utterances to one feature group in commits that are atomic per call of ``commit``."""

    def __init__(self, group: zarr.Group, name: str, lock: FileLock | LeaseLock | None = None,
                 store: FeatureStore | None = None) -> None:
        self.group = group
        self.name = name
        self.lock = lock  # the group's lock, held from FeatureStore.writer until finish / close
        self.store = store  # the store it writes (None: a group built aside, as repair does)
        self.specs = {k: ArraySpec.from_json(k, v) for k, v in group.attrs["arrays"].items()}
        self.n = int(group.attrs["n_committed"])
        self.rows = {k: int(v) for k, v in group.attrs["rows_committed"].items()}
        # Array handles opened once: every lookup by name re-reads metadata from disk.
        self._data = {k: group[k]["data"] for k in self.specs}
        self._offsets = {k: group[k]["offsets"] for k, s in self.specs.items() if s.kind == "frames"}
        self._ids = group["utt_ids"]

    def check_resumable(self) -> None:
        """The chunks the next commit rewrites are whole: the last, partly filled chunk of each array is read,
        merged with the new rows and written back with a fresh checksum, so a missing or damaged one would
        turn into fill values that no later check could tell from data. Raises ChunkError."""
        if self.store is None:
            return
        loc = self.store.location
        for name, spec in self.specs.items():
            _require_tail(self._data[name], loc, self.rows[name])
            if spec.kind == "frames":
                _require_tail(self._offsets[name], loc, self.n + 1)
        _require_tail(self._ids, loc, self.n)

    def done_ids(self) -> set[str]:
        """The committed utterances (what a resumed run skips), read with every chunk checked: a lost ids chunk
        would otherwise read as empty ids, and its utterances be extracted again and committed twice."""
        if not self.n:
            return set()
        if self.store is None:
            return {str(u) for u in self._ids[: self.n]}
        try:
            ids = _read_checked(self._ids, self.store.location, self.n)
        except ChunkError as e:
            raise StoreError(self.store._damage_message(self.name, e)) from None
        return {str(u) for u in ids}

    def commit(self, utt_ids: Sequence[str], values: Sequence[dict[str, np.ndarray]]) -> None:
        """Append these utterances: data first, then offsets and ids, then the commit marker."""
        if not utt_ids:
            return
        if len(utt_ids) != len(values):
            raise ValueError("one value dict per utterance")
        self._check_still_owned()
        new_rows: dict[str, int] = {}
        for name, spec in self.specs.items():
            parts = []
            for uid, v in zip(utt_ids, values, strict=True):
                x = np.asarray(v[name])
                if spec.kind == "utterance":
                    x = x.reshape(1, *x.shape)
                if x.shape[1:] != spec.tail:
                    raise ValueError(
                        f"{self.name}/{name}: utterance {uid} has rows of shape {x.shape[1:]}, "
                        f"the store expects {spec.tail}"
                    )
                with np.errstate(over="ignore"):  # an overflow becomes inf, reported just below
                    x = x.astype(spec.dtype, copy=False)
                if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                    raise ValueError(
                        f"{self.name}/{name}: utterance {uid} has non-finite values "
                        f"(or values outside the range of {spec.dtype})"
                    )
                parts.append(x)
            block = np.concatenate(parts)
            start, end = self.rows[name], self.rows[name] + len(block)
            arr = self._data[name]
            _grow(arr, end)
            if len(block):
                arr[start:end] = block
            if spec.kind == "frames":
                lengths = np.array([len(p) for p in parts], dtype=np.int64)
                offs = self._offsets[name]
                _grow(offs, self.n + len(parts) + 1)
                offs[self.n + 1 : self.n + len(parts) + 1] = start + np.cumsum(lengths)
            new_rows[name] = end
        _grow(self._ids, self.n + len(utt_ids))
        self._ids[self.n : self.n + len(utt_ids)] = np.array(list(utt_ids), dtype=object)
        die_at("commit-data")
        self._check_still_owned(fence=False)  # the data took a while to write: is the lease still ours?
        # The commit marker: one atomic write of the group's attributes. (Not `attrs.update`: zarr's
        # attribute mapping writes the file once per key, and a kill between those writes left a
        # marker whose utterance count ran ahead of its row counts.)
        self.n += len(utt_ids)
        self.rows = new_rows
        self.group.update_attributes({"n_committed": self.n, "rows_committed": self.rows})
        die_at("commit-marker")

    def _check_still_owned(self, fence: bool = True) -> None:
        """Refuse to write when the group may be another writer's now: the object-store lease is lost (see
        LeaseLock.lost), or (``fence``) the commit marker in the store is no longer the one this writer
        wrote last, which a writer that took the group over after a stall moves on. A lease narrows the
        window for two writers; the fence catches one that got through it before anything is overwritten."""
        taken = self.lock is not None and self.lock.lost
        if not taken and fence and self.store is not None:
            marker = zarr.open_group(self.group.store, path=self.group.path, mode="r").attrs.get("n_committed")
            taken = marker != self.n
        if taken:
            raise StoreError(f"{self.name}: this writer's lock was taken over (it stalled past its lease) and "
                             "another writer now owns the group; nothing more is committed — run the extraction "
                             "again to resume")

    def finish(self, complete: bool, skipped: dict[str, str] | None = None) -> None:
        """Trim rows a killed run left past the commit marker, and record completeness."""
        self._check_still_owned()  # trimming to this writer's row counts would cut a new owner's rows
        for name, spec in self.specs.items():
            arr = self._data[name]
            if arr.shape[0] != self.rows[name]:
                arr.resize((self.rows[name], *spec.tail))
            if spec.kind == "frames" and self._offsets[name].shape[0] != self.n + 1:
                self._offsets[name].resize((self.n + 1,))
        if self._ids.shape[0] != self.n:
            self._ids.resize((self.n,))
        # earlier runs' skips stay recorded until extracted: a run cut short by --limit may not have reached them
        previous = dict(self.group.attrs.get("skipped") or {})
        committed = self.done_ids() if previous else set()
        merged = {u: why for u, why in previous.items() if u not in committed} | dict(skipped or {})
        self.group.update_attributes({"complete": complete and not merged, "skipped": merged})
        self.close()

    def close(self) -> None:
        """Release the group's lock (what is committed stays committed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
