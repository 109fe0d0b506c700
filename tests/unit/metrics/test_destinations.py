"""Per-destination families from recorded haproxy 2.6 answers: the top N by attempts and an
`other` that holds the rest of the route's totals."""

from __future__ import annotations

from haproxy_egress.metrics.destinations import (
    FRONTENDS_COMMAND,
    OTHER,
    Counts,
    DestinationCollector,
    parse_entries,
    parse_tables,
    top,
)

SHOW_TABLES = (
    "# table: _egress_dst_2_pxy, type: string, size:1024, used:5\n"
    "# table: _egress_dns, type: string, size:65536, used:5\n"
    "# table: _egress_policy, type: string, size:65536, used:1\n"
)
# Recorded from haproxy 2.6.12 (templates/policy.cfg.j2's table, five names).
SHOW_PXY = (
    "# table: _egress_dst_2_pxy, type: string, size:1024, used:5\n"
    "0x7ff4bc04cdb8: key=n0.example use=0 exp=3599477 gpc0=0 bytes_in_cnt=79 "
    "bytes_out_cnt=112 gpc1=1\n"
    "0x557d01616428: key=n1.example use=0 exp=3599499 gpc0=0 bytes_in_cnt=234 "
    "bytes_out_cnt=339 gpc1=3\n"
    "0x557d01618228: key=n2.example use=0 exp=3599485 gpc0=3 bytes_in_cnt=0 "
    "bytes_out_cnt=0 gpc1=3\n"
    "0x557d01619ab8: key=n3.example use=0 exp=3599492 gpc0=0 bytes_in_cnt=316 "
    "bytes_out_cnt=448 gpc1=4\n"
    "0x7ff4bc055988: key=n4.example use=1 exp=3599499 gpc0=0 bytes_in_cnt=395 "
    "bytes_out_cnt=560 gpc1=5\n"
)
POLICY = (
    "# table: _egress_policy, type: string, size:65536, used:2\n"
    "0x1: key=pxy/default/1/allow use=0 exp=0 gpc0=20\n"
    "0x2: key=pxy/default/default/deny use=0 exp=0 gpc0=6\n"
)
# A frontend row: bin and bout are fields 8 and 9, the row type (0) field 32.
_ROW = ["pxy", "FRONTEND", "", "", "0", "1", "1000", "26", "5000", "7000", *[""] * 22, "0"]
STAT = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout\n" + ",".join(_ROW) + ",\n"
ANSWERS = {
    "show table": SHOW_TABLES,
    "show table _egress_dst_2_pxy": SHOW_PXY,
    "show table _egress_policy": POLICY,
    FRONTENDS_COMMAND: STAT,
}


def test_tables_name_their_route_and_top_n() -> None:
    assert parse_tables(SHOW_TABLES) == {"pxy": ("_egress_dst_2_pxy", 2)}


def test_entries_and_the_top() -> None:
    entries = parse_entries(SHOW_PXY)
    assert entries["n2.example"] == Counts(3, 3, 0, 0)
    assert [name for name, _ in top(entries, 3)] == ["n4.example", "n3.example", "n1.example"]


def test_collector_shows_the_top_and_other() -> None:
    families = {f.name: f for f in DestinationCollector(ANSWERS.__getitem__).collect()}
    rows = {
        s.labels["destination"]: s.value
        for s in families["haproxy_egress_destination_connections"].samples
    }
    assert rows == {"n4.example": 5, "n3.example": 4, OTHER: 26 - 9}
    denials = {
        s.labels["destination"]: s.value
        for s in families["haproxy_egress_destination_denials"].samples
    }
    assert denials == {"n4.example": 0, "n3.example": 0, OTHER: 6}
    bytes_in = {
        s.labels["destination"]: s.value
        for s in families["haproxy_egress_destination_bytes_in"].samples
    }
    assert bytes_in[OTHER] == 5000 - 395 - 316


def test_no_table_no_series_and_a_dead_socket_is_quiet() -> None:
    assert all(not f.samples for f in DestinationCollector(lambda _: "").collect())

    def dead(_: str) -> str:
        raise OSError("gone")

    assert all(not f.samples for f in DestinationCollector(dead).collect())
