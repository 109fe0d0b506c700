"""A /metrics body in pieces: bytes sent one after the other, and a gzip member made of the
large pieces' own deflate streams, so that a piece that did not change since the last scrape
is kept only in its deflated form (~1/18 of the text) and is neither rendered nor compressed
again.

Deflate (RFC 1951) lets raw streams be concatenated when each starts from an empty window
and ends on a byte boundary without a final block (what Z_SYNC_FLUSH and Z_FULL_FLUSH leave):
the gzip member is the header, those streams, a final block, and the CRC-32 and length of
the whole text (RFC 1952), the CRC combined from the pieces' own as zlib's crc32_combine does.
It decompresses to the plain body, byte for byte.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

# zlib level 1: ~18x smaller than plain text at ~1/10 of the CPU of level 9 (prometheus_client's
# default), which would cost ~1 s per scrape at 10,000 routes.
GZIP_LEVEL = 1
# ID1 ID2 CM=deflate FLG=0 MTIME=0 (bodies comparable) XFL=4 (fastest) OS=255 (unknown), as
# gzip.compress(body, 1, mtime=0) writes it.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
# Pieces this large are deflated on their own and kept so (a family's samples of a block of
# rows at 10,000 routes: 40-150 kB); smaller ones keep their text and share one deflater.
DEFLATED_ALONE = 16384


class Piece:
    """Some exposition text as bytes, and the CSV cells that failed to convert in it."""

    __slots__ = ("failures", "text")

    def __init__(self, text: bytes, failures: int = 0) -> None:
        self.text = text
        self.failures = failures


class Deflated:
    """A large piece as raw deflate blocks that start from an empty window and end on a
    byte boundary with no final block, with the CRC-32 and length of its text: all a gzip
    member needs of it, without the text."""

    __slots__ = ("_shift", "crc", "deflated", "failures", "size")

    def __init__(self, piece: Piece) -> None:
        deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.deflated = deflater.compress(piece.text) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self.crc = zlib.crc32(piece.text)
        self.size = len(piece.text)
        self.failures = piece.failures
        self._shift = _x2nmodp(self.size)  # what crc32_combine computes for each combination

    def after(self, crc: int) -> int:
        """The CRC-32 of some text followed by this piece's, from that text's `crc`."""
        return _multmodp(self._shift, crc) ^ self.crc


Part = Piece | Deflated


def plain(parts: Sequence[Part]) -> list[bytes]:
    """The body's bytes, piece by piece (of pieces rendered for a plain answer)."""
    out = []
    for part in parts:
        if not isinstance(part, Piece):
            raise TypeError("a plain body needs the text of every piece")
        out.append(part.text)
    return out


def gzipped(parts: Sequence[Part]) -> list[bytes]:
    """The body as one gzip member, in parts to send one after the other.

    A large piece goes as its own deflated bytes; the small ones between (HELP and TYPE
    lines, the small families, every piece of a small router) go through one deflater, which
    the large pieces cut with Z_FULL_FLUSH so that none of its output refers to text before
    them: as small as gzip of the whole body when every piece is small.
    """
    crc = 0
    size = 0
    out = [_GZIP_HEADER]
    deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    fed = False
    for part in parts:
        if isinstance(part, Piece) and len(part.text) < DEFLATED_ALONE:
            crc = zlib.crc32(part.text, crc)
            size += len(part.text)
            out.append(deflater.compress(part.text))
            fed = True
            continue
        whole = part if isinstance(part, Deflated) else Deflated(part)
        if fed:
            out.append(deflater.flush(zlib.Z_FULL_FLUSH))
            fed = False
        out.append(whole.deflated)
        crc = whole.after(crc)
        size += whole.size
    out.append(deflater.flush())  # the final block
    out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return out


# --- crc32_combine, as zlib 1.2.12+ computes it (crc32.c), which Python does not expose ---

_POLY = 0xEDB88320  # CRC-32, reflected


def _multmodp(a: int, b: int) -> int:
    """a times b modulo the CRC polynomial (reflected bit order)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


def _x2nmodp(length: int) -> int:
    """x^(8 * length) modulo the polynomial: shifts a CRC past `length` zero bytes."""
    p = 1 << 31  # x^0
    k = 3
    while length:
        if length & 1:
            p = _multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p
