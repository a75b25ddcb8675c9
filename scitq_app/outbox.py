"""What a worker owes the server, kept safe until the server has it.

Two kinds of messages leave a worker: reports (small, must all arrive, in
order) and output (possibly huge, only the head and tail are kept by the
server). Reports go to a `Journal` on disk, so they survive a server outage
and a worker restart. Output is never copied into memory or a queue: each
stream is a log file in the execution's work dir and a `StreamShipper`
remembers how far the server has it, cutting the middle of a huge log the
way the server would. The `Outbox` gathers both into ordered batches: a
stream's bytes always travel before the report that ends its execution.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024


RESERVE_BYTES = 1 << 20  # room kept for reports when the disk fills (a report is ~1 KB)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Journal:
    """An append-only, ordered, durable queue of JSON items with a cursor.

    Items live in segment files `NNNNNNNNNNNN.jsonl` named after their first
    sequence number; `acked` holds the last sequence the server confirmed.
    A torn last line (crash while writing) is dropped at open."""

    def __init__(self, directory: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = directory
        self.clock = clock
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self.reserve_path = os.path.join(directory, "reserve")
        self._reserve_tried = 0.0
        self.degraded = False  # an item could not be written even after freeing the reserve
        self._acked = self._read_acked()
        self._items: list[tuple[int, dict]] = []  # unacked items, in order (reports are small)
        self._next = self._acked + 1
        self._load()
        self._segment: str | None = None
        self._segment_size = 0
        self._cursor_written = 0.0
        self.keep_reserve()

    def keep_reserve(self) -> None:
        """Hold RESERVE_BYTES of disk in a file, given up when the disk is full so that the reports
        of finished tasks can still be written; made again (at most every 10 s) once there is room."""
        now = self.clock()
        if os.path.exists(self.reserve_path) or now - self._reserve_tried < 10.0:
            return
        self._reserve_tried = now
        try:
            with open(self.reserve_path + ".tmp", "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.reserve_path + ".tmp", self.reserve_path)
        except OSError:
            try:
                os.unlink(self.reserve_path + ".tmp")
            except OSError:
                pass

    def _read_acked(self) -> int:
        try:
            with open(os.path.join(self.dir, "acked"), encoding="utf-8") as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _segments(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".jsonl"))

    def _load(self) -> None:
        for name in self._segments():
            path = os.path.join(self.dir, name)
            good = 0
            with open(path, "rb") as f:
                data = f.read()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    break
                good += len(line)
                seq = int(entry["seq"])
                self._next = max(self._next, seq + 1)
                if seq > self._acked:
                    self._items.append((seq, entry["item"]))
            if good < len(data):
                log.warning("journal %s: dropping a torn record at its end", path)
                with open(path, "r+b") as f:
                    f.truncate(good)

    def put(self, item: dict) -> int:
        """Append an item durably; return its sequence number."""
        with self._lock:
            seq = self._next
            self._next += 1
            line = (json.dumps({"seq": seq, "item": item}, separators=(",", ":")) + "\n").encode("utf-8")
            if self._segment is None or self._segment_size + len(line) > SEGMENT_BYTES:
                self._segment = os.path.join(self.dir, f"{seq:012d}.jsonl")
                self._segment_size = 0
            # Written through to the OS (survives the worker process dying) but not
            # fsynced: if the machine itself dies, its executions are lost and
            # requeued anyway, so a per-report fsync would buy nothing.
            try:
                self._append(line)
            except OSError as e:
                # a full disk: give up the reserve and try again; if even that fails the item is
                # still delivered from memory, only not kept across a worker restart
                log.warning("journal: %s writing %s; using the reserve", e.strerror or e, self._segment)
                try:
                    os.unlink(self.reserve_path)
                except OSError:
                    pass
                self._reserve_tried = self.clock()
                try:
                    self._append(line)
                except OSError as again:
                    self.degraded = True
                    log.error("journal: %s even after freeing the reserve: report %s kept in memory only",
                              again.strerror or again, seq)
            self._items.append((seq, item))
            return seq

    def _append(self, line: bytes) -> None:
        assert self._segment is not None
        fd = os.open(self._segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(line)
            while view:  # a write may be short when the disk fills
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, self._segment_size)  # no torn line for the next append to follow
            raise
        finally:
            os.close(fd)
        self._segment_size += len(line)

    def pending(self, limit: int = 1000) -> list[tuple[int, dict]]:
        with self._lock:
            return list(self._items[:limit])

    def __len__(self) -> int:
        return len(self._items)

    def ack(self, upto: int) -> None:
        """The server has every item up to `upto`: forget them.

        The cursor file is rewritten at most once a second: replaying a few
        acknowledged reports after a crash is harmless (reports are idempotent)."""
        with self._lock:
            if upto <= self._acked:
                return
            self._acked = upto
            self._items = [(s, i) for s, i in self._items if s > upto]
            now = time.monotonic()
            if now - self._cursor_written < 1.0 and self._items:
                return
            self._cursor_written = now
            try:
                _atomic_write(os.path.join(self.dir, "acked"), str(upto))
            except OSError as e:  # a full disk: a later ack writes it (replays are harmless)
                log.warning("journal: cannot save the cursor: %s", e.strerror or e)
                return
            current = os.path.basename(self._segment) if self._segment else None
            segments = self._segments()
            # A segment can go once the next one starts after the cursor.
            for name, following in zip(segments, segments[1:] + [None]):
                if name == current:
                    break
                first_of_next = int(following[:-6]) if following else self._next
                if first_of_next - 1 <= upto:
                    os.unlink(os.path.join(self.dir, name))


class StreamShipper:
    """Ships one output stream from its log file, bounded by the server's caps.

    The server keeps the first `head` bytes and the last `tail` bytes of a
    stream; everything between is cut. So once past the head, when more than
    `tail` bytes wait, the shipper jumps forward and sends only the last
    `tail` bytes: memory and bandwidth stay bounded whatever the task prints."""

    def __init__(self, execution_id: int, stream: str, path: str, head: int, tail: int) -> None:
        self.execution_id = execution_id
        self.stream = stream
        self.path = path
        self.head = head
        self.tail = max(tail, 1)
        # The server has everything it keeps below this offset. After a worker
        # restart it starts at 0 again: appends are idempotent by offset.
        self.shipped = 0
        self.final_size: int | None = None
        self.final_sent = False
        self.memo = b""  # worker notes the log file had no room for: shipped after it

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def note(self, text: str) -> None:
        """Add a worker's note at the end of the stream: in its log file, or, when the file cannot
        take it (a full disk), in memory, shipped after the file's content."""
        data = text.encode("utf-8", "replace")
        if not self.memo:
            try:
                with open(self.path, "ab") as f:
                    f.write(data)
                return
            except OSError:
                pass
        self.memo += data

    def finish(self) -> None:
        """The process ended: the log will not grow any more."""
        self.final_size = self.size() + len(self.memo)

    def done(self) -> bool:
        return self.final_size is not None and self.final_sent

    def next_items(self, budget: int) -> list[dict]:
        """Output items for what the server does not have yet (at most ~budget bytes)."""
        size = self.final_size if self.final_size is not None else self.size()
        items: list[dict] = []
        pos = self.shipped
        if pos < size:
            with open(self.path, "rb") as f:
                in_file = size - len(self.memo) if self.final_size is not None else size
                while pos < size and budget > 0:
                    if pos >= self.head and size - pos > self.tail:
                        pos = size - self.tail  # the server would cut this part anyway
                    end = min(size, pos + budget, self.head if pos < self.head else size)
                    if pos >= in_file:
                        data = self.memo[pos - in_file:end - in_file]
                    else:
                        f.seek(pos)
                        data = f.read(min(end, in_file) - pos)
                    if not data:
                        break
                    items.append(self._item(pos, data, False))
                    budget -= len(data)
                    pos += len(data)
        if self.final_size is not None and pos >= size and not self.final_sent:
            if items:
                items[-1]["body"]["final"] = True
            elif size == 0:
                self.final_sent = True  # an empty stream: nothing to tell the server
            else:
                items.append(self._item(size, b"", True))
        return items

    def _item(self, offset: int, data: bytes, final: bool) -> dict:
        return {"type": "output", "execution_id": self.execution_id,
                "body": {"stream": self.stream, "offset": offset, "data": base64.b64encode(data).decode("ascii"),
                         "final": final}}

    def delivered(self, item: dict) -> None:
        body = item["body"]
        end = body["offset"] + len(base64.b64decode(body["data"]))
        self.shipped = max(self.shipped, end)
        if body.get("final"):
            self.final_sent = True


class Outbox:
    """Orders and delivers a worker's reports and output.

    `flush(send)` builds one batch — output first, then reports whose
    execution's streams are complete — calls `send(items)` (which returns one
    result per item, or raises when the server cannot be reached) and records
    what was delivered. Items the server refuses for good (409 fenced, 404,
    403) are dropped and their execution ids passed to `on_refused`."""

    def __init__(self, directory: str, on_refused: Callable[[int, dict], None] | None = None,
                 batch_bytes: int = 1024 * 1024) -> None:
        self.journal = Journal(os.path.join(directory, "journal"))
        self.on_refused = on_refused or (lambda execution_id, result: None)
        self.batch_bytes = batch_bytes
        self._shippers: dict[tuple[int, str], StreamShipper] = {}
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._flush_lock = threading.Lock()

    # --- producers ----------------------------------------------------------
    def report(self, execution_id: int, body: dict) -> None:
        self.journal.put({"type": "report", "execution_id": execution_id, "body": body})
        self._event.set()

    def add_stream(self, shipper: StreamShipper) -> None:
        with self._lock:
            self._shippers[(shipper.execution_id, shipper.stream)] = shipper

    def drop_execution(self, execution_id: int) -> None:
        with self._lock:
            for key in [k for k in self._shippers if k[0] == execution_id]:
                del self._shippers[key]

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float, gather: float = 0.02) -> None:
        """Sleep until something is queued (or `timeout`), then a little more so
        that what arrives together leaves in one request."""
        if self._event.wait(timeout):
            time.sleep(gather)
        self._event.clear()

    def idle(self) -> bool:
        with self._lock:
            shipping = any(not s.done() for s in self._shippers.values())
        return not shipping and len(self.journal) == 0

    def streams_of(self, execution_id: int) -> list[StreamShipper]:
        with self._lock:
            return [s for (e, _), s in self._shippers.items() if e == execution_id]

    # --- delivery -----------------------------------------------------------
    def _batch(self) -> tuple[list[dict], list[Any]]:
        items: list[dict] = []
        owners: list[Any] = []
        budget = self.batch_bytes
        with self._lock:
            shippers = list(self._shippers.values())
        for s in shippers:
            if s.done() or budget <= 0:
                continue
            for item in s.next_items(min(budget, s.head + s.tail)):
                items.append(item)
                owners.append(s)
                budget -= len(item["body"]["data"]) * 3 // 4
        finals = {(i["execution_id"], i["body"]["stream"]) for i in items if i["body"].get("final")}
        for seq, item in self.journal.pending():
            if item["type"] == "report" and item["body"].get("phase") in ("succeeded", "failed"):
                # An ending report travels only with or after the end of its streams.
                if any(not s.done() and (s.execution_id, s.stream) not in finals
                       for s in self.streams_of(item["execution_id"])):
                    break
            items.append(item)
            owners.append(seq)
        return items, owners

    def flush(self, send: Callable[[list[dict]], list[dict]]) -> int:
        """Deliver one batch; return the number of items the server took (or refused for good)."""
        with self._flush_lock:
            items, owners = self._batch()
            if not items:
                return 0
            results = send(items)
            last_seq = None
            for item, owner, result in zip(items, owners, results):
                if not result.get("ok") and result.get("status") not in (403, 404, 409, 422):
                    break  # keep order: retry from here next time
                if not result.get("ok"):
                    log.warning("server refused %s for execution %s: %s", item["type"], item["execution_id"],
                                result.get("detail"))
                    self.on_refused(item["execution_id"], result)
                    self.drop_execution(item["execution_id"])
                if isinstance(owner, StreamShipper):
                    owner.delivered(item)
                else:
                    last_seq = owner
            if last_seq is not None:
                self.journal.ack(last_seq)
            with self._lock:
                for key in [k for k, s in self._shippers.items() if s.done()]:
                    del self._shippers[key]
            return len(items)

    def executions_with_pending(self) -> set[int]:
        ids = {item["execution_id"] for _, item in self.journal.pending(100_000)}
        with self._lock:
            ids.update(e for (e, _), s in self._shippers.items() if not s.done())
        return ids

