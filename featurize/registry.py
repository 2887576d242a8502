"""One registry type for everything chosen by name: extractors, corpus readers, training heads.

Each kind lives in a package with one module per entry; a module registers its entry when imported, and
the registry imports the whole package the first time a name is looked up (so adding one is one file).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    pass


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self.entries: dict[str, T] = {}
        self._loaded = False

    def add(self, name: str, entry: T) -> T:
        self.entries[name] = entry
        return entry

    def load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{mod.name}")
        self._loaded = True

    def get(self, name: str) -> T:
        self.load()
        if name not in self.entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self.entries[name]

    def names(self) -> list[str]:
        self.load()
        return sorted(self.entries)
