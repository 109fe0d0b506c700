"""Values a frozen, slotted class derives from its fields once, when first asked.

Routes and their locations are slotted dataclasses (the router keeps one of each per route
for as long as it runs, and a dict per instance was most of their memory), so there is no
instance dict for `functools.cached_property`. A subclass names slots of its own for the
derived values; they are not fields, so they take no part in validation or equality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["Derived"]

T = TypeVar("T")


class Derived:
    """Base of a slotted class whose subclass lists, in `__slots__`, where derived values go."""

    __slots__ = ()

    def _derived(self, slot: str, make: Callable[[], T]) -> T:
        """The value in `slot`, made by `make()` and kept there the first time."""
        try:
            value: T = getattr(self, slot)
        except AttributeError:
            value = make()
            object.__setattr__(self, slot, value)  # frozen: set once, never changed
        return value
