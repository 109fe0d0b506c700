"""Giving back to the system the memory a compile freed.

A compile of 10,000 routes allocates and frees tens of megabytes. glibc keeps freed heap
pages for reuse, so without this the supervisor's RSS crept up by a few megabytes with each
edit until it plateaued well above what it holds; `malloc_trim(0)` returns the free pages
(about a millisecond), after each change and once after the start-up compile.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from functools import cache

__all__ = ["after_change", "map_large_blocks", "release", "settle"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
_LARGE = 128 * 1024  # glibc's default threshold, kept fixed


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # glibc only (not musl)


def map_large_blocks() -> None:
    """Keep blocks of 128 kB and more out of the heap, each in its own mapping returned to
    the system when freed. glibc raises that threshold to the largest block freed so far: a
    compile at 10,000 routes frees its 7 MB haproxy.cfg text and its big tables, after
    which every such block came from the heap, which they left fragmented (7 MB more RSS
    after the first edit, for good); fixing the threshold turns that off."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _LARGE)


def release() -> None:
    """Return freed heap pages to the system, where the C library can."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(OSError):
            libc.malloc_trim(0)


def after_change() -> None:
    """A change is done: free its garbage now, cycles included, then return the pages.

    A render leaves a reference cycle behind (jinja2's context and its macros), and the
    context holds what the render was given: the previous config, its origins by route
    name. With the collector held off during the change, those waited for a later pass of
    the older generations, and at 10,000 routes the supervisor carried 0.6 MB more after
    each reload until one came (a saw-tooth of 74 -> 78 MB every 7 reloads), and 3 MB more
    after a few runtime edits. Collecting the young generations here takes 2-3 ms, after
    the change is in effect."""
    gc.collect(1)
    release()


def settle() -> None:
    """After the start-up compile: collect its garbage, then move everything that lives on
    (the configuration's million objects at 10,000 routes, the libraries) out of the cyclic
    collector's sight (`gc.freeze`), so that no later pass walks them again. They are still
    freed by reference counting when an edit replaces them."""
    gc.collect()
    gc.freeze()
    map_large_blocks()
    release()
