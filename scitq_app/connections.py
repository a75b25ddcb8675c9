"""The server's connections, and the event loop waitress serves them in.

waitress's own loop (`wasyncore.poll2`) asks every open connection whether it wants to read or
write, and registers it in a new poll set, at every turn: a turn or two per request, so the
server's CPU per request grows with the connections held open. A fleet's workers each hold a few
keep-alive connections that are idle nearly all the time; measured on a 2-core VM, 2,500 idle
connections made a heartbeat cost 3.9 ms of server CPU instead of 0.57 ms (bench/connections.py).

`create_server` makes a waitress server whose socket map is a `Connections`: the map (fd ->
dispatcher) and the loop over it. It keeps one epoll set from turn to turn, and at each turn asks
only the connections that may have changed since the last: those that had an event, new ones, and
busy ones (a request in part received, queued or being served, output to send, closing); the task
threads change only busy ones. An idle connection stays registered for reading until it has an
event, so a turn costs O(busy connections), not O(open ones). Once a `sweep` (1 s) every
connection is asked again, which catches what changes an idle one from outside (waitress's
maintenance marks those idle past `channel_timeout` to close).

Linux only (epoll): elsewhere `create_server` leaves waitress its own loop.
"""
from __future__ import annotations

import json
import select
import time
from typing import Any, Callable

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, WSGITask

from .errors import BadRequest, TooLarge

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_TROUBLE = select.POLLERR | select.POLLHUP | select.POLLNVAL
_GATHER = 1 << 16  # a first piece of body up to this size goes out with the header


def _wants(obj: Any) -> int:
    """What a dispatcher wants polled for now, as `wasyncore.poll2` asks it."""
    flags = _READ if obj.readable() else 0
    if obj.writable() and not obj.accepting:
        flags |= _WRITE
    return flags


class Connections(dict[int, Any]):
    """waitress's socket map (fd -> its dispatcher: listener, trigger, connections), polled with
    epoll by `loop`, which the server's `run` calls (see `create_server`)."""

    def __init__(self, sweep: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.sweep = sweep
        self.clock = clock
        self._epoll = select.epoll()
        self._flags: dict[int, int] = {}  # what each fd is registered for (absent: not registered)
        self._came: set[int] = set()      # fds added since the last turn
        self._busy: set[int] = set()      # fds to ask again at the next turn
        self._sweep_at = float("-inf")
        self.turns = 0
        self.asked = 0                    # connections asked, all turns together

    # --- the map: waitress adds its dispatchers (`map[fd] = ...`), removes them (`del map[fd]`) and
    # empties it when it stops (`clear`); it uses no other way to change it ---------------------------
    def __setitem__(self, fd: int, obj: Any) -> None:
        super().__setitem__(fd, obj)
        self._came.add(fd)

    def __delitem__(self, fd: int) -> None:
        # before the socket is closed (wasyncore's close deletes, then closes): the fd is still ours
        super().__delitem__(fd)
        self._forget(fd)

    def clear(self) -> None:
        for fd in list(self):
            self._forget(fd)
        super().clear()

    # --- the loop ---------------------------------------------------------------------------------
    def loop(self, timeout: float) -> None:
        """Turn until the map is empty (waitress closes every dispatcher when it stops)."""
        try:
            while self:
                self.turn(timeout)
        finally:
            self._epoll.close()

    def turn(self, timeout: float) -> None:
        """Ask the connections that may have changed what they want, wait up to `timeout` s for
        an event, and handle the events (as `wasyncore.poll2` does for each)."""
        now = self.clock()
        came, self._came = self._came, set()
        if now >= self._sweep_at:
            self._sweep_at = now + self.sweep
            ask: Any = list(self)
        else:
            ask = self._busy | came
        busy = set()
        for fd in ask:
            obj = self.get(fd)
            if obj is None:
                self._forget(fd)
                continue
            flags = _wants(obj)
            if flags or self._flags.get(fd) != _READ:
                # A connection that stops reading while its request is served keeps its read
                # registration (two epoll_ctl calls fewer a request); an event it gets meanwhile
                # is dropped below, and only then is it unregistered.
                self._register(fd, flags)
            if not (flags == _READ and isinstance(obj, HTTPChannel) and obj.request is None and not obj.requests):
                busy.add(fd)  # a listener, the trigger, or a connection not idle: asked every turn
        self.turns += 1
        self.asked += len(ask)
        self._busy = busy
        try:
            events = self._epoll.poll(max(0.0, min(timeout, self._sweep_at - now)))
        except InterruptedError:  # pragma: no cover - Python retries EINTR itself since 3.5
            events = []
        for fd, flags in events:
            obj = self.get(fd)
            if obj is None:
                continue
            busy.add(fd)
            wants = _wants(obj)
            if not wants:  # a kept read registration (above): what waitress's loop would not poll
                self._register(fd, 0)
                continue
            wasyncore.readwrite(obj, flags & (wants | _TROUBLE))

    def _register(self, fd: int, flags: int) -> None:
        old = self._flags.get(fd, 0)
        if flags == old:
            return
        try:
            if not flags:
                self._epoll.unregister(fd)
            elif old:
                self._epoll.modify(fd, flags)
            else:
                self._epoll.register(fd, flags)
        except FileNotFoundError:  # its earlier socket was closed under it: epoll forgot it then
            if flags:
                self._epoll.register(fd, flags)
        except FileExistsError:  # pragma: no cover - registered by a socket this map never saw go
            self._epoll.modify(fd, flags)
        if flags:
            self._flags[fd] = flags
        else:
            self._flags.pop(fd, None)

    def _forget(self, fd: int) -> None:
        self._busy.discard(fd)
        if self._flags.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (ValueError, OSError):
                pass  # closed already (epoll drops a closed fd itself), or the loop closed


class OneSendTask(WSGITask):
    """waitress's WSGI task, but a reply's header goes out with the first piece of its body, in
    one write: waitress writes them apart, and its task threads send each write at once (two
    system calls and two packets for every small reply)."""

    def write(self, data: bytes) -> None:
        if self.wrote_header or not data or len(data) > _GATHER:
            super().write(data)
            return
        channel = self.channel
        channel.gathered = []
        try:
            super().write(data)
        finally:
            parts, channel.gathered = channel.gathered, None
        if parts:
            channel.write_soon(b"".join(parts))


class JsonErrorTask(ErrorTask):
    """Answers the errors waitress raises itself (body over max_body, bad chunking, oversized
    headers) in JSON, like every other error of the API."""

    def execute(self) -> None:
        e = self.request.error
        kind = {400: BadRequest.kind, 431: BadRequest.kind, 413: TooLarge.kind}.get(e.code, "http")
        body = json.dumps({"error": kind, "detail": f"{e.reason}: {e.body}"}).encode("utf-8")
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Channel(HTTPChannel):
    """waitress's connection, whose writes a `OneSendTask` can gather into one, and whose
    own errors are answered in JSON."""

    task_class = OneSendTask
    error_task_class = JsonErrorTask
    gathered: list[bytes] | None = None

    def write_soon(self, data: Any) -> int:
        if self.gathered is not None and isinstance(data, bytes):
            self.gathered.append(data)
            return len(data)
        return int(super().write_soon(data))


class _Asyncore:
    """What a waitress server calls as `self.asyncore.loop(...)` in `run`."""

    dispatcher = wasyncore.dispatcher

    @staticmethod
    def loop(timeout: float = 30.0, use_poll: bool = False, map: Any = None, count: Any = None) -> None:
        if isinstance(map, Connections) and count is None:
            map.loop(timeout)
        else:
            wasyncore.loop(timeout=timeout, use_poll=use_poll, map=map, count=count)


def create_server(app: Any, connections: Connections | None = None, **kw: Any) -> Any:
    """`waitress.create_server(app, **kw)` with `Channel` connections, its `run` looping over
    `connections` (a new map when None) where the system has epoll, else waitress's own loop."""
    import waitress

    if connections is None and hasattr(select, "epoll"):
        connections = Connections()
    server = waitress.create_server(app, map=connections, **kw)
    server.channel_class = Channel
    if connections is not None:
        server.asyncore = _Asyncore
    return server
