"""Rendered answer bodies kept as bytes, per sharing group, and filled with each request's own fields.

An answer read again (reused) says what it said before: only a few fields differ between the
requests that see it, and they are this request's (what it was charged, the reader's windows and
remaining budget, whether it was reused). So a renderer renders an answer once into a
`BodyTemplate`: the encoded document with holes where those fields go. Serving it again joins
the cached bytes with the few encoded fields: no row is rebuilt and nothing is re-encoded.

Keys start with the sharing group of the client who was served (`Answer.body_key`), so a body is
only ever found by the group whose stored answer it renders (issue 17: the ledger's reuse keys
hold the group too). Memory is bounded: at most DPFLOWS_ANSWER_CACHE_BYTES of bodies and key
templates per worker process, least recently used dropped first; 0 turns caching off.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response

#: A per-process token in every hole's marker: no text in an answer can forge one.
_TOKEN = secrets.token_hex(16)
_HOLE = re.compile(rb'"\\u0000' + _TOKEN.encode() + rb':([a-z_]+)\\u0000"')
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
#: Static parts at least this large are sent as they are cached, not copied into the response.
_BY_REFERENCE = 16 * 1024


class Hole:
    """A per-request field in a document being rendered; orjson writes its marker (through `default`:
    a plain class, not a dataclass, which orjson would encode itself), and `encode_with_holes` cuts it out."""

    __slots__ = ("marker", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.marker = f"\x00{_TOKEN}:{name}\x00"

    def __repr__(self) -> str:
        return f"Hole({self.name!r})"


def _hole_marker(obj: Any) -> str:
    if isinstance(obj, Hole):
        return obj.marker
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_with_holes(document: Any, *, newline: bool = False,
                      static: Mapping[str, bytes] | None = None) -> tuple[bytes | str, ...]:
    """The document as orjson encodes it, cut at its holes: static bytes and hole names, in order.

    `static` fills holes now with JSON already encoded (a large array, kept as its own part: the
    split never scans it and responses send it without copying)."""
    option = JSON_OPTIONS | (orjson.OPT_APPEND_NEWLINE if newline else 0)
    pieces = _HOLE.split(orjson.dumps(document, default=_hole_marker, option=option))
    # re.split alternates: text, hole name, text, ...
    parts = [piece if i % 2 == 0 else piece.decode() for i, piece in enumerate(pieces)]
    return tuple(static[p] if isinstance(p, str) and static and p in static else p for p in parts if p != b"")


@dataclass(frozen=True)
class BodyTemplate:
    """One rendered answer: static bytes and holes, its media type, and its headers (static or holes)."""

    media_type: str
    parts: tuple[bytes | str, ...]
    #: (header, value): a value is static text, or a `Hole` filled per request
    headers: tuple[tuple[str, str | Hole], ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts) + sum(len(k) + len(str(v)) for k, v in self.headers) + 200

    def response(self, body_field: Callable[[str], bytes], header_field: Callable[[str], str]) -> Response:
        """The body and headers with this request's fields filled in. The body is a list of chunks: the
        large static parts by reference (never copied per request), the small ones joined with the fields."""
        chunks: list[bytes] = []
        small: list[bytes] = []
        for part in self.parts:
            if isinstance(part, bytes) and len(part) >= _BY_REFERENCE:
                if small:
                    chunks.append(b"".join(small))
                    small = []
                chunks.append(part)
            else:
                small.append(part if isinstance(part, bytes) else body_field(part))
        if small:
            chunks.append(b"".join(small))
        response = Response(chunks, mimetype=self.media_type)
        for name, value in self.headers:
            response.headers[name] = header_field(value.name) if isinstance(value, Hole) else value
        return response


class BodyCache:
    """Least-recently-used values bounded by their total size in bytes; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.held = 0
        self.hits = self.misses = 0

    def get(self, key: tuple[Any, ...]) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: tuple[Any, ...], value: Any, nbytes: int) -> None:
        """Keep `value` (about `nbytes` large), dropping the least recently used; larger than the bound: not kept."""
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.held -= old[1]
            self._items[key] = (value, nbytes)
            self.held += nbytes
            while self.held > self.max_bytes:
                _, (_, size) = self._items.popitem(last=False)
                self.held -= size

    def __len__(self) -> int:
        return len(self._items)


def fill_fields(fields: Mapping[str, Callable[[], bytes]]) -> Callable[[str], bytes]:
    """A lookup that encodes each per-request field only if a template asks for it."""
    return lambda name: fields[name]()
