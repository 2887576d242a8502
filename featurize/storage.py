"""Where a feature store lives: a local directory, or an fsspec URL (``s3://bucket/prefix/features.zarr``,
``gs://...``, ``file:///...``).

`Location` is the store's only way to touch its bytes outside zarr: whether a key exists, a key's bytes (the
fast read path checks chunk checksums itself), removing or sizing a subtree, and the store's locks. A local
directory also offers ``rename`` (atomic on one filesystem); an object store has no rename, which is why
store.py commits differently there (see its "Object stores" note).

Credentials and endpoints come from the usual places of each filesystem: for S3, the AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server) or
``~/.aws``; fsspec's own ``FSSPEC_S3_*`` variables work too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from featurize.locks import FileLock, LeaseLock

# Listing caches would hide what another process wrote a moment ago: every listing goes to the server.
FS_OPTIONS = {"use_listings_cache": False}


def is_url(text: str | Path) -> bool:
    return "://" in str(text) and not str(text).startswith("file://")


class Location:
    def __init__(self, text: str | Path) -> None:
        text = str(text)
        self.url = text
        self.local: Path | None = None
        self.fs: Any = None
        self.root = ""
        if is_url(text):
            try:
                from fsspec.core import url_to_fs

                self.fs, root = url_to_fs(text, **FS_OPTIONS)
            except ImportError as e:  # e.g. s3:// without s3fs installed
                raise ValueError(f"{text}: {e}") from None
            self.root = root.rstrip("/")
        else:
            self.local = Path(text.removeprefix("file://"))

    @property
    def remote(self) -> bool:
        return self.local is None

    def __str__(self) -> str:
        return self.url if self.remote else str(self.local)

    def zarr_store(self) -> Any:
        """What zarr.open_group takes for this location."""
        if not self.remote:
            return str(self.local)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=FS_OPTIONS)

    def _key(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str) -> bool:
        return (self.local / key).exists() if not self.remote else bool(self.fs.exists(self._key(key)))

    def read_bytes(self, key: str) -> bytes:
        """The bytes of one key; FileNotFoundError when there is none."""
        if not self.remote:
            return (self.local / key).read_bytes()
        return self.fs.cat_file(self._key(key))

    def read_into(self, key: str, buffer: np.ndarray) -> np.ndarray:
        """The bytes of one key as a view of ``buffer`` (uint8) when they fit, else a new array; for a
        local file read straight into it, so reading many chunks allocates nothing per chunk."""
        if not self.remote:
            with open(self.local / key, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size <= len(buffer):
                    n = f.readinto(memoryview(buffer)[:size])
                    if n == size:
                        return buffer[:n]
        return np.frombuffer(self.read_bytes(key), dtype=np.uint8)

    def child_folders(self, key: str) -> list[str]:
        """The names of the folders (object-store prefixes) directly under ``key``."""
        if not self.remote:
            return sorted(p.name for p in (self.local / key).iterdir() if p.is_dir())
        return sorted(d["name"].rstrip("/").rsplit("/", 1)[-1] for d in self.fs.ls(self._key(key), detail=True)
                      if d["type"] == "directory")

    def remove_tree(self, key: str) -> None:
        if not self.remote:
            shutil.rmtree(self.local / key, ignore_errors=True)
        elif self.fs.exists(self._key(key)):
            self.fs.rm(self._key(key), recursive=True)

    def tree_bytes(self, key: str) -> int:
        """Bytes stored under ``key``."""
        if not self.remote:
            return sum(f.stat().st_size for f in (self.local / key).rglob("*") if f.is_file())
        return int(self.fs.du(self._key(key), total=True))

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename (local directories only: object stores have none)."""
        assert self.local is not None, "object stores have no rename"
        (self.local / src).rename(self.local / dst)

    def lock(self, key: str, what: str, shared: bool, timeout: float | None, on_wait) -> FileLock | LeaseLock:
        """An OS file lock in a local store; on an object store a lease object (exclusive only: readers of
        an object store take no lock, see store.py)."""
        if not self.remote:
            return FileLock(self.local / key, what, shared=shared, timeout=timeout, on_wait=on_wait)
        return LeaseLock(self.fs, self._key(key), what, timeout=timeout, on_wait=on_wait)
