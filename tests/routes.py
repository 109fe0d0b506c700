"""Routes for unit tests, validated from YAML-shaped data as the loader validates them."""

from __future__ import annotations

from pydantic import TypeAdapter

from haproxy_egress.config.route import Route

_ROUTE = TypeAdapter(Route)


def route_from(data: object) -> Route:
    """`data` (a route's YAML mapping) validated; pydantic's ValidationError when it is bad."""
    return _ROUTE.validate_python(data)
