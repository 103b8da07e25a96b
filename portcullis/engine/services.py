"""Long-lived services shared by filters, keyed by identity so they outlive a config reload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Services:
    def __init__(self) -> None:
        self._items: dict[tuple[type[Any], str], Any] = {}

    def get_or_create(self, kind: type[T], key: str, factory: Callable[[], T]) -> T:
        """The service of this type and key; made by `factory` the first time it is asked for."""
        item = self._items.get((kind, key))
        if item is None:
            item = factory()
            self._items[(kind, key)] = item
        assert isinstance(item, kind)
        return item
