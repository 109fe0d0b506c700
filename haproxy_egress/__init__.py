"""haproxy-egress: an unprivileged, hot-reloading, metered egress router built on HAProxy."""

from __future__ import annotations

__version__ = "0.1.0"
