"""An immutable, case-insensitive view of one request's headers.

Values stay ``bytes``: Envoy hands us raw header bytes, and credentials must round-trip exactly, even when they
are not valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import MappingProxyType


class HeaderView:
    """Headers of one request, in wire order, with names folded to lower case."""

    __slots__ = ("_entries", "_index")

    def __init__(self, entries: Iterable[tuple[str, bytes]]) -> None:
        folded = tuple((name.lower(), value) for name, value in entries)
        index: dict[str, list[bytes]] = {}
        for name, value in folded:
            index.setdefault(name, []).append(value)
        self._entries = folded
        self._index = MappingProxyType({name: tuple(values) for name, values in index.items()})

    @classmethod
    def of(cls, *pairs: tuple[str, str | bytes]) -> HeaderView:
        """Build a view from literal pairs (tests, fixtures); ``str`` values are encoded as Latin-1."""
        return cls((name, value.encode("latin-1") if isinstance(value, str) else value) for name, value in pairs)

    def get_all(self, name: str) -> tuple[bytes, ...]:
        return self._index.get(name, ())

    def names(self) -> Iterable[str]:
        return self._index.keys()

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        # Names only: a repr must never carry a credential into a log or a traceback.
        return f"HeaderView(names={list(self._index)})"
