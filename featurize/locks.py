"""Cross-process locks on parts of a feature store (the utterance table, each feature group).

An OS file lock (``flock``) on ``<store>/locks/<name>.lock``: the kernel releases it when its holder exits,
however it exits, so a lock left by a killed process never blocks anyone. The holder writes who it is
(pid, host, command, since when) into the file, so that a process that has to wait can say for whom.

Writers take the exclusive lock of what they change; readers of the utterance table take it shared,
because the table is replaced by directory renames and must not be read half-swapped.

On an object store (no flock there) a lock is a lease object instead: see ``LeaseLock``.

Within one process a lock is re-entrant (counted per lock file): a writer that holds a feature's lock may
open it again, and reading the table while writing it does not deadlock. Locks keep processes apart, not
threads of one process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# lock file -> [fd, holds] of the locks this process holds (flock locks belong to an open file, so a second
# open of the same file in this process would wait for the first forever)
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


class LockTimeout(RuntimeError):
    pass


def holder_info() -> dict:
    """Who this process is, as a lock's holder writes it (a waiter reads it back to say for whom it waits)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}


def describe_holder(info: dict | None) -> str:
    """A holder's ``holder_info`` in words."""
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, "
            f"since {info.get('since', '?')})")


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, in words."""
    try:
        return describe_holder(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError):
        return "another process"


class FileLock:
    """``with FileLock(path, "feature fbank-1a2b"):`` — exclusive, or ``shared=True``.

    ``timeout`` None waits for as long as it takes (``on_wait`` is told once, with the holder's description);
    0 refuses at once; otherwise seconds. A refusal raises LockTimeout naming the holder."""

    def __init__(self, path: Path, what: str, shared: bool = False, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.path, self.what, self.shared, self.timeout, self.on_wait = Path(path), what, shared, timeout, on_wait
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        key = str(self.path.resolve())
        with _HELD_GUARD:
            if key in _HELD:  # this process holds it already
                _HELD[key][1] += 1
                self._fd = _HELD[key][0]
                return self
        fd = self._open()
        if fd < 0:  # a reader of a store it cannot write to, with no lock file to share
            with _HELD_GUARD:
                _HELD[key] = [fd, 1]
            self._fd = fd
            return self
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(f"{self.what} is locked by {holder_of(self.path)}; try again when it has finished")
            if not told and self.on_wait is not None:
                self.on_wait(f"waiting for {self.what}: locked by {holder_of(self.path)}")
                told = True
            time.sleep(0.05)
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file's descriptor (created if need be). A store this process cannot write to (a read-only
        mount, another user's files) still serves readers: they share the lock through a read-only descriptor
        (flock needs no write access), or, with no lock file there, take none (-1): a mount nobody can write to
        has no writer to wait for. A writer is refused in one line."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            if not self.shared:
                why = "is on a read-only file system" if e.errno == errno.EROFS else "is not writable by this user"
                raise PermissionError(f"{self.what} cannot be written: {self.path.parent.parent} {why} "
                                      f"({e.strerror})") from None
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return -1

    def release(self) -> None:
        if self._fd is None:
            return
        key = str(self.path.resolve())
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _HELD[key]
                    if entry[0] >= 0:
                        fcntl.flock(entry[0], fcntl.LOCK_UN)
                        os.close(entry[0])
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def lost(self) -> bool:
        """Never: the kernel keeps a file lock for as long as its holder lives (see LeaseLock.lost)."""
        return False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoLock:
    """A lock that is never contended (readers of an object store's utterance table need none)."""

    held = True
    lost = False

    def acquire(self) -> NoLock:
        return self

    def release(self) -> None:
        pass

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# -- object stores ------------------------------------------------------------------------------------------
LEASE_SECONDS = 60.0  # a lease not renewed for this long is dead (its holder was killed or lost the network)
_LEASES: dict[str, list] = {}  # lease key -> [LeaseLock holding it, holds]: re-entrant within a process


class LeaseLock:
    """An exclusive lock on an object store, which has no flock: a lease object at ``key``.

    It is created only if absent (a conditional PUT, If-None-Match: one of two racing writers wins) and holds
    who took it and until when. The holder renews it every third of ``ttl`` from a background thread. A waiter
    that finds it expired breaks it with a delete conditional on the lease's ETag (If-Match), so of two waiters
    only one breaks it and the other waits for the new holder. ``lost`` turns True when a renewal finds the
    lease taken over (the holder was stalled past ``ttl``), or when no renewal has succeeded for half of
    ``ttl`` (a waiter may break it at ``ttl``): a writer must then stop before its next commit.
    Expiry is judged by the waiter's clock against the holder's: hosts must agree on the time to well within
    ``ttl`` (NTP does). Same interface as FileLock; exclusive only, re-entrant within a process."""

    def __init__(self, fs, key: str, what: str, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None, ttl: float = LEASE_SECONDS) -> None:
        self.fs, self.key, self.what, self.timeout, self.on_wait, self.ttl = fs, key, what, timeout, on_wait, ttl
        self.shared = False
        self._lost = False  # a renewal found the lease taken over
        self._renewed_at = 0.0  # time.monotonic() of the last successful take or renewal
        self._owner: LeaseLock = self  # the instance that took the lease (re-entrant takes share it)
        self._etag: str | None = None
        self._stop: threading.Event | None = None
        self._held = False

    # the lease object
    def _body(self) -> bytes:
        return json.dumps({**holder_info(), "expires": time.time() + self.ttl}).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        """(the lease's content, its ETag), or (None, None) when there is no lease."""
        try:
            etag = self.fs.info(self.key).get("ETag")
            return json.loads(self.fs.cat_file(self.key) or b"{}"), etag
        except FileNotFoundError:
            return None, None
        except ValueError:  # being written: treat as held
            return {}, None

    def _s3(self, op: str, **kw) -> dict | None:
        """A conditional S3 call; None when its precondition failed."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.key)
        try:
            return sync(self.fs.loop, self.fs._call_s3, op, Bucket=bucket, Key=key, **kw)
        except OSError as e:
            if "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
                return None
            raise

    def _is_s3(self) -> bool:
        return "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _break(self, etag: str | None) -> None:
        """Delete an expired lease, only if it is still the one we read."""
        if self._is_s3() and etag:
            self._s3("delete_object", IfMatch=etag)
        else:  # no conditional delete on this filesystem: a second breaker racing us is not excluded
            try:
                self.fs.rm_file(self.key)
            except FileNotFoundError:
                pass

    def _renew(self) -> bool:
        """Push the expiry forward; False when the lease is no longer ours."""
        if self._is_s3() and self._etag:
            out = self._s3("put_object", Body=self._body(), IfMatch=self._etag)
            if out is None:
                return False
            self._etag = out.get("ETag", self._etag)
            return True
        self.fs.pipe_file(self.key, self._body())
        return True

    def _keep_alive(self, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                if not self._renew():
                    self._lost = True
                    return
                self._renewed_at = time.monotonic()
            except OSError:  # the server is unreachable for now: try again at the next beat (see `lost`)
                continue

    @property
    def lost(self) -> bool:
        """The lease can no longer be counted on: taken over, or not renewed for half its ``ttl``."""
        owner = self._owner
        return owner._lost or (owner._held and time.monotonic() - owner._renewed_at > owner.ttl / 2)

    @lost.setter
    def lost(self, value: bool) -> None:  # what the keep-alive thread finds; tests set it to simulate a takeover
        self._owner._lost = value

    def acquire(self) -> LeaseLock:
        with _HELD_GUARD:
            if self.key in _LEASES:
                owner, holds = _LEASES[self.key]
                _LEASES[self.key][1] = holds + 1
                self._etag, self._held, self._owner = owner._etag, True, owner
                return self
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        while True:
            try:
                self.fs.pipe_file(self.key, self._body(), mode="create")
                break
            except FileExistsError:
                pass
            info, etag = self._read()
            if info is not None and info.get("expires", math.inf) < time.time():
                self._break(etag)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"{self.what} is locked by {describe_holder(info)}; try again when it has finished")
            if not told and self.on_wait is not None and info is not None:
                self.on_wait(f"waiting for {self.what}: locked by {describe_holder(info)}")
                told = True
            time.sleep(0.2)
        self._etag = self.fs.info(self.key).get("ETag")
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._keep_alive, args=(self._stop,), daemon=True).start()
        with _HELD_GUARD:
            _LEASES[self.key] = [self, 1]
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with _HELD_GUARD:
            owner, holds = _LEASES[self.key]
            if holds > 1:
                _LEASES[self.key][1] = holds - 1
                return
            del _LEASES[self.key]
        if owner._stop is not None:
            owner._stop.set()
        if not owner._lost:
            owner._break(owner._etag)

    @property
    def held(self) -> bool:
        return self._held

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
