"""What is built once per spec and reused request after request: the generator's retrieval index
and the features' tables, each in a :class:`PerSpecCache` of its owner."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from core.spec.index import SpecIndex

__all__ = ["PerSpecCache"]

T = TypeVar("T")


class PerSpecCache(Generic[T]):
    """``build(spec)`` for the ``size`` specs used last (least recently used out first);
    thread-safe, and a build runs outside the lock (a big spec takes a while).

    Keyed by the spec's content hash, so a spec parsed again finds its tables; a spec without a
    hash by the object itself (kept with its entry, so a reused ``id()`` of a collected spec can
    never return another spec's tables)."""

    def __init__(self, build: Callable[[SpecIndex], T], size: int = 64) -> None:
        """``size`` 0 keeps nothing: every call builds."""
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.build = build
        self.size = size
        self._items: OrderedDict[Hashable, tuple[SpecIndex | None, T]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(spec: SpecIndex) -> Hashable:
        return spec.spec_hash or ("id", id(spec))

    def get(self, spec: SpecIndex) -> T:
        key = self._key(spec)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and (spec.spec_hash or hit[0] is spec):
                self._items.move_to_end(key)
                return hit[1]
        built = self.build(spec)
        with self._lock:
            self._items[key] = (None if spec.spec_hash else spec, built)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return built

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, spec_hash: object) -> bool:
        """Whether the spec with this content hash is cached."""
        return spec_hash in self._items
