"""An immutable, case-insensitive view of one request's headers.

Values stay ``bytes``: Envoy hands us raw header bytes, and credentials must round-trip exactly, even when they
are not valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class HeaderView:
    """Headers of one request, in wire order, with names folded to lower case."""

    __slots__ = ("_entries", "_index")
    # Never mutated after construction; nothing outside this class touches the containers.

    def __init__(self, entries: Iterable[tuple[str, bytes]]) -> None:
        folded = []
        index: dict[str, tuple[bytes, ...]] = {}
        for name, value in entries:
            name = name.lower()
            folded.append((name, value))
            seen = index.get(name)
            index[name] = (value,) if seen is None else (*seen, value)
        self._entries = tuple(folded)
        self._index = index

    @classmethod
    def of(cls, *pairs: tuple[str, str | bytes]) -> HeaderView:
        """Build a view from literal pairs (tests, fixtures); ``str`` values are encoded as Latin-1."""
        return cls((name, value.encode("latin-1") if isinstance(value, str) else value) for name, value in pairs)

    def get_all(self, name: str) -> tuple[bytes, ...]:
        return self._index.get(name, ())

    def one(self, name: str) -> bytes:
        """The value of a header that comes once (a pseudo-header such as ``:path``); empty when it is absent or
        repeated, which Envoy never delivers and no route matches."""
        values = self._index.get(name, ())
        return values[0] if len(values) == 1 else b""

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
