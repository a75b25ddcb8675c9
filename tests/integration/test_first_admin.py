"""No open mode: the first start on an empty database makes one admin token (even when
two servers start at once), keeps it in a 0600 file the CLI of that user finds by
itself, and nothing answers without a token — directly or through a proxy. The last
admin token cannot be revoked. Host headers naming a foreign DNS name are refused."""
from __future__ import annotations

import os
import socket
import stat
import tempfile

import pytest

from scitq_app.store import open_store
from tests.integration.conftest import assert_error, cli, unique
from tests.support.processes import ServerProcess, api, wait_http
from tests.support.proxy import ReverseProxy
from tests.support.tls import TlsProxy, make_certificate, openssl_available
from tests.support.system import need


def fresh_server(servers, databases, backend: str, env: dict[str, str] | None = None,
                 database: str | None = None) -> ServerProcess:
    """A server started on an empty database (not prepared by the test: its own first start)."""
    proc = ServerProcess(database or databases.new(backend), tempfile.mkdtemp(prefix="srv-", dir=servers.workdir),
                         env=env)
    servers.running.append(proc)
    return proc


def admin_tokens(database: str) -> list:
    store = open_store(database)
    try:
        return [t for t in store.list_tokens() if t.role == "admin"]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_first_start_keeps_its_admin_token_in_a_0600_file_and_nothing_answers_without_it(
        backend, servers, databases):
    proc = fresh_server(servers, databases, backend).start()
    st = os.stat(proc.token_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    secret = proc.admin_token
    assert secret and secret.startswith("scitq_")
    url = proc.url + "/api/v1"
    assert api(url, "GET", "/whoami", token=secret) == (200, {"name": "admin", "role": "admin", "worker_id": None})
    log = proc.log()
    assert proc.token_file in log and secret not in log and secret[6:] not in log  # where, never what
    body = {"name": unique("t"), "role": "admin"}
    assert_error(api(url, "POST", "/tokens", body), 401, "unauthorized")
    assert_error(api(url, "GET", "/tasks"), 401, "unauthorized")
    # through a reverse proxy on this host (X-Forwarded-For and the client's Host): the same
    proxy = ReverseProxy(("127.0.0.1", proc.port)).start()
    try:
        assert_error(api(proxy.url + "/api/v1", "POST", "/tokens", body), 401, "unauthorized")
        assert_error(api(proxy.url + "/api/v1", "POST", "/workers/register", {"name": "w"}), 401, "unauthorized")
        assert api(proxy.url + "/api/v1", "POST", "/tokens", body, token=secret)[0] == 201
    finally:
        proxy.stop()
    assert [t.name for t in admin_tokens(proc.database)] == ["admin", body["name"]]


def test_nothing_answers_without_a_token_through_a_tls_proxy(servers, databases, tmp_path):
    need(openssl_available(), "needs the openssl command")
    proc = fresh_server(servers, databases, "sqlite").start()
    cert, key, _ = make_certificate(str(tmp_path))
    tls = TlsProxy(cert, key, ("127.0.0.1", proc.port)).start()
    try:
        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=cert)
        req = urllib.request.Request(tls.url + "/api/v1/tokens", data=b'{"name": "x", "role": "admin"}',
                                     method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        with e.value as reply:
            assert reply.code == 401 and b"unauthorized" in reply.read()
    finally:
        tls.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_servers_started_at_once_on_an_empty_database_make_exactly_one_admin_token(
        backend, servers, databases):
    database = databases.new(backend)
    procs = [fresh_server(servers, databases, backend, database=database) for _ in range(2)]
    for p in procs:
        p.start(wait=False)
    for p in procs:
        wait_http(p.url + "/api/v1/health", proc=p.proc)
    [token] = admin_tokens(database)
    assert token.name == "admin"
    written = [p for p in procs if os.path.exists(p.token_file)]
    assert len(written) == 1, "only the server that initialised the database writes a token file"
    for p in procs:
        assert api(p.url + "/api/v1", "GET", "/whoami", token=written[0].admin_token)[0] == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_db_inits_at_once_make_exactly_one_admin_token(backend, databases, tmp_path):
    import subprocess
    import sys

    from tests.support.processes import ROOT, scitq_env
    database = databases.new(backend)
    dirs = [tmp_path / f"p{i}" for i in range(2)]
    procs = []
    for i, d in enumerate(dirs):
        d.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "scitq_app", "db", "upgrade" if i else "init"],
                                      cwd=str(d), env=scitq_env(SCITQ_SERVER_DATABASE=database,
                                                                PYTHONPATH=ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=60) for p in procs]
    assert len(admin_tokens(database)) == 1, outs
    files = [d / "admin.token" for d in dirs if (d / "admin.token").exists()]
    assert len(files) == 1, outs
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_last_admin_token_cannot_be_revoked_through_the_api_or_the_cli(backend, servers, databases):
    proc = fresh_server(servers, databases, backend).start()
    url, admin = proc.url + "/api/v1", proc.admin_token
    body = assert_error(api(url, "DELETE", "/tokens/admin", token=admin), 409, "conflict")
    assert "last admin token" in body["detail"] and "token create --role admin" in body["detail"]
    r = cli("token", "revoke", "admin", env={"SCITQ_SERVER_DATABASE": proc.database})
    assert r.code == 5 and "last admin token" in r.err, r
    assert api(url, "GET", "/whoami", token=admin)[0] == 200
    # recovery and rotation: a second admin token (the CLI, on the server host) makes the first revocable
    r = cli("token", "create", "--role", "admin", "ops", env={"SCITQ_SERVER_DATABASE": proc.database})
    assert r.code == 0, r
    ops = r.out.strip()
    assert api(url, "DELETE", "/tokens/admin", token=ops)[0] == 200
    body = assert_error(api(url, "DELETE", "/tokens/ops", token=ops), 409, "conflict")
    assert "'ops' is the last admin token" in body["detail"]
    assert_error(api(url, "GET", "/whoami", token=admin), 401, "unauthorized")


def test_a_foreign_host_name_is_refused_before_authentication_on_every_route(servers, databases):
    proc = fresh_server(servers, databases, "sqlite",
                        env={"SCITQ_SERVER_SERVER_NAMES": "scitq.example.org, Other.Example"}).start()
    url, admin = proc.url + "/api/v1", proc.admin_token
    for method, path, token in (("GET", "/health", None), ("POST", "/tokens", None), ("GET", "/tasks", admin),
                                ("GET", "/no/such/route", None)):
        body = assert_error(api(url, method, path, {} if method == "POST" else None, token=token,
                                headers={"Host": "evil.example:5000"}), 421, "misdirected")
        assert "[server] server_names" in body["detail"] and "evil.example" in body["detail"]
    for host in ("127.0.0.1", f"127.0.0.1:{proc.port}", "10.1.2.3:80", "[::1]", f"[::1]:{proc.port}", "localhost",
                 f"localhost:{proc.port}", "LOCALHOST.", "scitq.example.org", "scitq.example.org:443",
                 "other.example", socket.gethostname()):
        assert api(url, "GET", "/tasks", token=admin, headers={"Host": host})[0] == 200, host
    assert_error(api(url, "GET", "/tasks", headers={"Host": "scitq.example.org"}), 401, "unauthorized")
    assert_error(api(url, "GET", "/health", headers={"Host": "[evil.example]"}), 421, "misdirected")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_cli_of_the_servers_user_finds_its_token_with_no_configuration(host, servers, databases, tmp_path):
    home = str(tmp_path / "home")
    os.makedirs(home)
    user = {"HOME": home, "XDG_STATE_HOME": ""}  # SCITQ_CONFIG=/dev/null: nothing configured
    proc = fresh_server(servers, databases, "sqlite", env=user).start()
    entry = os.path.join(home, ".local", "state", "scitq", "servers", f"{proc.port}.json")
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600
    server = f"http://{host}:{proc.port}"
    r = cli("batch", "list", "--json", env={**user, "SCITQ_SERVER": server}, cwd=str(tmp_path))
    assert r.code == 0 and [b["name"] for b in r.json()] == ["Default"], r
    r = cli("worker", "join-token", env={**user, "SCITQ_SERVER": server}, cwd=str(tmp_path))
    assert r.code == 0 and r.out.startswith("scitq_join_"), r
    # another user (another HOME) finds nothing: 401, exit 6
    other = {"HOME": str(tmp_path), "XDG_STATE_HOME": "", "SCITQ_CLIENT_TOKEN_FILE": "/nonexistent"}
    r = cli("batch", "list", env={**other, "SCITQ_SERVER": server})
    assert r.code == 6, r
    proc.stop()
    assert not os.path.exists(entry), "a stopped server leaves no entry"
