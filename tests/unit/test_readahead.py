"""ReadAhead: chunks of a sequence read in a thread of their own, in order, errors where they arose."""
from __future__ import annotations

import threading

import pytest

from scitq_app.readahead import ReadAhead


class Items:
    """A sequence whose iteration records the thread it runs in and fails at `bad`."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad, self.threads, self.read = n, bad, set(), 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        raise AssertionError("read by iteration only")

    def __iter__(self):
        for i in range(self.n):
            self.threads.add(threading.current_thread().name)
            if i == self.bad:
                raise ValueError(f"item {i} is bad")
            self.read += 1
            yield i


def test_chunks_come_in_order_and_whole_from_another_thread():
    items, seen = Items(10), []
    with ReadAhead(items, 3, each=seen.append) as chunks:
        assert list(chunks) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert seen == list(range(10))
    assert items.threads == {"scitq-readahead"}


def test_what_fits_in_one_chunk_is_read_in_the_callers_thread():
    items = Items(3)
    with ReadAhead(items, 3) as chunks:
        assert list(chunks) == [[0, 1, 2]]
    assert items.threads == {threading.current_thread().name}
    with ReadAhead(Items(0), 3) as chunks:
        assert list(chunks) == []


def test_an_error_is_raised_after_the_chunks_read_before_it():
    got = []
    with pytest.raises(ValueError, match="item 7 is bad"):
        with ReadAhead(Items(10, bad=7), 3) as chunks:
            for chunk in chunks:
                got.append(chunk)
    assert got == [[0, 1, 2], [3, 4, 5]]


def test_a_consumer_that_stops_early_stops_the_reading_thread():
    items = Items(1000)
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with ReadAhead(items, 10, depth=2) as chunks:
            for _ in chunks:
                raise RuntimeError("the insert failed")
    assert threading.active_count() == before
    # the chunk consumed, `depth` chunks queued and the one being read when the consumer left
    assert items.read <= 10 * 4
