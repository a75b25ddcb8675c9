"""Chunks of an iterable read ahead in a thread of their own.

A bulk request's tasks are validated as they are read (schema.LazyItems): reading the next
chunk in another thread lets that Python work run while the store's thread waits for the
database to insert the chunk before (PostgreSQL works in a process of its own, and the
driver's wait on its socket releases the GIL).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate over `items` in lists of `size`, at most `depth` lists ahead of the consumer.

    `each`, if given, is called on every item in order, in the reading thread (e.g. a digest
    of the request). An exception raised by the iteration (or by `each`) is raised to the
    consumer where its chunk would have been, after the chunks read before it. Use it as a
    context manager: leaving early (the consumer failed) stops the reading thread. Items that
    fit in one chunk are read in the consumer's thread: there is nothing to overlap."""

    def __init__(self, items: Sequence[T], size: int, depth: int = 2,
                 each: Callable[[T], None] | None = None) -> None:
        self._items, self._size, self._each = items, size, each
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="scitq-readahead", daemon=True)
        self._started = False

    def __enter__(self) -> "ReadAhead[T]":
        if len(self._items) > self._size:
            self._thread.start()
            self._started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading (if not done) and wait for the reading thread to end."""
        self._stop.set()
        if not self._started:
            return
        while self._thread.is_alive():
            try:  # a reader blocked on a full queue: make room so it sees the stop
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._started = False

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        chunk: list[T] = []
        try:
            for item in self._items:
                if self._each is not None:
                    self._each(item)
                chunk.append(item)
                if len(chunk) == self._size:
                    if not self._put(chunk):
                        return
                    chunk = []
                if self._stop.is_set():
                    return
            if chunk and not self._put(chunk):
                return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised in its thread
            self._put(_Failed(e))

    def __iter__(self) -> Iterator[list[T]]:
        if not self._started:
            chunk = list(self._items)
            if self._each is not None:
                for item in chunk:
                    self._each(item)
            if chunk:
                yield chunk
            return
        while True:
            value = self._queue.get()
            if value is _END:
                return
            if isinstance(value, _Failed):
                raise value.error
            yield value
