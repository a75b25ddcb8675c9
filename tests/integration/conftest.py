"""Shared fixtures of the integration suite: real `scitq server` subprocesses on
real databases (SQLite files and the session's PostgreSQL), a CLI runner that
starts `python -m scitq_app` as a subprocess, and HTTP helpers.

Servers are started through `servers` (stopped when the test ends) or
`module_servers` (stopped when the module ends, for tests that can share one).
"""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Iterator

import pytest

from tests.conftest import _pg_run, no_postgres
from tests.support.processes import ROOT, ServerProcess, api, scitq_env, wait_for  # noqa: F401 (wait_for: for the tests here)

PREFIX = "/api/v1"


def unique(prefix: str = "b") -> str:
    """A name no other test uses (batch names, worker names, token names)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_error(reply: tuple[int, Any], status: int, kind: str | None = None) -> dict:
    """The reply is an HTTP error `status` with a JSON body {error, detail[, data]}."""
    code, body = reply
    assert code == status, f"expected HTTP {status}, got {code}: {body!r}"
    assert_error_body(body)
    if kind is not None:
        assert body["error"] == kind, body
    return body


def assert_error_body(body: Any) -> None:
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    assert {"error", "detail"} <= set(body) <= {"error", "detail", "data"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    if "data" in body:
        assert isinstance(body["data"], dict), body




# --- databases -------------------------------------------------------------------

class Databases:
    """Creates empty databases of either backend and drops the PostgreSQL ones at the end."""

    def __init__(self, tmpdir: str, pg_admin_dsn: str | None) -> None:
        self.tmpdir = tmpdir
        self.pg_admin_dsn = pg_admin_dsn
        self.created: list[str] = []

    def new(self, backend: str) -> str:
        if backend == "sqlite":
            path = tempfile.mkdtemp(prefix="db-", dir=self.tmpdir)
            return f"sqlite:///{path}/scitq.db"
        if self.pg_admin_dsn is None:
            no_postgres()
        name = "scitq_it_" + uuid.uuid4().hex[:12]
        _pg_run(self.pg_admin_dsn, f"CREATE DATABASE {name}")
        self.created.append(name)
        return f"{self.pg_admin_dsn.rsplit('/', 1)[0]}/{name}"

    def drop_all(self) -> None:
        for name in self.created:
            try:
                _pg_run(self.pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        self.created.clear()


@pytest.fixture(scope="session")
def databases(tmp_path_factory, pg_admin_dsn) -> Iterator[Databases]:
    dbs = Databases(str(tmp_path_factory.mktemp("databases")), pg_admin_dsn)
    yield dbs
    dbs.drop_all()


def prepare_database(url: str, tokens: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """Initialise the schema and create people tokens directly in the database
    (setup only; the token CLI itself is tested in test_cli/test_auth)."""
    from scitq_app.store import open_store
    store = open_store(url)
    try:
        if store.schema_status()["current"] == 0:
            store.init_schema()
        return {name: store.create_token(name, role, actor="test")[1] for name, role in tokens}
    finally:
        store.close()


# --- servers -----------------------------------------------------------------------

class Srv:
    """A running `scitq server` subprocess and the tokens made for it."""

    def __init__(self, proc: ServerProcess, backend: str, tokens: dict[str, str]) -> None:
        self.proc = proc
        self.backend = backend
        self.database = proc.database
        self.tokens = tokens
        self.admin = tokens.get("admin")

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def api_url(self) -> str:
        return self.proc.url + PREFIX

    def call(self, method: str, path: str, body: Any = None, token: Any = "admin", **kw: Any) -> tuple[int, Any]:
        """An API call (path relative to /api/v1) with the admin token unless told otherwise
        (token=None sends none)."""
        if token == "admin":
            token = self.admin
        return api(self.api_url, method, path, body, token, **kw)

    def ok(self, method: str, path: str, body: Any = None, token: Any = "admin", status: int | None = None) -> Any:
        code, reply = self.call(method, path, body, token)
        expected = status or (201 if method == "POST" and path in ("/tasks", "/tasks/bulk", "/batches",
                                                                     "/workers/register", "/tokens") else 200)
        assert code == expected, f"{method} {path} -> {code} {reply!r}\n--- server log ---\n{self.proc.log()[-3000:]}"
        return reply

    # --- worker protocol shortcuts ----------------------------------------------
    def register(self, name: str | None = None, **fields: Any) -> tuple[int, str]:
        reply = self.ok("POST", "/workers/register", {"name": name or unique("w"), **fields})
        return reply["worker"]["id"], reply["token"]

    def log(self) -> str:
        return self.proc.log()


class ServerPool:
    def __init__(self, databases: Databases, workdir: str) -> None:
        self.databases = databases
        self.workdir = workdir
        self.running: list[ServerProcess] = []

    def start(self, backend: str = "sqlite", *, tokens: tuple[tuple[str, str], ...] = (("admin", "admin"),),
              env: dict[str, str] | None = None, args: list[str] | None = None, database: str | None = None,
              listen: str = "127.0.0.1") -> Srv:
        url = database or self.databases.new(backend)
        secrets = prepare_database(url, tokens)
        workdir = tempfile.mkdtemp(prefix="srv-", dir=self.workdir)
        proc = ServerProcess(url, workdir, listen=listen, env=env, args=args)
        self.running.append(proc)
        proc.start()
        return Srv(proc, backend, secrets)

    def stop_all(self) -> None:
        for p in self.running:
            p.stop()
        self.running.clear()


@pytest.fixture(scope="module")
def module_servers(databases, tmp_path_factory) -> Iterator[ServerPool]:
    pool = ServerPool(databases, str(tmp_path_factory.mktemp("servers")))
    yield pool
    pool.stop_all()


@pytest.fixture
def servers(databases, tmp_path) -> Iterator[ServerPool]:
    pool = ServerPool(databases, str(tmp_path))
    yield pool
    pool.stop_all()


# --- the CLI as a subprocess ---------------------------------------------------------

class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self) -> str:
        return f"<exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}>"

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    def json(self) -> Any:
        return json.loads(self.out)


def cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 60,
        stdin: str | None = None) -> CliResult:
    """Run `python -m scitq_app ARGS...` in a subprocess with a clean SCITQ_* environment."""
    proc = subprocess.run([sys.executable, "-m", "scitq_app", *args], env=scitq_env(**(env or {})),
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, input=stdin)
    return CliResult(proc)


# --- a keep-alive HTTP client for request-heavy tests ----------------------------------

class RawClient:
    """One keep-alive connection; sends exactly the bytes and headers given."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, data, hdrs
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
