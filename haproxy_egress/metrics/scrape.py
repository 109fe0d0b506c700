"""One scrape of haproxy's stats, rendered while haproxy is still writing them.

`show info;show stat` at 10,000 routes is a 9-13 MB answer that haproxy takes ~150 ms to
write. The answer is read as it arrives (`CliSocket.stream`) and cut into blocks of rows
(`AnswerLines`); each block is parsed and rendered into pieces (`render_block`) while
haproxy writes the next, on the other core, so little is left to do when the answer ends.

For gzipped answers (what Prometheus asks for), the pieces of the previous one are kept,
block by block, a large one in its deflated form only, and a piece whose cells are the same
again is taken as it was: most routes are idle between two scrapes, and their rows repeat
but for `lastchg`, which no family reads. This is a cache of a pure function (the pieces of
given cells), not state: what a scrape shows depends only on haproxy's answer to it. It
holds the pieces of the rows of the latest scrape and nothing more: ~6 MB at 10,000 routes
(the text would be 67 MB, more than the rest of the supervisor). A plain answer is rendered
anew and keeps nothing.
"""

from __future__ import annotations

import codecs
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy.stat import (
    HEADER,
    ROWS_PER_BLOCK,
    AnswerLines,
    StatColumns,
    add_lines,
    empty_columns,
)
from haproxy_egress.metrics.exposition import (
    BlockPieces,
    RenderedRows,
    render_block,
    wanted_columns,
)
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.stats import HaproxySnapshot

logger = logging.getLogger(__name__)

# The stats socket as a stream: a command in, haproxy's answer out as it arrives (the
# supervisor hands in `CliSocket.stream`). Raises HaproxyError.
StreamQuery = Callable[[str], Iterable[bytes]]
COMMAND = "show info;show stat"  # one command: both answers come from the same worker
# Rows parsed between two reads of the socket. haproxy stops writing when the ~200 kB socket
# buffer is full: a step must take less time than haproxy takes to fill it (~2 ms), or
# haproxy waits for us instead of writing the rest (2,048 rows: the dump took 2x as long).
PARSE_STEP = 512


class Scraper:
    """Reads and renders `show info;show stat` for each scrape; safe to call from several
    threads at once (each scrape reads its own answer)."""

    def __init__(self, stream: StreamQuery, options: ExporterOptions) -> None:
        self._stream = stream
        self._options = options
        self._wanted = wanted_columns(options)
        self._lock = threading.Lock()
        # Block number → that block's pieces in the latest scrape that read it.
        self._cache: dict[int, Mapping[str, BlockPieces]] = {}

    def cached_blocks(self) -> int:
        """How many blocks of pieces are kept (the rows of the latest scrape, in blocks)."""
        with self._lock:
            return len(self._cache)

    def scrape(self, deflate: bool = False) -> RenderedRows:
        """Ask haproxy and render its rows; never raises (haproxy_up 0 on any failure).
        `deflate`: for a gzipped answer, from and into the pieces kept (`render_block`)."""
        reader = AnswerLines(PARSE_STEP)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        texts: list[str] = []
        rows = _Rows(self, deflate)
        try:
            for chunk in self._stream(COMMAND):
                texts.append(decoder.decode(chunk))
                for lines in reader.feed(texts[-1]):
                    rows.add(lines)
            texts.append(decoder.decode(b"", final=True))
            for lines in reader.feed(texts[-1]) + reader.end():
                rows.add(lines)
            rows.end()
        except HaproxyError as exc:
            logger.warning("cannot read haproxy stats: %s", exc)
            return RenderedRows(HaproxySnapshot(error=str(exc)))
        if reader.info is None:
            head = reader.head()
            logger.warning("unexpected answer from haproxy's stats socket: %r", head[:200])
            return RenderedRows(HaproxySnapshot(error=f"unexpected answer: {head[:200]!r}"))
        with self._lock:
            for number in [n for n in self._cache if n >= len(rows.blocks)]:
                del self._cache[number]  # rows gone since: never more than this scrape's
        whole = "".join(texts)
        stat = whole[whole.index(HEADER) :]  # the raw CSV, for the few that read it so
        snapshot = HaproxySnapshot(info=reader.info.fields, stat=stat)
        return RenderedRows(snapshot, rows.blocks, rows.failures)

    def render(self, number: int, stat: StatColumns, deflate: bool) -> Mapping[str, BlockPieces]:
        """Render block `number` (`deflate`: from and into the pieces kept)."""
        if not deflate:
            return render_block(stat, self._options)
        with self._lock:
            previous = self._cache.get(number)
        pieces = render_block(stat, self._options, previous, deflate=True)
        with self._lock:
            self._cache[number] = pieces
        return pieces

    def empty(self) -> StatColumns:
        """A table for the next block's columns."""
        return empty_columns(self._wanted)


class _Rows:
    """The blocks of one scrape as their rows arrive: parsed a step at a time, rendered a
    block at a time."""

    def __init__(self, scraper: Scraper, deflate: bool) -> None:
        self._scraper = scraper
        self._deflate = deflate
        self._stat = scraper.empty()
        self._lines = 0  # rows in self._stat
        self.blocks: list[Mapping[str, BlockPieces]] = []
        self.failures = 0  # rows too short to read

    def add(self, lines: list[str]) -> None:
        """Parse the next rows (PARSE_STEP of them but at the end)."""
        add_lines(self._stat, lines)
        self._lines += len(lines)
        if self._lines >= ROWS_PER_BLOCK:
            self.end()

    def end(self) -> None:
        """Render the rows parsed since the last block."""
        if self._lines:
            number = len(self.blocks)
            self.blocks.append(self._scraper.render(number, self._stat, self._deflate))
            self.failures += self._stat.failures
            self._stat = self._scraper.empty()
            self._lines = 0


def stream_of(query: Callable[[str], str]) -> StreamQuery:
    """A whole-answer query as a stream of one piece (for sources that cannot stream)."""
    return lambda command: (query(command).encode(),)
