"""Cross-process locks on parts of a feature store (the utterance table, each feature group).

An OS file lock (``flock``) on ``<store>/locks/<name>.lock``: the kernel releases it when its holder exits,
however it exits, so a lock left by a killed process never blocks anyone. The holder writes who it is
(pid, host, command, since when) into the file, so that a process that has to wait can say for whom.

Writers take the exclusive lock of what they change; readers of the utterance table take it shared,
because the table is replaced by directory renames and must not be read half-swapped.

Within one process a lock is re-entrant (counted per lock file): a writer that holds a feature's lock may
open it again, and reading the table while writing it does not deadlock. Locks keep processes apart, not
threads of one process.
"""

from __future__ import annotations

import errno
import fcntl
import json
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


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, in words."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, "
            f"since {info.get('since', '?')})")


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        self._fd = fd
        return self

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
                    fcntl.flock(entry[0], fcntl.LOCK_UN)
                    os.close(entry[0])
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
