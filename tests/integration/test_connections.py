"""The server's event loop (scitq_app/connections.py): a real waitress server on loopback, run by
`create_server` as `scitq server` runs it, and real sockets. A turn asks only the busy
connections, and nothing waitress's own loop did is lost: idle connections answered when they
speak again, pipelined requests, 100-continue, large answers to slow readers, idle timeouts,
file descriptors reused, clients gone mid-request, many at once."""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from waitress.channel import HTTPChannel

from scitq_app.connections import Connections, create_server

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the epoll loop is Linux's")

BIG = 8 * 1024 * 1024
SLOW_STARTED = threading.Event()  # set when the app starts serving /slow


def app(environ: dict, start_response: Any) -> list[bytes]:
    """/echo answers the body; /big 8 MB; /slow after 0.3 s; /none 204; else the path."""
    path = environ["PATH_INFO"]
    if path == "/none":
        start_response("204 No Content", [])
        return []
    if path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    elif path == "/big":
        body = b"x" * BIG
    else:
        if path == "/slow":
            SLOW_STARTED.set()
            time.sleep(0.3)
        body = path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Running:
    def __init__(self, **kw: Any) -> None:
        self.connections = Connections(sweep=kw.pop("sweep", 1.0))
        kw.setdefault("connection_limit", 1000)
        self.server = create_server(app, self.connections, host="127.0.0.1", port=0, threads=4, **kw)
        self.port = self.server.effective_port
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        from waitress import wasyncore

        for s in self.clients:
            s.close()
        # in the loop's own thread, as waitress closes its map when it stops
        self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.connections))
        self.thread.join(10)
        self.server.task_dispatcher.shutdown()
        assert not self.thread.is_alive(), "the loop did not end when its map was emptied"

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.append(s)
        return s


@pytest.fixture
def running(request: Any) -> Iterator[Running]:
    r = Running(**getattr(request, "param", {}))
    try:
        yield r
    finally:
        r.stop()


def request_bytes(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def read_response(s: socket.socket, buf: bytearray | None = None) -> bytes:
    """One response's body (Content-Length framed); `buf` carries bytes read past it."""
    buf = buf if buf is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"the server closed the connection before a response: {bytes(buf)!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    body = bytearray(rest)
    while len(body) < length:
        chunk = s.recv(1 << 20)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    buf[:] = body[length:]
    return bytes(body[:length])


def ask(s: socket.socket, path: str, body: bytes = b"") -> bytes:
    s.sendall(request_bytes(path, body))
    return read_response(s)


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("running", [{"sweep": 3600.0}], indirect=True)
def test_a_turn_asks_only_the_busy_connections_however_many_are_idle(running: Running) -> None:
    idle = [running.connect() for _ in range(300)]
    for s in idle:  # each has served a request, then stays open and idle
        assert ask(s, "/hello") == b"/hello"
    talker = running.connect()
    turns, asked = running.connections.turns, running.connections.asked
    for i in range(100):
        assert ask(talker, f"/r{i}") == f"/r{i}".encode()
    turns = running.connections.turns - turns
    asked = running.connections.asked - asked
    assert len(running.connections) >= 302  # the 301 connections, the listener, the trigger
    assert turns >= 100
    # the listener, the trigger and the one talking connection: never the 300 idle ones
    assert asked <= 4 * turns, f"{asked} connections asked in {turns} turns"


@pytest.mark.parametrize("running", [{"sweep": 3600.0}], indirect=True)
def test_an_idle_connection_is_answered_when_it_speaks_again(running: Running) -> None:
    quiet, talker = running.connect(), running.connect()
    assert ask(quiet, "/first") == b"/first"
    for i in range(50):  # many turns go by without it
        assert ask(talker, f"/t{i}") == f"/t{i}".encode()
    assert ask(quiet, "/again") == b"/again"


def test_pipelined_requests_on_one_connection_are_all_answered(running: Running) -> None:
    s = running.connect()
    s.sendall(b"".join(request_bytes(f"/p{i}") for i in range(5)))
    buf = bytearray()
    assert [read_response(s, buf) for _ in range(5)] == [f"/p{i}".encode() for i in range(5)]


@pytest.mark.parametrize("running", [{"sweep": 3600.0}], indirect=True)
def test_a_request_sent_while_the_one_before_is_served_is_answered_after_it(running: Running) -> None:
    s = running.connect()
    SLOW_STARTED.clear()
    s.sendall(request_bytes("/slow"))
    assert SLOW_STARTED.wait(10)  # the first is being served (0.3 s): the second arrives meanwhile, and waits
    s.sendall(request_bytes("/next"))
    buf = bytearray()
    assert [read_response(s, buf), read_response(s, buf)] == [b"/slow", b"/next"]
    assert ask(s, "/then") == b"/then"


def test_a_request_that_expects_100_continue_gets_it_then_its_answer(running: Running) -> None:
    s = running.connect()
    body = b"y" * 5000
    s.sendall(request_bytes("/echo", b"", "Expect: 100-continue\r\n").replace(b"Content-Length: 0",
                                                                               b"Content-Length: 5000"))
    interim = s.recv(4096)
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    s.sendall(body)
    assert read_response(s, bytearray(interim.partition(b"\r\n\r\n")[2])) == body


def test_a_large_answer_reaches_a_reader_that_reads_late(running: Running) -> None:
    s, other = running.connect(), running.connect()
    s.sendall(request_bytes("/big"))
    for i in range(20):  # the big answer waits in the server's buffers while others are served
        assert ask(other, f"/o{i}") == f"/o{i}".encode()
    assert read_response(s) == b"x" * BIG
    assert ask(s, "/after") == b"/after"


@pytest.mark.parametrize("running", [{"channel_timeout": 1, "cleanup_interval": 1, "sweep": 0.2}],
                         indirect=True)
def test_a_connection_idle_past_the_channel_timeout_is_closed(running: Running) -> None:
    s = running.connect()
    assert ask(s, "/once") == b"/once"
    s.settimeout(15)
    assert s.recv(10) == b"", "the server answered instead of closing"
    wait_until(lambda: len(running.connections) == 2)  # the listener and the trigger


def test_file_descriptors_reused_by_new_connections_are_served(running: Running) -> None:
    base = len(running.connections)
    for i in range(200):  # one at a time: each new socket takes the file descriptor just freed
        s = running.connect()
        assert ask(s, f"/n{i}") == f"/n{i}".encode()
        s.close()
    wait_until(lambda: len(running.connections) == base)
    # what epoll holds is exactly what the map holds, no stale registration of a closed socket
    assert set(running.connections._flags) <= set(running.connections)


def test_a_client_gone_mid_request_leaves_nothing_behind(running: Running) -> None:
    base = len(running.connections)
    s = running.connect()
    s.sendall(request_bytes("/slow"))
    s.close()
    wait_until(lambda: len(running.connections) == base)
    other = running.connect()
    assert ask(other, "/still") == b"/still"


def test_many_clients_at_once_each_get_their_own_answers(running: Running) -> None:
    failures: list[str] = []

    def client(k: int) -> None:
        try:
            s = running.connect()
            for i in range(20):
                path = "/slow" if i % 10 == 0 else f"/c{k}-{i}"
                if ask(s, path) != path.encode():
                    failures.append(f"{k} {i}")
            s.close()
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{k}: {e!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []


def test_a_small_reply_goes_out_in_one_write_and_a_large_one_as_waitress_sends_it(
        running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    write_soon = HTTPChannel.write_soon

    def spy(self: HTTPChannel, data: bytes) -> int:
        writes.append(data)
        return write_soon(self, data)
    monkeypatch.setattr(HTTPChannel, "write_soon", spy)
    s = running.connect()
    assert ask(s, "/hello") == b"/hello"
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n/hello")
    writes.clear()
    s.sendall(request_bytes("/none"))
    head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 204") and head.endswith(b"\r\n\r\n")
    assert [w.split(b"\r\n")[0] for w in writes] == [b"HTTP/1.1 204 No Content"]  # a header alone
    writes.clear()
    s = running.connect()
    s.sendall(request_bytes("/big"))
    assert read_response(s) == b"x" * BIG
    assert len(writes) == 2 and writes[0].startswith(b"HTTP/1.1 200") and writes[1] == b"x" * BIG
