"""A bounded, thread-safe least-recently-used map (the prompt-embedding cache)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"LRU cache max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                self.misses += 1
                return None
            self.hits += 1
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def get_or_compute(self, key: K, compute: Callable[[K], V]) -> tuple[V, bool]:
        """(value, was_cached). ``compute`` runs outside the lock: a slow encoder call must not
        block readers of other keys (two threads may then compute the same key once each)."""
        value = self.get(key)
        if value is not None:
            return value, True
        value = compute(key)
        self.put(key, value)
        return value, False

    def stats(self) -> dict:
        return {"size": len(self._data), "max_size": self.max_size, "hits": self.hits, "misses": self.misses}
