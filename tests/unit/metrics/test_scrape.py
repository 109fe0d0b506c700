"""A scrape read as it arrives and rendered block by block, with the pieces of the last
gzipped scrape kept: the same body as a fresh render of the same answer, whatever came before
it.

The answers here are made of the rows of a recorded 2.6 `show info;show stat`, repeated for
thousands of routes so that they span several blocks.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Mapping
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy.stat import (
    HEADER,
    ROWS_PER_BLOCK,
    AnswerLines,
    csv_lines,
)
from haproxy_egress.metrics.exposition import scrape_pieces
from haproxy_egress.metrics.families import FRONTEND_FAMILIES
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.pieces import DEFLATED_ALONE, Deflated, Piece, gzipped, plain
from haproxy_egress.metrics.scrape import PARSE_STEP, Scraper
from haproxy_egress.metrics.small_families import ScrapeCounters
from haproxy_egress.metrics.stats import HaproxySnapshot
from tests.unit.metrics.test_exporter import ALL, fast_body

DATA = Path(__file__).resolve().parent.parent.parent / "data"
RECORDED = (DATA / "haproxy" / "2.6" / "show_info_stat.txt").read_text()
INFO, _, CSV = RECORDED.partition(HEADER)
HEADER_LINE, *ROWS = (HEADER + CSV).splitlines()
# One route's rows: its frontend, two servers and its backend (from the recording's "front"
# and "be"), with the proxy name and a few cells replaced.
_FRONT = next(r for r in ROWS if r.startswith("front,FRONTEND,"))
_SERVERS = [r for r in ROWS if r.startswith("be,") and ",BACKEND," not in r]
_BACKEND = next(r for r in ROWS if r.startswith("be,BACKEND,"))
STOT, STATUS, LASTCHG = 7, 17, 23


def _row(template: str, name: str, changes: Mapping[int, str]) -> str:
    cells = template.split(",")
    cells[0] = name
    for index, cell in changes.items():
        cells[index] = cell
    return ",".join(cells)


def answer(
    routes: int,
    *,
    sessions: Mapping[int, int] | None = None,
    down: frozenset[int] = frozenset(),
    lastchg: int = 5,
) -> str:
    """`show info;show stat` of `routes` routes; `sessions`: route → its sessions total;
    `down`: routes whose servers are DOWN; `lastchg` as haproxy ticks it every second."""
    lines = [HEADER_LINE]
    for n in range(routes):
        stot = str((sessions or {}).get(n, 0))
        name = f"route-{n}"
        lines.append(_row(_FRONT, name, {STOT: stot}))
        for server in _SERVERS:
            status = "DOWN" if n in down else "UP"
            lines.append(_row(server, name, {STOT: stot, STATUS: status, LASTCHG: str(lastchg)}))
        lines.append(_row(_BACKEND, name, {STOT: stot, LASTCHG: str(lastchg)}))
    return INFO + "\n".join(lines) + "\n\n"


def chunks(text: str, size: int) -> list[bytes]:
    data = text.encode()
    return [data[i : i + size] for i in range(0, len(data), size)]


class Haproxy:
    """A stream source whose answer a test sets before each scrape."""

    def __init__(self) -> None:
        self.answer = ""
        self.chunk = 200_000

    def stream(self, command: str) -> Iterator[bytes]:
        assert command == "show info;show stat"
        yield from chunks(self.answer, self.chunk)


def body(
    scraper: Scraper,
    options: ExporterOptions = ALL,
    openmetrics: bool = False,
    deflate: bool = False,
) -> bytes:
    """The plain body of a scrape (gunzipped when `deflate`: the gzipped answer's)."""
    rows = scraper.scrape(deflate)
    pieces = scrape_pieces(
        rows, options, openmetrics, status=None, counters=ScrapeCounters(), extra=None
    )
    if deflate:
        return gzip.decompress(b"".join(gzipped(pieces)))
    return b"".join(plain(pieces))


def fresh(text: str, options: ExporterOptions = ALL, openmetrics: bool = False) -> bytes:
    """The body of a render of the whole answer, with nothing from an earlier scrape."""
    info, _, csv = text.partition(HEADER)
    snapshot = HaproxySnapshot(info=dict(_info_fields(info)), stat=HEADER + csv)
    return fast_body(snapshot, options, status=None, openmetrics=openmetrics)


def _info_fields(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            yield key, value


ROUTES = 2 * ROWS_PER_BLOCK // 4 + 300  # four rows a route: three blocks, the last short


def test_a_streamed_scrape_is_the_render_of_the_whole_answer() -> None:
    haproxy = Haproxy()
    haproxy.answer = answer(ROUTES, sessions={3: 7})
    scraper = Scraper(haproxy.stream, ALL)
    assert body(scraper) == fresh(haproxy.answer)
    assert scraper.cached_blocks() == 0  # a plain answer keeps nothing
    for openmetrics in (False, True):
        expected = fresh(haproxy.answer, openmetrics=openmetrics)
        assert body(scraper, openmetrics=openmetrics) == expected
        for _ in range(2):  # made, then from the pieces kept
            assert body(scraper, openmetrics=openmetrics, deflate=True) == expected
            assert scraper.cached_blocks() == 3


def test_pieces_of_unchanged_cells_are_kept_and_changed_ones_printed_anew() -> None:
    haproxy = Haproxy()
    haproxy.answer = answer(ROUTES, lastchg=5)
    scraper = Scraper(haproxy.stream, ALL)
    before = scraper.scrape(deflate=True).blocks
    # A second later: lastchg ticked on every backend and server row; route 1 took two
    # sessions, and the servers of a route in the last block went down.
    last = ROUTES - 1
    haproxy.answer = answer(ROUTES, sessions={1: 2}, down=frozenset({last}), lastchg=6)
    text = body(scraper, deflate=True)
    assert text == fresh(haproxy.answer)
    assert b'haproxy_frontend_sessions_total{frontend="route-1"} 2\n' in text
    assert b'haproxy_server_up{backend="route-%d",server="s1"} 0\n' % last in text
    after = scraper.scrape(deflate=True).blocks
    # The middle block saw neither change: every piece is the one made two scrapes ago.
    assert all(
        after[1][t].pieces[n] is before[1][t].pieces[n]
        for t in before[1]
        for n in before[1][t].pieces
    )
    # In the first block only the piece of the frontends' column that changed is new.
    frontend = before[0]["0"].pieces
    new = [
        FRONTEND_FAMILIES[n].name for n in frontend if after[0]["0"].pieces[n] is not frontend[n]
    ]
    assert new == ["haproxy_frontend_sessions_total"]


def test_any_sequence_of_answers_renders_as_each_answer_alone() -> None:
    haproxy = Haproxy()
    scraper = Scraper(haproxy.stream, ALL)
    excluded = ExporterOptions(None, frozenset({"down"}))
    excluding = Scraper(haproxy.stream, excluded)
    for text in (
        answer(ROUTES),
        answer(ROUTES, sessions={0: 1, ROUTES - 1: 5}, lastchg=9),
        answer(ROUTES - 700, sessions={2: 3}),  # routes removed: rows moved between blocks
        answer(ROUTES, down=frozenset(range(0, ROUTES, 3))),
        answer(ROUTES, down=frozenset(range(0, ROUTES, 3))),
    ):
        haproxy.answer = text
        assert body(scraper, deflate=True) == fresh(text)
        assert body(scraper) == fresh(text)
        assert body(excluding, excluded, deflate=True) == fresh(text, excluded)


def test_the_kept_pieces_are_those_of_the_latest_scrape_only() -> None:
    haproxy = Haproxy()
    scraper = Scraper(haproxy.stream, ALL)
    haproxy.answer = answer(ROUTES)
    scraper.scrape(deflate=True)
    assert scraper.cached_blocks() == 3
    haproxy.answer = answer(10)
    assert body(scraper, deflate=True) == fresh(haproxy.answer)
    assert scraper.cached_blocks() == 1


def test_a_socket_that_fails_mid_answer_gives_haproxy_down_not_an_exception() -> None:
    def broken(command: str) -> Iterator[bytes]:
        yield from chunks(answer(ROUTES), 100_000)[:5]
        raise HaproxyError("stats socket: connection reset")

    rows = Scraper(broken, ALL).scrape(deflate=True)
    assert not rows.snapshot.up
    assert "connection reset" in rows.snapshot.error
    assert rows.blocks == []


def test_an_answer_without_csv_gives_haproxy_down() -> None:
    rows = Scraper(lambda command: [b"Unknown command.\n"], ALL).scrape()
    assert not rows.snapshot.up
    assert "Unknown command" in rows.snapshot.error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(1, 5000), min_size=1, max_size=30), step=st.sampled_from([1, 3, 512])
)
def test_answer_lines_cut_anywhere_are_the_rows_in_blocks(cuts: list[int], step: int) -> None:
    text = answer(300) + "é,\r\n"  # a multi-byte character, and a line ending in \r\n
    reader = AnswerLines(step)
    blocks: list[list[str]] = []
    start = 0
    for cut in [*cuts, len(text)]:
        blocks += reader.feed(text[start : start + cut])
        start += cut
    blocks += reader.feed(text[start:]) + reader.end()
    rows = csv_lines(text[text.index(HEADER) :])
    assert blocks == [rows[i : i + step] for i in range(0, len(rows), step)]
    assert reader.info is not None
    assert reader.info.fields["Version"].startswith("2.6")


@given(size=st.sampled_from([1, 7, 4096, 65536]))
@settings(max_examples=8, deadline=None)
def test_a_stream_cut_inside_characters_reads_as_the_whole(size: int) -> None:
    haproxy = Haproxy()
    haproxy.answer = answer(40).replace("route-3,", "rüte-3,")
    haproxy.chunk = size
    assert body(Scraper(haproxy.stream, ALL)) == fresh(haproxy.answer)


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.integers(DEFLATED_ALONE, 3 * DEFLATED_ALONE).map(lambda n: b"sample 0\n" * (n // 9)),
        ),
        max_size=12,
    )
)
def test_the_gzip_of_pieces_decompresses_to_the_plain_body(texts: list[bytes]) -> None:
    pieces = [Piece(text) for text in texts]
    assert gzip.decompress(b"".join(gzipped(pieces))) == b"".join(plain(pieces))
    # With the large pieces kept deflated (their CRCs combined), any of them.
    kept = [Deflated(p) if len(p.text) >= DEFLATED_ALONE else p for p in pieces]
    assert gzip.decompress(b"".join(gzipped(kept))) == b"".join(texts)
    alone = [Deflated(p) for p in pieces if p.text]
    assert gzip.decompress(b"".join(gzipped(alone))) == b"".join(texts)


def test_a_gzipped_scrape_is_small_and_the_plain_one_gunzipped() -> None:
    haproxy = Haproxy()
    haproxy.answer = answer(ROUTES)
    scraper = Scraper(haproxy.stream, ALL)
    for _ in range(2):  # made, then from the kept pieces
        rows = scraper.scrape(deflate=True)
        pieces = scrape_pieces(rows, ALL, False, status=None, counters=ScrapeCounters(), extra=None)
        zipped = b"".join(gzipped(pieces))
        assert gzip.decompress(zipped) == fresh(haproxy.answer)
        assert len(zipped) * 10 < len(fresh(haproxy.answer))


def test_parse_steps_fill_blocks() -> None:
    assert ROWS_PER_BLOCK % PARSE_STEP == 0  # a block is whole steps: its rows never move
