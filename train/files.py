"""Files a run writes whole or not at all: a run killed mid-write, or a reader at the same moment, never sees
half a file. Each writer writes under a temporary name of its own, then renames it over the file: the folds of
one run, trained by several workers, each write the run's config.json, and two cells of a sweep may save the
same shared fit."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def replace_whole(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` (given a temporary path beside ``path``) the new file, then rename it onto ``path``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    write(tmp)
    tmp.replace(path)


def write_atomic(path: Path, text: str) -> None:
    replace_whole(path, lambda tmp: tmp.write_text(text))


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` of ``obj``, whole or not at all."""
    replace_whole(path, lambda tmp: torch.save(obj, tmp))
