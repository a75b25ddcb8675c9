"""Authentication and roles over real HTTP: no open mode (a first start makes an
admin token and keeps it in a 0600 file), tokens made by the CLI, admin/user/worker
permissions, revocation and the last admin token, and the Host check."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import assert_error, cli, prepare_database, unique, wait_for
from tests.support.postgres import free_port
from tests.support.processes import ServerProcess, api, scitq_env


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_token_created_with_the_cli_authenticates(backend, servers):
    srv = servers.start(backend, tokens=())
    assert_error(srv.call("GET", "/tasks", token=None), 401, "unauthorized")
    r = cli("token", "create", "--role", "admin", "x", env={"SCITQ_SERVER_DATABASE": srv.database})
    assert r.code == 0, r
    secret = r.out.strip()
    assert secret.startswith("scitq_") and len(r.out.splitlines()) == 1
    assert secret not in r.err
    assert_error(srv.call("GET", "/tasks", token=None), 401, "unauthorized")
    assert_error(srv.call("POST", "/tasks", {"command": "x"}, token=None), 401, "unauthorized")
    assert_error(srv.call("GET", "/tasks", token="scitq_nope"), 401, "unauthorized")
    assert srv.call("GET", "/tasks", token=secret)[0] == 200
    assert srv.call("GET", "/health", token=None)[0] == 200  # liveness stays public


def test_user_token_may_steer_tasks_but_not_manage_tokens_or_register_workers(servers):
    srv = servers.start("sqlite")
    user = srv.ok("POST", "/tokens", {"name": unique("u"), "role": "user"})
    assert user["token"]["role"] == "user" and "secret" in user and "hash" not in user["token"]
    u = user["secret"]
    batch = unique("ub")
    t = srv.ok("POST", "/tasks", {"command": "x", "batch": batch}, token=u)
    srv.ok("GET", f"/tasks/{t['id']}", token=u)
    srv.ok("PATCH", f"/tasks/{t['id']}", {"priority": 2}, token=u)
    srv.ok("POST", f"/batches/{batch}/pause", {}, token=u)
    srv.ok("GET", "/workers", token=u)
    srv.ok("GET", "/events", token=u)
    for method, path, body in (("GET", "/tokens", None), ("POST", "/tokens", {"name": unique("t"), "role": "user"}),
                               ("DELETE", "/tokens/admin", None),
                               ("POST", "/workers/register", {"name": unique("w")})):
        assert_error(srv.call(method, path, body, token=u), 403, "forbidden")
    # the admin can do all of it
    srv.ok("GET", "/tokens")
    srv.register()
    names = [t["name"] for t in srv.ok("GET", "/tokens")["tokens"]]
    assert user["token"]["name"] in names and "admin" in names
    assert all("hash" not in t and "secret" not in t for t in srv.ok("GET", "/tokens")["tokens"])


def test_jobs_and_host_keys_are_the_admin_s_alone(servers):
    # Host keys decide whom provisioning trusts, job logs describe hosts: no user, worker or join token
    # may read or write them.
    srv = servers.start("sqlite")
    job = srv.ok("POST", "/jobs", {"kind": "provision", "target": "h:22"}, status=201)
    srv.ok("POST", "/host-keys", {"host": "h:22", "key_type": "ssh-ed25519", "key_data": "AAAAC3Nza2V5"})
    user = srv.ok("POST", "/tokens", {"name": unique("u"), "role": "user"})["secret"]
    _, worker = srv.register()
    join = srv.ok("POST", "/join-tokens", {"uses": 1}, status=201)["join_token"]
    calls = (("GET", "/jobs", None), ("POST", "/jobs", {"kind": "provision", "target": "x:22"}),
             ("GET", f"/jobs/{job['id']}", None), ("PATCH", f"/jobs/{job['id']}", {"status": "failed"}),
             ("GET", f"/jobs/{job['id']}/log", None), ("POST", f"/jobs/{job['id']}/log", {"lines": ["forged"]}),
             ("DELETE", f"/jobs/{job['id']}", None), ("GET", "/host-keys/h:22", None),
             ("POST", "/host-keys", {"host": "h2:22", "key_type": "ssh-ed25519", "key_data": "AAAAC3Nza2V5"}),
             ("DELETE", "/host-keys/h:22", None))
    for token in (user, worker, join):
        for method, path, body in calls:
            assert_error(srv.call(method, path, body, token=token), 403, "forbidden")
    assert srv.ok("GET", f"/jobs/{job['id']}")["status"] == "pending", "nothing changed"
    assert srv.ok("GET", f"/jobs/{job['id']}/log")["lines"] == []
    assert srv.ok("GET", "/host-keys/h:22")["key_data"] == "AAAAC3Nza2V5"
    assert_error(srv.call("GET", "/host-keys/h2:22"), 404, "not_found")


def test_revoked_token_is_401(servers):
    srv = servers.start("sqlite")
    # revoked through the API: refused at once
    name = unique("u")
    secret = srv.ok("POST", "/tokens", {"name": name, "role": "user"})["secret"]
    assert srv.call("GET", "/tasks", token=secret)[0] == 200
    revoked = srv.ok("DELETE", f"/tokens/{name}")["token"]
    assert revoked["revoked"]
    assert_error(srv.call("GET", "/tasks", token=secret), 401, "unauthorized")
    # revoked with the CLI on the server host: refused within the server's token cache period
    name2 = unique("u")
    secret2 = srv.ok("POST", "/tokens", {"name": name2, "role": "admin"})["secret"]
    assert srv.call("GET", "/tokens", token=secret2)[0] == 200
    r = cli("token", "revoke", name2, env={"SCITQ_SERVER_DATABASE": srv.database})
    assert r.code == 0, r
    wait_for(lambda: srv.call("GET", "/tokens", token=secret2)[0] == 401, 10, 0.05, "the revocation")
    assert_error(srv.call("GET", "/tasks", token=secret2), 401, "unauthorized")
    srv.ok("GET", "/tokens")  # the others still work


def test_worker_tokens_reach_only_the_protocol_of_their_own_worker(servers):
    srv = servers.start("sqlite")
    batch1, batch2 = unique("wb"), unique("wb")
    w1, t1 = srv.register(batch=batch1)
    w2, t2 = srv.register(batch=batch2)
    srv.ok("POST", "/tasks", {"command": "x", "batch": batch1})
    srv.ok("POST", "/tasks", {"command": "x", "batch": batch2})
    e1 = srv.ok("POST", f"/workers/{w1}/claim", {"slots": 1}, token=t1)["executions"][0]["id"]
    e2 = srv.ok("POST", f"/workers/{w2}/claim", {"slots": 1}, token=t2)["executions"][0]["id"]
    # its own: claim, heartbeat, report, output, outbox
    srv.ok("POST", f"/workers/{w1}/heartbeat", {"executions": [e1]}, token=t1)
    srv.ok("POST", f"/executions/{e1}/report", {"phase": "running"}, token=t1)
    srv.ok("POST", f"/executions/{e1}/output", {"stream": "stdout", "offset": 0, "data": "aGk="}, token=t1)
    srv.ok("POST", f"/workers/{w1}/outbox", {"items": []}, token=t1)
    # the other worker's: refused
    for method, path, body in (("POST", f"/workers/{w2}/claim", {"slots": 1}),
                               ("POST", f"/workers/{w2}/heartbeat", {}),
                               ("POST", f"/workers/{w2}/outbox", {"items": []}),
                               ("POST", f"/executions/{e2}/report", {"phase": "running"}),
                               ("POST", f"/executions/{e2}/output", {"stream": "stdout", "offset": 0, "data": ""})):
        assert_error(srv.call(method, path, body, token=t1), 403, "forbidden")
    # people's routes and registration: refused
    for method, path, body in (("GET", "/tasks", None), ("GET", f"/executions/{e1}", None),
                               ("GET", f"/executions/{e1}/output", None), ("PATCH", f"/workers/{w1}",
                                                                           {"concurrency": 50}),
                               ("DELETE", f"/workers/{w2}", None), ("POST", "/workers/register", {"name": "x"}),
                               ("GET", "/tokens", None), ("POST", "/batches", {"name": unique("x")})):
        assert_error(srv.call(method, path, body, token=t1), 403, "forbidden")
    assert srv.ok("GET", f"/executions/{e2}")["status"] == "assigned"
    assert srv.ok("GET", f"/workers/{w1}")["concurrency"] == 1
    # a live worker's name is registered again only with its own token, which gets a new one and retires it
    name1 = srv.ok("GET", f"/workers/{w1}")["name"]
    body = assert_error(srv.call("POST", "/workers/register", {"name": name1}), 409, "conflict")
    assert name1 in body["detail"] and "last seen" in body["detail"]
    reply = srv.ok("POST", "/workers/register", {"name": name1, "batch": batch1}, token=t1)
    w1b, t1b = reply["worker"]["id"], reply["token"]
    assert w1b == w1 and t1b != t1
    wait_for(lambda: srv.call("POST", f"/workers/{w1}/heartbeat", {}, token=t1)[0] == 401, 10, 0.05,
             "the old worker token to be retired")
    srv.ok("POST", f"/workers/{w1}/heartbeat", {}, token=t1b)


def _server_argv(database: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scitq_app", "server", "--database", database, "--port", str(free_port()),
            *extra]


def test_a_server_that_cannot_write_its_token_file_initialises_nothing(databases, tmp_path):
    database = databases.new("sqlite")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = str(blocker / "admin.token")
    proc = subprocess.run(_server_argv(database), env=scitq_env(SCITQ_SERVER_TOKEN_FILE=path), cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert path in proc.stderr and "[server] token_file" in proc.stderr and "Traceback" not in proc.stderr
    from scitq_app.store import open_store
    store = open_store(database)
    try:
        assert store.schema_status()["current"] == 0, "rolled back: no database nobody can use"
    finally:
        store.close()


def test_a_server_on_a_database_without_people_tokens_starts_and_says_how_to_make_one(servers, databases,
                                                                                     tmp_path):
    database = databases.new("sqlite")
    prepare_database(database)  # initialised elsewhere, without the first admin token
    proc = ServerProcess(database, str(tmp_path), listen="0.0.0.0").start()
    servers.running.append(proc)
    assert proc.admin_token is None
    assert_error(api(f"http://127.0.0.1:{proc.port}/api/v1", "GET", "/tasks"), 401, "unauthorized")
    assert "token create --role admin" in proc.log()


def test_server_listens_on_a_non_loopback_address_once_a_token_exists(servers, databases, tmp_path):
    database = databases.new("sqlite")
    secret = prepare_database(database, (("admin", "admin"),))["admin"]
    port = free_port()
    proc = ServerProcess(database, str(tmp_path), port=port, listen="0.0.0.0").start()
    servers.running.append(proc)
    url = f"http://127.0.0.1:{port}/api/v1"
    assert_error(api(url, "GET", "/tasks"), 401, "unauthorized")
    assert api(url, "GET", "/tasks", token=secret)[0] == 200
