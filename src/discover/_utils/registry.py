"""The :class:`Registry` of everything chosen by name."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from discover.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Things chosen by name (models, recipes, data sets, embedders, similarities, ...).

    One verb family for every kind: :meth:`register` (also as a decorator), :meth:`get`
    (an unknown name is a ValueError with the closest names), :meth:`list` (sorted, with an
    optional glob pattern). It reads like a mapping (``name in r``, ``r[name]``, iteration in
    registration order), so users can register their own entries next to the built-in ones.

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("circle")
        ... def circle(): ...
        >>> shapes.get("circel")
        Traceback (most recent call last):
        ValueError: unknown shape 'circel'. Did you mean 'circle'? Known: circle
    """

    def __init__(self, kind: str, normalize: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, T] = {}

    def register(
        self, name: str | None = None, obj: T | None = None, *, overwrite: bool = False
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does so.

        ``name`` defaults to the object's ``__name__``; registering a taken name raises unless
        ``overwrite`` is true.
        """

        def add(value: T) -> T:
            key = self._normalize(name or getattr(value, "__name__", ""))
            if not key:
                raise InputError(f"a {self.kind} needs a name to be registered")
            if key in self._entries and not overwrite:
                raise InputError(f"a {self.kind} named {key!r} is already registered")
            self._entries[key] = value
            return value

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name lists the closest ones."""
        key = self._normalize(name) if isinstance(name, str) else name
        if key not in self._entries:
            close = difflib.get_close_matches(str(key), list(self._entries), n=3, cutoff=0.4)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise InputError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self._entries) or 'none'}"
            )
        return self._entries[key]

    def unregister(self, name: str) -> T | None:
        """Remove ``name`` (returns its entry, ``None`` if it was not registered)."""
        return self._entries.pop(self._normalize(name), None)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. for tests)."""
        other: Registry[T] = Registry(self.kind, self._normalize)
        other._entries = dict(self._entries)
        return other

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching the glob ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self):  # noqa: ANN201  (a dict view)
        return self._entries.keys()

    def values(self):  # noqa: ANN201
        return self._entries.values()

    def items(self):  # noqa: ANN201
        return self._entries.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
