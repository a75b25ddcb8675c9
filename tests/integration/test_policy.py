"""Through the real API: the container options policy, idempotency keys per token, the
validation gaps (heartbeat stats, task names, URLs, ports, tokens with a line end) and a
revocation seen by a second server process on the same database within 2 s."""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request

import pytest

from scitq_app.schema import MAX_STATS_DEPTH, MAX_STATS_SIZE, MAX_TASK_NAME
from tests.support.processes import api, free_port

from .conftest import assert_error, cli, unique

BACKENDS = ["sqlite", "postgres"]
ATTACKS = ["--privileged", "-v /:/host", "--volume=/etc:/h", "--mount type=bind,source=/,target=/h",
           "--pid=host", "--pid host", "--network=host", "--cap-add SYS_ADMIN", "--security-opt seccomp=unconfined",
           "--device /dev/sda", "-itv /:/h", "--env-file /etc/scitq.conf"]


def _strict_json(text: bytes):
    """json.loads that refuses NaN and Infinity, as every other JSON reader does."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, module_servers):
    return module_servers.start(request.param, tokens=(("admin", "admin"), ("alice", "user"), ("bob", "user")))


def _task(**fields):
    return {"command": "true", "container": "alpine", **fields}


@pytest.mark.parametrize("options", ATTACKS)
def test_a_user_token_cannot_submit_dangerous_container_options(srv, options):
    alice = srv.tokens["alice"]
    batch = unique()
    first = options.split()[0]
    shown = "-i" if options.startswith("-it") else first
    body = assert_error(srv.call("POST", "/tasks", _task(batch=batch, container_options=options), token=alice),
                        422, "invalid")
    assert f"container_options: {shown}" in body["detail"] and "[server] container_options" in body["detail"]
    body = assert_error(srv.call("POST", "/tasks/bulk", {"tasks": [_task(batch=batch),
                                                                   _task(batch=batch, container_options=options)]},
                                 token=alice), 422, "invalid")
    assert body["data"]["field"] == "tasks[1].container_options"
    assert srv.call("GET", f"/batches/{batch}")[0] == 404  # nothing created, not even the batch
    task = srv.ok("POST", "/tasks", _task(container_options="--gpus all --shm-size 1g -e A=1",
                                          status="paused"), token=alice)
    body = assert_error(srv.call("PATCH", f"/tasks/{task['id']}", {"container_options": options}, token=alice),
                        422, "invalid")
    assert "[server] container_options" in body["detail"]
    assert srv.ok("GET", f"/tasks/{task['id']}")["container_options"] == "--gpus all --shm-size 1g -e A=1"


def test_the_allow_list_is_the_servers_configuration(servers):
    s = servers.start("sqlite", env={"SCITQ_SERVER_CONTAINER_OPTIONS": "--gpus --network=none"})
    s.ok("POST", "/tasks", _task(container_options="--gpus all --network none"))
    body = assert_error(s.call("POST", "/tasks", _task(container_options="--shm-size 1g")), 422)
    assert body["detail"] == ("container_options: --shm-size 1g is not allowed by this server's [server] "
                              "container_options (allowed: --gpus --network=none)")
    assert_error(s.call("POST", "/tasks", _task(container_options="--network bridge")), 422)


def test_a_bad_allow_list_stops_the_server_with_exit_2(tmp_path):
    r = cli("server", "--database", f"sqlite:///{tmp_path}/x.db", "--port", str(free_port()),
            env={"SCITQ_SERVER_CONTAINER_OPTIONS": "--gpus privileged"}, cwd=str(tmp_path))
    assert r.code == 2, r
    assert r.err_lines == ["scitq: [server] container_options: 'privileged' is not an option (write --name or "
                           "--name=PATTERN)"]


def test_the_openapi_document_states_the_bounds_and_the_configured_422(srv):
    doc = srv.ok("GET", "/openapi.json")
    schemas = doc["components"]["schemas"]
    assert schemas["task_create"]["properties"]["name"]["maxLength"] == MAX_TASK_NAME
    assert schemas["task_update"]["properties"]["name"]["maxLength"] == MAX_TASK_NAME
    assert (schemas["task_bulk"]["properties"]["key"]["minLength"],
            schemas["task_bulk"]["properties"]["key"]["maxLength"]) == (8, 100)
    assert "[server] container_options" in schemas["task_create"]["properties"]["container_options"]["description"]
    for path, method in (("/tasks", "post"), ("/tasks/bulk", "post"), ("/tasks/{id}", "patch")):
        assert "[server] container_options" in doc["paths"]["/api/v1" + path][method]["responses"]["422"][
            "description"]
    assert "[server] container_options" not in json.dumps(doc["paths"]["/api/v1/batches"])
    assert "another body" in doc["paths"]["/api/v1/tasks/bulk"]["post"]["responses"]["409"]["description"]


# --- idempotency keys ------------------------------------------------------------------

def test_an_idempotency_key_belongs_to_the_token_that_used_it(srv):
    key = unique("key")
    tasks = {"tasks": [{"command": "true", "name": "k1", "status": "paused"}], "key": key}
    alice = srv.ok("POST", "/tasks/bulk", tasks, token=srv.tokens["alice"], status=201)
    bob = srv.ok("POST", "/tasks/bulk", tasks, token=srv.tokens["bob"], status=201)
    assert alice["ids"] != bob["ids"]
    assert srv.ok("POST", "/tasks/bulk", tasks, token=srv.tokens["alice"], status=201) == alice
    assert srv.ok("POST", "/tasks/bulk", tasks, token=srv.tokens["bob"], status=201) == bob
    other = {"tasks": [{"command": "false", "name": "k1", "status": "paused"}], "key": key}
    body = assert_error(srv.call("POST", "/tasks/bulk", other, token=srv.tokens["alice"]), 409, "conflict")
    assert body["detail"] == (f"idempotency key {key!r} was already used by this token for a different request: "
                              "use a new key for new tasks")
    assert body["data"] == {"key": key}  # never the ids of the first request
    for bad in ("short", "k" * 101):
        assert_error(srv.call("POST", "/tasks/bulk", {**tasks, "key": bad}, token=srv.tokens["alice"]), 422)


# --- validation gaps ---------------------------------------------------------------------

def _beat(srv, worker_id: int, token: str, raw: bytes):
    return api(srv.api_url, "POST", f"/workers/{worker_id}/heartbeat", raw=raw, token=token,
               headers={"Content-Type": "application/json"})


def test_heartbeat_stats_are_finite_shallow_and_small_so_workers_stay_valid_json(srv):
    worker_id, token = srv.register()
    deep: dict = {"x": 1}
    for _ in range(MAX_STATS_DEPTH):
        deep = {"d": deep}
    bad = {
        b'{"stats": {"load": NaN}}': "stats.load: must be a finite number",
        b'{"stats": {"cpu": [1, Infinity]}}': "stats.cpu[1]: must be a finite number",
        b'{"stats": {"mem": -Infinity}}': "stats.mem: must be a finite number",
        json.dumps({"stats": deep}).encode(): f"is nested more than {MAX_STATS_DEPTH} levels deep",
        json.dumps({"stats": {"blob": "x" * MAX_STATS_SIZE}}).encode(): f"is larger than {MAX_STATS_SIZE} bytes",
        json.dumps({"stats": {f"k{i}": i for i in range(MAX_STATS_SIZE // 8)}}).encode():
            f"is larger than {MAX_STATS_SIZE} bytes",
        b'{"stats": [1, 2]}': "stats: must be an object",
    }
    for raw, message in bad.items():
        body = assert_error(_beat(srv, worker_id, token, raw), 422, "invalid")
        assert message in body["detail"], (raw[:80], body)
    ok = {"load": [0.5, 0.25, 1e308], "disk": {"free": 12, "mounts": [{"path": "/", "used": 0.5}]}, "v": "1"}
    assert _beat(srv, worker_id, token, json.dumps({"stats": ok}).encode())[0] == 200
    deadline = time.monotonic() + 10
    while True:  # heartbeats are written about twice a second
        req = urllib.request.Request(srv.api_url + "/workers", headers={"Authorization": f"Bearer {srv.admin}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            workers = _strict_json(r.read())["workers"]
        mine = next(w for w in workers if w["id"] == worker_id)
        if mine["stats"] == ok:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.1)


def test_task_names_are_bounded_so_postgresql_never_refuses_them(srv):
    longest = "\u00e9" * MAX_TASK_NAME  # 2 bytes each in UTF-8
    task = srv.ok("POST", "/tasks", {"command": "true", "name": longest, "status": "paused"})
    assert srv.ok("GET", f"/tasks/{task['id']}")["name"] == longest
    listed = srv.ok("GET", "/tasks?name=" + urllib.parse.quote(longest))["tasks"]
    assert [t["id"] for t in listed] == [task["id"]]
    body = assert_error(srv.call("POST", "/tasks", {"command": "true", "name": "\U0001f9ec" * (MAX_TASK_NAME + 1)}),
                        422, "invalid")
    assert body["detail"] == f"name: is longer than {MAX_TASK_NAME} characters"
    assert_error(srv.call("PATCH", f"/tasks/{task['id']}", {"name": "n" * (MAX_TASK_NAME + 1)}), 422)
    assert_error(srv.call("POST", "/tasks/bulk", {"tasks": [{"command": "true", "name": "n" * 10_000}]}), 422)


def test_parallel_submissions_creating_one_new_batch_all_succeed(srv):
    batch = unique()
    replies: list = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        barrier.wait(10)
        replies.append(srv.call("POST", "/tasks", {"command": "true", "batch": batch, "status": "paused"}))
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(code for code, _ in replies) == [201] * 8, replies
    assert srv.ok("GET", f"/batches/{batch}")["counts"] == {"paused": 8}


@pytest.mark.parametrize("server", ["http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:abc", "ftp://x"])
def test_a_bad_server_url_is_a_configuration_error(server):
    r = cli("task", "list", env={"SCITQ_SERVER": server, "SCITQ_TOKEN": "scitq_x"})
    assert r.code == 2, r
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("scitq: server URL must look like http://HOST:PORT")


@pytest.mark.parametrize("database", ["postgresql://u:secret@h:99999/db", "postgresql://u:secret@[::1/db",
                                      "postgresql://u:secret@h:abc/db", "mysql://u:secret@h/db"])
def test_a_bad_database_url_is_a_configuration_error_that_hides_the_password(database, tmp_path):
    r = cli("server", "--database", database, "--port", str(free_port()), cwd=str(tmp_path))
    assert r.code == 2, r
    assert len(r.err_lines) == 1 and "database URL" in r.err and "secret" not in r.err, r


@pytest.mark.parametrize("listen", ["999.1.1.1", "not a host", "[::1"])
def test_a_bad_listen_address_is_a_configuration_error(listen, tmp_path):
    r = cli("server", "--database", f"sqlite:///{tmp_path}/x.db", "--listen", listen, "--port", str(free_port()),
            cwd=str(tmp_path))
    assert r.code == 2, r
    assert r.err_lines == [f"scitq: [server] listen {listen!r} is not an address this host can listen on (Name or "
                           "service not known): give an IP address such as 127.0.0.1 or 0.0.0.0"]


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_the_port_is_from_1_to_65535(port, tmp_path):
    r = cli("server", "--database", f"sqlite:///{tmp_path}/x.db", "--port", port, cwd=str(tmp_path))
    assert r.code == 2, r
    assert len(r.err_lines) == 1 and "server.port (from --port): must be at" in r.err


def test_a_token_read_with_its_line_end_works_and_a_broken_one_is_not_echoed(srv, tmp_path):
    alice = srv.tokens["alice"]
    for ending in ("\n", "\r\n", " \r\n"):
        r = cli("task", "counts", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": alice + ending})
        assert r.code == 0, r
    r = cli("task", "counts", env={"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": alice + "\r\nX-Injected: 1"})
    assert r.code == 2, r
    assert alice not in r.err and alice[6:20] not in r.err
    assert r.err_lines == ["scitq: the API token holds a space or a control character: check [client] token, "
                           "SCITQ_TOKEN or the token file it was read from"]


# --- revocation across server processes ---------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_revocation_through_one_server_bites_on_another_within_2_s(servers, backend):
    one = servers.start(backend, tokens=(("admin", "admin"), ("carol", "user")))
    two = servers.start(backend, database=one.database, tokens=())
    worker_id, worker_token = one.register()
    carol = one.tokens["carol"]
    # warm both kinds of token into the second server's cache (30 s for a worker token)
    assert two.call("GET", "/tasks/counts", token=carol)[0] == 200
    assert api(two.api_url, "POST", f"/workers/{worker_id}/heartbeat", {}, token=worker_token)[0] == 200
    worker_name = next(t["name"] for t in one.ok("GET", "/tokens")["tokens"] if t["role"] == "worker")
    delays = []
    for name, probe in (("carol", lambda: two.call("GET", "/tasks/counts", token=carol)[0]),
                        (worker_name, lambda: api(two.api_url, "POST", f"/workers/{worker_id}/heartbeat", {},
                                                  token=worker_token)[0])):
        assert probe() == 200
        one.ok("DELETE", f"/tokens/{name}")
        start = time.monotonic()
        while probe() != 401:
            assert time.monotonic() - start < 2.0, f"{name} still accepted by the other server after 2 s"
            time.sleep(0.02)
        delays.append(time.monotonic() - start)
    assert max(delays) < 2.0
