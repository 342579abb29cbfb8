"""One generic registry for everything looked up by name (routers, workloads, weight operators, exact solvers).

An entry is either the object itself or, for things whose import is heavy (OR-tools, networkx), a
``"module:attribute"`` string resolved on first use, so that listing names or importing the package loads nothing
it does not need.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Optional, TypeVar, Union

from moeroute.core.errors import MoeRouteError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` names them in error messages (``unknown router 'x' (known: ...)``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Union[T, str]] = {}

    def add(self, name: str, entry: Union[T, str], same: Optional[Callable[[T], bool]] = None) -> None:
        """Register ``entry`` (or a lazy ``"module:attribute"``) as ``name``. Registering a name twice is an error
        unless ``same(old)`` says the old entry is this one (a module imported twice)."""
        if not isinstance(name, str) or not name or ":" in name or "," in name:
            raise MoeRouteError(f"{self.kind} name must be a non-empty string without ':' or ',', got {name!r}")
        old = self._entries.get(name)
        if old is not None and not isinstance(old, str) and not (same is not None and same(old)):
            raise MoeRouteError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise MoeRouteError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def snapshot(self) -> dict[str, Union[T, str]]:
        """A copy of the entries, to restore with :meth:`restore` (tests that register a throw-away entry)."""
        return dict(self._entries)

    def restore(self, entries: dict[str, Union[T, str]]) -> None:
        self._entries = dict(entries)
