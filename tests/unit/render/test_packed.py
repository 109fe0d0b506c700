"""The haproxy.cfg text kept deflated between changes (render/packed.py)."""

from __future__ import annotations

import threading

from haproxy_egress.render.packed import PackedText


def test_a_packed_text_reads_back_the_same_and_stays_inflated_until_packed_again() -> None:
    text = "".join(f"backend r{i}\n    server s 192.0.2.{i % 250}:443\n" for i in range(2000))
    held = PackedText(text)
    assert held.text is text
    assert not held.packed
    held.pack()
    assert held.packed
    assert held._packed is not None
    assert len(held._packed) < len(text) // 5
    again = held.text
    assert again == text
    assert again is not text
    assert held.text is again  # kept: a change reads it several times, inflated once
    deflated = held._packed
    held.pack()
    held.pack()  # nothing to let go of twice
    assert held.packed
    assert held._packed is deflated


def test_an_empty_or_non_ascii_text_survives_packing() -> None:
    for text in ("", "# route café (naïve.yaml: routes[0])\n"):
        held = PackedText(text)
        held.pack()
        assert held.text == text


def test_a_reader_that_needs_the_text_once_leaves_it_packed() -> None:
    text = "backend a\n" * 1000
    held = PackedText(text)
    assert held.read() is text  # not packed yet: the text itself
    held.pack()
    assert held.read() == text
    assert held.packed  # the late check read it; nothing stays inflated until the next change


def test_a_change_starts_inflating_the_text_before_it_reads_it() -> None:
    text = "backend b\n    server s 192.0.2.1:443\n" * 5000
    held = PackedText(text)
    held.pack()
    held.unpack_soon()
    for thread in threading.enumerate():
        if thread.name == "inflate":
            thread.join(timeout=30)
    assert not held.packed  # inflated by its own thread, before anyone asked for the text
    assert held.text == text
