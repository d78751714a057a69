"""A bounded, thread-safe LRU cache of raw scores keyed by a digest of (query, text)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")

__all__ = ["ScoreCache", "pair_key"]


def pair_key(query: str, text: str, instruction: str | None = None) -> bytes:
    """A 16-byte digest of a (query, text) pair, and the instruction it was scored under.

    Keys are digests rather than the texts themselves, so the cache's memory is bounded by its
    entry count (about 150 bytes an entry) however long the documents are.

    Examples:
        >>> len(pair_key("q", "doc"))
        16
        >>> pair_key("a", "bc") == pair_key("ab", "c")
        False
        >>> pair_key("q", "doc") == pair_key("q", "doc", "Find code.")
        False
    """
    h = hashlib.blake2b(digest_size=16)
    if instruction is not None:
        i = instruction.encode("utf-8", "surrogatepass")
        h.update(b"i" + len(i).to_bytes(8, "little"))
        h.update(i)
    q = query.encode("utf-8", "surrogatepass")
    h.update(len(q).to_bytes(8, "little"))
    h.update(q)
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


class ScoreCache(Generic[V]):
    """Least-recently-used map from pair keys to raw results, bounded by ``max_entries``.

    A cache belongs to one engine, so its keys are implicitly scoped to that engine's model and
    settings. ``max_entries=0`` disables it.

    Examples:
        >>> cache: ScoreCache[float] = ScoreCache(2)
        >>> cache.put(b"a", 1.0); cache.put(b"b", 2.0); cache.put(b"c", 3.0)
        >>> cache.get(b"a") is None, cache.get(b"c")
        (True, 3.0)
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> V | None:
        """Return the cached value, or None, and count the hit or miss."""
        if self.max_entries == 0:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: V) -> None:
        """Store a value, evicting the least recently used entries past the bound."""
        if self.max_entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held); entries stay."""
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()
