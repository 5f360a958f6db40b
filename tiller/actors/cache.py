"""A bounded least-recently-used map, for judge results keyed by what was judged.

A lease that expires is generated and judged again, and a judge that died leaves its task to
another; keying results by (prompt, responses) means repeated work costs a lookup, not a model call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class BoundedCache(Generic[K, V]):
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.hits = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, default=None):
        value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return default
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)  # the least recently used
