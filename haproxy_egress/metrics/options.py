"""haproxy_exporter's selection flags (which server series to export), parsed from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.metrics.families import SERVER_FAMILIES, SERVER_FIELDS, StatFamily
from haproxy_egress.settings import Settings

_STATE_WORDS = frozenset({"up", "down", "nolb", "maint", "drain", "no", "nocheck"})
UNUSED_SLOT_STATE = "maint(resolution)"  # normalised; an unused server-template slot


def normalise_state(state: str) -> str:
    """A status string in the form exclusions compare: lower case, no blanks.

    So "MAINT (resolution)" (what HAProxy 2.x prints) and "MAINT(resolution)" (what
    haproxy_exporter's documentation spells) both match.
    """
    return "".join(state.split()).lower()


@dataclass(frozen=True)
class ExporterOptions:
    """Which haproxy series to export; haproxy_exporter's selection flags."""

    server_metric_fields: frozenset[int] | None  # None = all (--haproxy.server-metric-fields)
    server_exclude_states: frozenset[str]  # normalised (--haproxy.server-exclude-states)
    include_unused_slots: bool = False
    scrape_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ExporterOptions:
        """Parse the raw selection settings; ConfigError lists every problem found."""
        problems: list[Problem] = []
        fields: frozenset[int] | None = None
        raw_fields = settings.server_metric_fields.strip()
        if raw_fields:
            chosen: set[int] = set()
            for item in (part.strip() for part in raw_fields.split(",")):
                if not item.isdigit():
                    problems.append(
                        Problem(
                            "EGRESS_SERVER_METRIC_FIELDS",
                            "",
                            f"must be comma-separated CSV field numbers (got {item!r})",
                        )
                    )
                elif int(item) not in SERVER_FIELDS:
                    known = ",".join(str(i) for i in sorted(SERVER_FIELDS))
                    problems.append(
                        Problem(
                            "EGRESS_SERVER_METRIC_FIELDS",
                            "",
                            f"field {item} has no server metric (known: {known})",
                        )
                    )
                else:
                    chosen.add(int(item))
            fields = frozenset(chosen)
        states: set[str] = set()
        for item in (part.strip() for part in settings.server_exclude_states.split(",")):
            if not item:
                continue
            state = normalise_state(item)
            word = item.split()[0].split("(")[0].lower()
            if word not in _STATE_WORDS:
                problems.append(
                    Problem(
                        "EGRESS_SERVER_EXCLUDE_STATES",
                        "",
                        f"unknown server state {item!r} (states look like UP, DOWN, "
                        "MAINT, MAINT (resolution), DRAIN, NOLB, no check, UP 1/3)",
                    )
                )
            states.add(state)
        if problems:
            raise ConfigError(problems)
        return cls(
            server_metric_fields=fields,
            server_exclude_states=frozenset(states),
            include_unused_slots=settings.include_unused_slots,
        )

    def server_families(self) -> tuple[StatFamily, ...]:
        """The server families (and, for http_responses_total, codes) selected by field."""
        if self.server_metric_fields is None:
            return SERVER_FAMILIES
        selected = []
        for fam in SERVER_FAMILIES:
            kept = tuple(f for f in fam.fields if f[0] in self.server_metric_fields)
            if kept:
                selected.append(StatFamily(fam.name, fam.kind, fam.help, kept, fam.conversion))
        return tuple(selected)

    def keeps_server(self, status: str) -> bool:
        """False for a server row whose status is excluded, or an unused template slot."""
        if not self.server_exclude_states and self.include_unused_slots:
            return True
        state = normalise_state(status)
        if state in self.server_exclude_states:
            return False
        return self.include_unused_slots or state != UNUSED_SLOT_STATE
