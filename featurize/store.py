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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec

from featurize.records import Utterance

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "store_schema.yaml"
DEFAULT_STORE = "cache/features.zarr"
# Uncompressed bytes per data chunk: 1 MiB blosc-lz4 chunks decode in parallel (see _read_rows);
# 4 MiB zstd chunks were 3x smaller on disk than float32 but 4x slower to read.
CHUNK_BYTES = 1024 * 1024


class StoreError(RuntimeError):
    pass


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


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


# Utterance ids and offsets per chunk. A partial last chunk is still decoded whole, so a chunk much
# larger than a corpus makes every read pay for it (65536 strings took 10 ms to read 1440 ids).
ID_CHUNK = 4096


def _compressor() -> BloscCodec:
    # Byte-shuffled lz4: lossless, decodes several times faster than zstd, and still takes float16
    # features to ~0.38 of float32 raw (fbank on RAVDESS), inside the 0.55 budget.
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _chunk_rows(tail: Sequence[int], itemsize: int) -> int:
    row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * itemsize)
    return max(1, CHUNK_BYTES // row_bytes)


# ----------------------------------------------------------------------------------------------
# The utterance table: one column per record field. None is "" for strings, NaN for floats, -1 for
# turn; nested fields (words, soft labels, extra) are JSON strings.
_STR_COLS = ("utt_id", "corpus", "speaker", "label", "session", "dialog", "audio_path", "text", "word_source", "split")
_FLOAT_COLS = ("start", "end", "duration")
_JSON_COLS = ("soft_labels", "words", "extra")


def _table_columns(utts: Sequence[Utterance]) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for c in _STR_COLS:
        cols[c] = np.array([getattr(u, c) or "" for u in utts], dtype=object)
    for c in _FLOAT_COLS:
        cols[c] = np.array([np.nan if getattr(u, c) is None else getattr(u, c) for u in utts], dtype=np.float64)
    cols["turn"] = np.array([-1 if u.turn is None else u.turn for u in utts], dtype=np.int64)
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
        t = int(cols["turn"][i])
        d["turn"] = None if t < 0 else t
        for c in _JSON_COLS:
            d[c] = json.loads(str(cols[c][i]))
        if d["words"] is not None:
            d["words"] = [{"word": w, "start": s, "end": e} for w, s, e in d["words"]]
        d["extra"] = d["extra"] or {}
        out.append(Utterance.from_dict(d))
    return out


class FeatureStore:
    """A Zarr feature store on disk. Opening an existing store checks it against store_schema.yaml."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        self._recover_table_swap()
        if (self.path / "zarr.json").exists():
            self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
            version = self.root.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {version!r}, this sercache reads "
                    f"version {SCHEMA_VERSION}; re-extract into a new store"
                )
        elif create:
            self.root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
            self.root.update_attributes({"schema_version": SCHEMA_VERSION, "created_by": "sercache"})
            self.root.require_group("features")
        else:
            raise StoreError(f"no feature store at {self.path} (run `featurize extract` first)")
        self.validate()

    # -- the contract ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the store against store_schema.yaml: required groups, attributes and arrays."""
        schema = load_schema()
        missing = [a for a in schema["root"]["attrs"] if a not in self.root.attrs]
        if missing:
            raise StoreError(f"{self.path}: root attributes {missing} missing (store_schema.yaml)")
        if "utterances" in self.root:
            table = self.root["utterances"]
            cols = set(table.array_keys())
            need = set(schema["utterances"]["columns"])
            if need - cols:
                raise StoreError(f"{self.path}: utterance table lacks columns {sorted(need - cols)}")
        feat_schema = schema["feature"]
        for name, grp in self._feature_groups():
            absent = [a for a in feat_schema["attrs"] if a not in grp.attrs]
            if absent:
                raise StoreError(f"{self.path}: feature {name} lacks attributes {absent}")
            for arr, spec in grp.attrs["arrays"].items():
                if spec["kind"] not in feat_schema["array_kinds"]:
                    raise StoreError(f"{self.path}: feature {name} array {arr}: unknown kind {spec['kind']!r}")
                need = feat_schema["array_kinds"][spec["kind"]]
                if arr not in grp or any(k not in grp[arr] for k in need):
                    raise StoreError(f"{self.path}: feature {name} array {arr} lacks {need}")

    # -- the utterance table ---------------------------------------------------------------------
    def utterances(self) -> list[Utterance]:
        if "utterances" not in self.root:
            return []
        table = self.root["utterances"]
        cols = {k: table[k][:] for k in table.array_keys()}
        return _rows_from_columns(cols)

    def write_utterances(self, utts: Iterable[Utterance]) -> None:
        """Upsert records by utt_id (new ids appended, existing ones updated), written atomically:
        the new table is built beside the old one and swapped in by directory renames.

        Re-reading a corpus never erases what a later step added: when the incoming record has no
        transcript or no word times but the stored one has (from `featurize transcribe`), those are kept,
        and so are stored ``extra`` entries the incoming record does not set (the ASR transcript).
        """
        current = {u.utt_id: u for u in self.utterances()}
        changed = False
        for u in utts:
            old = current.get(u.utt_id)
            if old is not None:
                if u.words is None and old.words is not None:
                    u.words, u.word_source = old.words, old.word_source
                if u.text is None and old.text is not None:
                    u.text = old.text
                u.extra = {**old.extra, **u.extra}
            changed = changed or u != old
            current[u.utt_id] = u
        if not changed and "utterances" in self.root:  # a resumed run: the table is already right
            return
        rows = list(current.values())
        cols = _table_columns(rows)
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
                compressors=_compressor() if dtype is not str else "auto",
            )
            if len(values):
                arr[:] = values
        grp.attrs["n"] = len(rows)
        self._swap_table()

    def _swap_table(self) -> None:
        base, new, old = (self.path / n for n in ("utterances", "utterances.new", "utterances.old"))
        if base.exists():
            base.rename(old)
        new.rename(base)
        if old.exists():
            shutil.rmtree(old)
        self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)

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

    # -- features --------------------------------------------------------------------------------
    def _feature_groups(self) -> list[tuple[str, zarr.Group]]:
        if "features" not in self.root:
            return []
        feats = self.root["features"]
        return sorted((name, feats[name]) for name in feats.group_keys())

    def features(self) -> list[FeatureInfo]:
        infos = []
        for name, grp in self._feature_groups():
            a = grp.attrs
            nbytes = sum(f.stat().st_size for f in (self.path / "features" / name).rglob("*") if f.is_file())
            infos.append(
                FeatureInfo(
                    name=name,
                    extractor=a["extractor"],
                    fingerprint=a["fingerprint"],
                    config=dict(a["config"]),
                    arrays={k: ArraySpec.from_json(k, v) for k, v in a["arrays"].items()},
                    n_committed=int(a["n_committed"]),
                    complete=bool(a.get("complete", False)),
                    nbytes_stored=nbytes,
                    created=a.get("created", ""),
                    init_options=dict(a.get("init_options", {})),
                    stale=a.get("stale"),
                )
            )
        return infos

    def resolve_feature(self, name: str) -> str:
        """A feature group name from a full name (``fbank-1a2b3c4d``) or an extractor name
        (``fbank``) when exactly one configuration of that extractor is stored."""
        if "features" in self.root and name in self.root["features"]:  # a full name: no need to list the groups
            return name
        names = [n for n, _ in self._feature_groups()]
        # Match the feature name (``opensmile_compare``) or the extractor (``opensmile``).
        matches = [n for n in names if name in (n.rsplit("-", 1)[0], self.root["features"][n].attrs["extractor"])]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(names) or "none"
            raise StoreError(f"no feature {name!r} in {self.path} (stored: {known}); run `featurize extract`")
        raise StoreError(
            f"{name!r} is ambiguous in {self.path}: {', '.join(matches)} (different configs); name one in full"
        )

    def writer(self, feature_name: str, extractor: str, config: dict, arrays: Sequence[ArraySpec],
               init_options: dict | None = None) -> FeatureWriter:
        """Open (or create) the group ``<feature_name>-<fingerprint>`` for this exact configuration.
        An existing group with the same fingerprint is resumed; a different configuration never
        touches it. ``init_options`` (how the extractor was built) are kept so it can be rebuilt."""
        fp = fingerprint({"extractor": extractor, "arrays": [s.to_json() for s in arrays], **config})
        name = f"{feature_name}-{fp}"
        feats = self.root.require_group("features")
        if name in feats and feats[name].attrs.get("stale"):
            self.delete_feature(name)  # its inputs changed since (see mark_stale): it is rebuilt whole
        if name not in feats:
            grp = feats.create_group(name)
            for spec in arrays:
                sub = grp.create_group(spec.name)
                rows = _chunk_rows(spec.tail, np.dtype(spec.dtype).itemsize)
                sub.create_array(
                    "data",
                    shape=(0, *spec.tail),
                    dtype=spec.dtype,
                    chunks=(rows, *spec.tail),
                    compressors=_compressor(),
                )
                if spec.kind == "frames":
                    off = sub.create_array(
                        "offsets", shape=(1,), dtype="int64", chunks=(ID_CHUNK,), compressors=_compressor()
                    )
                    off[:] = np.zeros(1, dtype=np.int64)
            grp.create_array("utt_ids", shape=(0,), dtype=str, chunks=(ID_CHUNK,))
            # Attributes last: their presence marks the group as usable.
            grp.update_attributes(
                {
                    "extractor": extractor,
                    "fingerprint": fp,
                    "config": json.loads(json.dumps(config, default=str)),
                    "arrays": {s.name: s.to_json() for s in arrays},
                    "n_committed": 0,
                    "rows_committed": {s.name: 0 for s in arrays},
                    "complete": False,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "init_options": init_options or {},
                }
            )
        return FeatureWriter(feats[name], name)

    def mark_stale(self, changed_ids: Iterable[str], reason: str) -> list[str]:
        """Mark every feature group computed from utterance word lists (text encoders reading the timed
        words) that holds one of ``changed_ids`` as stale: readers refuse it and the next extract rebuilds it.
        Returns the groups marked."""
        changed = set(changed_ids)
        marked = []
        for name, grp in self._feature_groups():
            if not str(grp.attrs.get("config", {}).get("words_from", "")).startswith("utterance words"):
                continue
            if changed.intersection(self.committed_ids(name)):
                grp.update_attributes({"stale": reason})
                marked.append(name)
        return marked

    def committed_ids(self, feature: str) -> list[str]:
        grp = self.root["features"][feature]
        n = int(grp.attrs["n_committed"])
        return [str(u) for u in grp["utt_ids"][:n]] if n else []

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
        ids = [str(u) for u in grp["utt_ids"][:n]] if n else []
        zdata = grp[array]["data"]
        if layers is not None:
            if len(spec.tail) != 2:
                raise StoreError(f"feature {feature}/{array} has no layer axis (row shape {spec.tail})")
            layers = list(layers)
            bad = [i for i in layers if not 0 <= i < spec.tail[0]]
            if bad:
                raise StoreError(f"feature {feature}/{array} has {spec.tail[0]} layers; asked for {bad}")
            spec = ArraySpec(
                spec.name, spec.kind, (len(layers), spec.tail[1]), spec.dtype, spec.rows_per_second, spec.rows_per_utt
            )
        # Orthogonal selection decodes chunk by chunk, so only the chosen layers are ever held whole.
        data = zdata.oindex[:rows, layers] if layers is not None else _read_rows(zdata, self.path, rows)
        if dtype is not None:
            data = data.astype(dtype)
        offsets = grp[array]["offsets"][: n + 1] if spec.kind == "frames" else None
        return FeatureArray(ids, data, offsets, spec)

    def delete_feature(self, feature: str) -> None:
        feature = self.resolve_feature(feature)
        shutil.rmtree(self.path / "features" / feature)
        self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)


def _read_rows(z: zarr.Array, store_path: Path, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a data array written by this module, decoded straight into one array.

    zarr's generic read path decodes each chunk into a buffer of its own and then copies it into the
    result, which made loading a feature about 2x slower than a plain read of the same bytes. Our data
    arrays have one layout (chunked along rows only, default chunk keys, bytes + blosc), so each
    chunk file can be read and blosc-decoded into its slice of the result, on all cores (blosc releases
    the GIL). Any other layout goes through zarr.
    """
    md = z.metadata
    codecs = md.codecs
    simple = (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and isinstance(codecs[1], BloscCodec)
        and tuple(z.chunks[1:]) == tuple(z.shape[1:])
        and md.chunk_key_encoding.name == "default"
        and getattr(md.chunk_key_encoding, "separator", "/") == "/"
        and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
    )
    if not simple or rows == 0:
        return z[:rows]
    out = np.empty((rows, *z.shape[1:]), dtype=z.dtype)
    flat = out.reshape(-1).view(np.uint8)
    chunk_rows = z.chunks[0]
    chunk_nbytes = chunk_rows * (flat.size // rows)
    folder = store_path / z.path / "c"
    tail_key = "/".join("0" for _ in z.shape[1:])
    codec = Blosc()

    def decode(i: int) -> None:
        lo = i * chunk_nbytes
        hi = min(lo + chunk_nbytes, flat.size)
        try:
            buf = (folder / str(i) / tail_key if tail_key else folder / str(i)).read_bytes()
        except FileNotFoundError:  # zarr does not write chunks that hold only the fill value
            out.reshape(-1)[lo // out.itemsize : hi // out.itemsize] = md.fill_value
            return
        if hi - lo == chunk_nbytes:
            codec.decode(buf, out=flat[lo:hi])
        else:  # the last chunk is stored whole; keep its committed rows
            flat[lo:hi] = np.frombuffer(codec.decode(buf), dtype=np.uint8)[: hi - lo]

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(math.ceil(rows / chunk_rows))))
    return out


def _grow(arr: zarr.Array, rows: int) -> None:
    """Make room for ``rows`` rows, growing by at least half so that appends rewrite the array's
    metadata only now and then. Rows past the commit marker are ignored by readers and trimmed by
    ``FeatureWriter.finish``."""
    if arr.shape[0] < rows:
        arr.resize((max(rows, arr.shape[0] * 3 // 2), *arr.shape[1:]))


class FeatureWriter:
    """Appends utterances to one feature group in commits that are atomic per call of ``commit``."""

    def __init__(self, group: zarr.Group, name: str) -> None:
        self.group = group
        self.name = name
        self.specs = {k: ArraySpec.from_json(k, v) for k, v in group.attrs["arrays"].items()}
        self.n = int(group.attrs["n_committed"])
        self.rows = {k: int(v) for k, v in group.attrs["rows_committed"].items()}
        # Array handles opened once: every lookup by name re-reads metadata from disk.
        self._data = {k: group[k]["data"] for k in self.specs}
        self._offsets = {k: group[k]["offsets"] for k, s in self.specs.items() if s.kind == "frames"}
        self._ids = group["utt_ids"]

    def done_ids(self) -> set[str]:
        return {str(u) for u in self.group["utt_ids"][: self.n]} if self.n else set()

    def commit(self, utt_ids: Sequence[str], values: Sequence[dict[str, np.ndarray]]) -> None:
        """Append these utterances: data first, then offsets and ids, then the commit marker."""
        if not utt_ids:
            return
        if len(utt_ids) != len(values):
            raise ValueError("one value dict per utterance")
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
        # The commit marker: one atomic write of the group's attributes. (Not `attrs.update`: zarr's
        # attribute mapping writes the file once per key, and a kill between those writes left a
        # marker whose utterance count ran ahead of its row counts.)
        self.n += len(utt_ids)
        self.rows = new_rows
        self.group.update_attributes({"n_committed": self.n, "rows_committed": self.rows})

    def finish(self, complete: bool, skipped: dict[str, str] | None = None) -> None:
        """Trim rows a killed run left past the commit marker, and record completeness."""
        for name, spec in self.specs.items():
            arr = self._data[name]
            if arr.shape[0] != self.rows[name]:
                arr.resize((self.rows[name], *spec.tail))
            if spec.kind == "frames" and self._offsets[name].shape[0] != self.n + 1:
                self._offsets[name].resize((self.n + 1,))
        if self._ids.shape[0] != self.n:
            self._ids.resize((self.n,))
        self.group.update_attributes({"complete": complete, "skipped": skipped or {}})
