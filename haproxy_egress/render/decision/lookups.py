"""What the decision chain looks things up in: the stick tables policy routes share, the
resolvers section, and a route's map and pattern files, each read with its own converter."""

from __future__ import annotations

from dataclasses import dataclass

from haproxy_egress.render.decision.conditions import Term, var
from haproxy_egress.render.maps import MATCH

__all__ = ["ANY_IP", "RESOLVERS", "TABLES", "Files", "Tables"]


@dataclass(frozen=True)
class Tables:
    """The stick tables policy routes share (the exporter reads the decision counters)."""

    policy: str = "_egress_policy"  # key ROUTE/RULE/VERDICT, gpc0 = decisions
    dns: str = "_egress_dns"  # key name, gpt0 = its IPv4 address, for `hold valid`


TABLES = Tables()
RESOLVERS = "dns"  # the `resolvers` section of haproxy.cfg.j2 that do-resolve asks
ANY_IP = ("0.0.0.0/0", "::/0")


class Files:
    """A route's map and pattern files under the maps directory, each read with its own
    converter or match method (render/maps.py MATCH)."""

    def __init__(self, directory: str, names: dict[str, str]) -> None:
        self._directory = directory
        self._names = names

    def path(self, table: str) -> str:
        return f"{self._directory}/{self._names[table]}"

    def lookup(self, table: str, default: str | None = None) -> str:
        """The converter that looks a sample up in the map (`map_ip(<file>,<default>)`)."""
        tail = f",{default}" if default is not None else ""
        return f"{MATCH[table]}({self.path(table)}{tail})"

    def holds(self, name: str, table: str) -> Term:
        """The variable is one of the patterns of the file (`-m int -f <file>`)."""
        return Term(var(name), f"-m {MATCH[table]} -f {self.path(table)}")
