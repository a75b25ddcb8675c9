"""`scitq server` starts in the right order and says why it cannot: the port is bound before
the database is touched, and an unreachable database is one line with its host, port and
the cause in words. Real processes, real sockets."""
from __future__ import annotations

import os
import socket

from tests.integration.conftest import cli


def test_a_busy_port_fails_before_the_database_is_created(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        r = cli("server", "--port", str(port), "--database", f"sqlite:///{tmp_path}/scitq.db", cwd=str(tmp_path))
    finally:
        busy.close()
    assert r.code == 2 and r.err_lines == [f"scitq: cannot listen on 127.0.0.1:{port}: Address already in use"], r
    assert os.listdir(tmp_path) == [], "no database, no admin token file"


def test_an_unreachable_postgresql_is_one_line_with_host_port_and_cause(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there any more
    r = cli("db", "status", "--database", f"postgresql://scitq:pw@127.0.0.1:{port}/scitq", cwd=str(tmp_path))
    assert r.code == 3 and r.err_lines == [
        f"scitq: cannot connect to PostgreSQL at 127.0.0.1:{port}/scitq: connection refused "
        "(is PostgreSQL running and listening on that port?)"], r
    r = cli("db", "status", "--database", "postgresql://scitq:pw@no-such-host.invalid:5432/scitq", cwd=str(tmp_path))
    assert r.code == 3 and r.err_lines == [
        "scitq: cannot connect to PostgreSQL at no-such-host.invalid:5432/scitq: unknown host name"], r


def test_the_server_stops_at_an_unreachable_database_and_frees_its_port(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    r = cli("server", "--port", str(port), "--database", "postgresql://scitq:pw@no-such-host.invalid:5432/scitq",
            cwd=str(tmp_path))
    assert r.code == 3 and r.err_lines == [
        "scitq: cannot connect to PostgreSQL at no-such-host.invalid:5432/scitq: unknown host name"], r
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind(("127.0.0.1", port))  # the port it held is free again
    again.close()
