"""Typed parsers for the runtime API's answers: `show proc`, `show sess`, `show info`,
`show servers state`, `show table`, `show acl|map` and `prepare acl|map`.

Each takes the text `cli.CliSocket.command` returned and gives values; no other module
reads haproxy's answers. `stat.py` parses the `show stat` CSV (the metrics' hot path).
Recorded answers of each haproxy version we run are under tests/data/haproxy/.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field


def _matching_lines(pattern: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """The matches of `pattern` at the start of each line (surrounding blanks ignored)."""
    for line in text.splitlines():
        m = pattern.match(line.strip())
        if m:
            yield m


# --- show proc (master CLI) ------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One line of the master's `show proc`."""

    kind: str  # master | worker
    pid: int
    reloads: int
    failed_reloads: int = 0
    old: bool = False  # under "# old workers": left by a reload, still serving connections


def parse_proc_table(text: str) -> list[Proc]:
    """Every master and worker line of `show proc` (2.6 and 3.x layouts), old workers marked;
    programs are left out."""
    procs: list[Proc] = []
    section = "current"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            lowered = line.lower()
            if "old worker" in lowered:
                section = "old"
            elif "program" in lowered:
                section = "program"
            elif "worker" in lowered:
                section = "current"
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit() or section == "program":
            continue
        pid, kind, reloads = int(fields[0]), fields[1], fields[2]
        failed = 0
        if "[failed:" in line:
            failed = int(line.split("[failed:")[1].split("]")[0].strip())
        count = int(reloads) if reloads.isdigit() else 0
        procs.append(Proc(kind, pid, count, failed, old=section == "old"))
    return procs


def parse_show_proc(text: str) -> list[Proc]:
    """The master and the current worker: the one that serves the newest configuration."""
    return [p for p in parse_proc_table(text) if not p.old]


def parse_old_workers(text: str) -> list[Proc]:
    """The old workers of `show proc` (left by reloads, still serving their connections),
    oldest first: the one that survived the most reloads."""
    old = [p for p in parse_proc_table(text) if p.old and p.kind == "worker"]
    return sorted(old, key=lambda p: -p.reloads)


# --- show sess (a worker) --------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One established session, from a worker's `show sess`."""

    ptr: str  # 0x55b244ffee50: what `shutdown session` takes
    frontend: str
    server: str  # "<none>" before a server was chosen
    client: str  # the client's IP address

    def __str__(self) -> str:
        return f"{self.client} via route {self.frontend} (server {self.server})"


_SESSION = re.compile(r"^(0x[0-9a-f]+): proto=(tcpv4|tcpv6)\s+src=(\S+)\s+fe=(\S+).*?srv=(\S+)")


def parse_sessions(text: str) -> list[Session]:
    """Client sessions of `show sess` (the CLI's own `sockpair` session left out)."""
    return [
        Session(m.group(1), m.group(4), m.group(5), m.group(3).rpartition(":")[0].strip("[]"))
        for m in _matching_lines(_SESSION, text)
    ]


# --- show info -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Info:
    """`show info`: every "Name: value" line, and the few fields the router reads."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        """The answering worker's pid; None when the answer was not `show info`'s."""
        return _int(self.fields.get("Pid"))

    @property
    def current_connections(self) -> int | None:
        """The connections this worker serves now (CurrConns)."""
        return _int(self.fields.get("CurrConns"))

    @property
    def dropped_logs(self) -> int | None:
        """Log lines this worker could not write (a full log buffer or FIFO)."""
        return _int(self.fields.get("DroppedLogs"))

    @property
    def sink_drops_doubled(self) -> bool:
        """Whether `show events` prints a ring's drop counter doubled: from 3.0 its lowest bit
        says an "N events dropped" line is being written and the count is in the bits above
        (haproxy's sink.h: `HA_ATOMIC_ADD(&sink->ctx.dropped, 2)`); 2.6 prints the count."""
        major, _, rest = self.fields.get("Version", "").partition(".")
        minor = rest.split(".", 1)[0].split("-", 1)[0]
        return major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= (3, 0)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def parse_info(text: str) -> Info:
    """`show info` lines ("Version: 2.6.12") into an Info."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value
    return Info(fields)


# --- show servers state ----------------------------------------------------------------------

FMAINT = 0x1  # srv_admin_state bit: forced maintenance (`set server ... state maint`)

# The columns of format version 1, as 2.6 and 3.0 print them in the header line; used only
# when an answer comes without its header.
_STATE_COLUMNS = (
    "be_id",
    "be_name",
    "srv_id",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_check_result",
    "srv_check_health",
    "srv_check_state",
    "srv_agent_state",
    "bk_f_forced_id",
    "srv_f_forced_id",
    "srv_fqdn",
    "srv_port",
    "srvrecord",
    "srv_use_ssl",
    "srv_check_port",
    "srv_check_addr",
    "srv_agent_addr",
    "srv_agent_port",
)
_STATE_NEEDS = ("be_name", "srv_name", "srv_addr", "srv_admin_state", "srv_port")
# A `server-state-file` with no server in it: the format version line alone. (An empty file
# makes haproxy warn "Can't get version of the global server state file" at every start.)
EMPTY_SERVER_STATE = "1\n"


@dataclass(frozen=True)
class ServerState:
    """One server line of `show servers state`, read by column name."""

    backend: str
    name: str
    address: str
    port: int
    admin_state: int  # srv_admin_state bits
    line: str  # the line itself, as `server-state-file` takes it back
    fqdn: str = "-"  # the name a server-template slot resolves, "-" for a fixed address

    @property
    def maintenance(self) -> bool:
        """Forced into maintenance (`set server ... state maint`)."""
        return bool(self.admin_state & FMAINT)

    @property
    def unfilled_slot(self) -> bool:
        """A DNS slot (it has a name) that no answer has given an address."""
        return self.address == "-" and self.fqdn != "-"


def _columns(names: Sequence[str]) -> tuple[tuple[int, ...], int | None] | None:
    """Where each of _STATE_NEEDS is in a header's column names (None if one is missing),
    and where srv_fqdn is, if there."""
    names = list(names)
    try:
        needed = tuple(names.index(name) for name in _STATE_NEEDS)
    except ValueError:
        return None
    return needed, names.index("srv_fqdn") if "srv_fqdn" in names else None


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time (`splitlines` makes them all at once)."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop < 0:
            stop = end
        yield text[start:stop].rstrip("\r")
        start = stop + 1


_Columns = tuple[tuple[int, ...], int | None] | None


def _state_line(line: str, columns: _Columns) -> tuple[ServerState | None, _Columns]:
    """The server on one line of the answer (None for another line), and the columns the
    lines after it are read by (a header line names them)."""
    fields = line.split()
    if line.startswith("#"):
        return None, (_columns(fields[1:]) if "be_name" in fields else columns)
    if columns is None or len(fields) <= max(columns[0]):
        return None, columns  # the version line ("1") has too few cells to be a server line
    backend, name, address, admin, port = (fields[i] for i in columns[0])
    at = columns[1]
    fqdn = fields[at] if at is not None and at < len(fields) else "-"
    if not (port.isdigit() and admin.isdigit()):
        return None, columns
    return ServerState(backend, name, address, int(port), int(admin), line, fqdn), columns


def _state_lines(text: str) -> Iterator[tuple[str, ServerState | None]]:
    """Every line of the answer, each with its server when it is a server line."""
    columns = _columns(_STATE_COLUMNS)
    for line in _lines(text):
        state, columns = _state_line(line, columns)
        yield line, state


def parse_servers_state(text: str) -> list[ServerState]:
    """The server lines of `show servers state [<backend>]`."""
    return [s for _, s in _state_lines(text) if s is not None]


def servers_state_without(text: str, drop: Callable[[ServerState], bool]) -> str:
    """The answer with the server lines `drop` picks left out, every other line kept (the
    version line, the header), newline-terminated: a `server-state-file`.

    Read a line at a time into one growing text: at 10,000 routes the answer has 20,000
    server lines, and holding them all as objects at once, the largest burst of small objects
    a reload made, left the supervisor's heap with more empty pages after every reload.
    """
    out = io.StringIO()
    for line, state in _state_lines(text):
        if state is None or not drop(state):
            out.write(line)
            out.write("\n")
    return out.getvalue() or "\n"


# --- show table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableEntry:
    """One entry of `show table <name>`: its key and its stored data (gpc0, use, exp...)."""

    key: str
    data: Mapping[str, str]


_TABLE_ENTRY = re.compile(r"^0x[0-9a-f]+: key=(\S+)\s(.*)$")


def parse_table(text: str) -> list[TableEntry]:
    """The entries of `show table <name>` (its header line left out)."""
    return [
        TableEntry(m.group(1), dict(w.split("=", 1) for w in m.group(2).split() if "=" in w))
        for m in _matching_lines(_TABLE_ENTRY, text)
    ]


@dataclass(frozen=True)
class TableInfo:
    """One table of `show table` (no name): its name and its size in entries."""

    name: str
    size: int


_TABLE_HEADER = re.compile(r"^# table: (\S+), type: \w+, size:(\d+), used:\d+")


def parse_table_list(text: str) -> list[TableInfo]:
    """The tables `show table` lists (2.6 and 3.0 alike; 3.0 adds fields after `used`)."""
    return [TableInfo(m.group(1), int(m.group(2))) for m in _matching_lines(_TABLE_HEADER, text)]


# --- show acl|map <file>, prepare acl|map -----------------------------------------------------


def parse_pattern_entries(text: str) -> list[str]:
    """The entries `show acl|map <file>` lists ("10.0.0.0/8", "key value"), ids left out."""
    return [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith("0x") and " " in ln]


_PREPARED = re.compile(r"New version created: (\d+)")


def parse_prepared_version(text: str) -> str | None:
    """The version `prepare acl|map` created (u32, wraps: use it as given), None if refused."""
    m = _PREPARED.search(text)
    return m.group(1) if m else None


@dataclass(frozen=True)
class SslEntry:
    """What `show ssl cert|ca-file|crl-file <file>` says a loaded file holds."""

    serials: tuple[str, ...] = ()  # certificates, in file order (hex, upper case)
    last_updates: tuple[str, ...] = ()  # CRLs: "Dec  7 21:23:58 2026 GMT"
    used: bool = True  # `Status: Used`: some server or listener loads it


def parse_show_ssl(text: str) -> SslEntry:
    """The serials and CRL update times in one `show ssl cert|ca-file|crl-file <file>` answer
    (2.6 and 3.0 alike)."""
    serials, updates = [], []
    used = True
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        if key == "Serial":
            # haproxy prints the serial's bytes (a leading zero when the top nibble is 0).
            serials.append(value.strip().upper().lstrip("0") or "0")
        elif key == "Last Update":
            updates.append(value.strip())
        elif key == "Status":
            used = value.strip() == "Used"
    return SslEntry(tuple(serials), tuple(updates), used)


# --- show events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSink:
    """One line of `show events` (no argument): a sink, its drop counter and description."""

    name: str
    kind: str  # buffer (a ring), fd (stdout, stderr)
    dropped: int  # since haproxy last wrote its "N events dropped" line into the sink
    description: str


_SINK = re.compile(r"^\s*(\S+)\s*: type=(\w+), (\d+) dropped, (.*)$")


def parse_event_sinks(text: str, doubled: bool = False) -> list[EventSink]:
    """`show events` without a sink name: the list of sinks (2.6 and 3.x print it alike, but
    3.x prints each drop counter doubled: `doubled`, from `Info.sink_drops_doubled`)."""
    out = []
    for line in text.splitlines():
        found = _SINK.match(line)
        if found is not None:
            name, kind, dropped, description = found.groups()
            count = int(dropped) >> 1 if doubled else int(dropped)
            out.append(EventSink(name, kind, count, description.strip()))
    return out


# haproxy's own line in a ring when a write succeeds again after drops, as in
# `<134>1 2026-12-06T21:23:03.645250+00:00 - haproxy 12557 - - 208 events dropped` (rfc5424)
# or bare (`format raw`); it resets the sink's counter. haproxy 3.0 writes it with the NUL
# that ends its C string, in a dump as in a `-w` stream: the line is read without it.
_ANNOUNCED = re.compile(r"^((?:<\d+>1 \S+ \S+ \S+ \d+ - - )?(\d+) events? dropped)\0?$", re.M)


def announcements(ring_text: str) -> list[tuple[str, int]]:
    """Each "N events dropped" line of a ring's text (a `show events <ring>` dump, or what a
    `-w` stream sent), with its N, oldest first. An rfc5424 line carries a timestamp in
    microseconds, so no two in a dump are alike."""
    return [(m.group(1), int(m.group(2))) for m in _ANNOUNCED.finditer(ring_text)]
