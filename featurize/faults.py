"""Fault injection for the reliability tests: ``SERCACHE_DIE_AT=<point>`` kills this process (SIGKILL, as a
crash or an out-of-memory kill would) the first time it reaches ``point``. Unset, it costs one dict lookup.

Points: ``group-built`` (a new feature group's arrays and attributes exist under partial/, not yet renamed
into features/), ``table-built`` (the new utterance table is written beside the old one), ``table-swap``
(between the two renames that swap it in), ``commit-data`` (a commit's rows are written, its marker not),
``commit-marker`` (just after a commit's marker), ``repair-swap`` (between the two renames that swap a repaired
feature group in).
"""

from __future__ import annotations

import os
import signal


def die_at(point: str) -> None:
    if os.environ.get("SERCACHE_DIE_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
