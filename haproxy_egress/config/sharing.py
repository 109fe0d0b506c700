"""Validated routes share their equal parts: the router keeps 10,000 routes for as long as it runs.

A validation gives every route its own field values, and every pydantic model in it (a
health check, limits, a parent) its own set of the fields the input named
(`model_fields_set`, 216 to 2,264 bytes). At 10,000 routes in the bench's shape those sets
were 15 MB of the supervisor's RSS, and the values that every route repeats (`check:
{enabled: false}`, `allow_from`, timeouts as ints above 256, the same strings parsed again
from each YAML key) about as much again. `Sharing.route` rewrites a freshly validated route
in place so that what is equal is one object: strings, numbers, addresses, tuples, the
models' fields sets by their content, and whole frozen sub-models and dataclasses
(endpoints, listeners) when every field is the very same object as another's (identity,
never `==`, which holds between `1`, `1.0` and `True`).

Nothing observable changes: routes and their parts are frozen, equal values replace equal
values, and pydantic copies a fields set before it adds to it. A `Sharing` lives for one
load (the load cache keeps the routes it made, not the table), so it never keeps a value
alive that no route holds.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

from pydantic import BaseModel

from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import Endpoint, Listen

__all__ = ["Sharing"]

M = TypeVar("M", bound=BaseModel)

# Values equal by `==` only within their own type (the key carries the type). Strings are
# not given to `sys.intern`: its table never shrinks, and most of a route's are its own.
_ATOMS = (str, int, float, IPv4Address, IPv6Address, IPv4Network, IPv6Network)
# The frozen dataclasses of the model (config/scalars.py) and their fields, in order.
_FROZEN_DATACLASSES: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in dataclasses.fields(kind)) for kind in (Endpoint, Listen)
}
_ROUTE_FIELDS = tuple(f.name for f in dataclasses.fields(Route))
# The fields sets seen so far (a route's fields are a fixed list, so the distinct sets are few;
# past the bound a set is simply not shared).
_FIELD_SETS: dict[frozenset[str], set[str]] = {}
_FIELD_SETS_BOUND = 4096


def _field_set(fields: set[str]) -> set[str]:
    key = frozenset(fields)
    shared = _FIELD_SETS.get(key)
    if shared is None:
        if len(_FIELD_SETS) >= _FIELD_SETS_BOUND:
            return fields
        shared = _FIELD_SETS[key] = fields
    return shared


class Sharing:
    """One load's table of shared values."""

    def __init__(self) -> None:
        # (type, the value, or the ids of its parts) → the one object kept for it. The
        # parts of a keyed tuple or model are held by that object, so their ids stay theirs.
        self._table: dict[tuple[Any, ...], Any] = {}

    def route(self, route: Route) -> None:
        """Share a route's field values, in place (the route stays itself: a route is told
        apart from the others by identity)."""
        self._fields(route, _ROUTE_FIELDS)

    def model(self, model: M) -> M:
        """`model` with its parts and its fields set shared (in place), or an equal model seen
        before."""
        values = model.__dict__
        for name in type(model).model_fields:
            if name in values:
                values[name] = self.value(values[name])
        object.__setattr__(model, "__pydantic_fields_set__", _field_set(model.model_fields_set))
        fields = type(model).model_fields
        values = model.__dict__
        if type(model).__private_attributes__ or not type(model).model_config.get("frozen"):
            return model  # private state is not in the fields; a mutable model is its own
        key = (type(model), id(model.model_fields_set), *(id(values.get(n)) for n in fields))
        found: M = self._table.setdefault(key, model)
        return found

    def value(self, value: Any) -> Any:
        """The shared object equal to `value`, where one can be shared."""
        kind = type(value)
        if kind in _ATOMS:
            return self._table.setdefault((kind, value), value)
        if kind is tuple:
            parts = tuple(map(self.value, value))
            return self._table.setdefault((tuple, *map(id, parts)), parts)
        if isinstance(value, BaseModel):
            return self.model(value)
        if kind in _FROZEN_DATACLASSES:
            return self._dataclass(value)
        return value

    def _dataclass(self, value: Any) -> Any:
        """A frozen dataclass (an endpoint, a listener) with its fields shared, or an equal one
        seen before."""
        parts = self._fields(value, _FROZEN_DATACLASSES[type(value)])
        return self._table.setdefault((type(value), *map(id, parts)), value)

    def _fields(self, value: Any, names: tuple[str, ...]) -> list[Any]:
        """Share the named fields of a frozen dataclass in place; their shared values."""
        parts = [self.value(getattr(value, n)) for n in names]
        for name, part in zip(names, parts, strict=True):
            object.__setattr__(value, name, part)  # frozen: equal replaces equal
        return parts
