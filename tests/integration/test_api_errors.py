"""The error matrix of the HTTP API, over real HTTP to a real server on both
backends: every refusal has the right status and a JSON {error, detail} body."""
from __future__ import annotations

import http.client
import json
from types import SimpleNamespace

import pytest

from tests.integration.conftest import RawClient, assert_error, unique
from tests.support.processes import api

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, module_servers):
    """A server with admin and user tokens, two workers, and one claimed execution each."""
    srv = module_servers.start(request.param, tokens=(("admin", "admin"), ("user", "user")))
    w = SimpleNamespace(srv=srv, admin=srv.tokens["admin"], user=srv.tokens["user"])
    for n in (1, 2):
        batch = unique("err")
        wid, token = srv.register(unique("w"), batch=batch)
        task = srv.ok("POST", "/tasks", {"command": "sleep 100", "batch": batch})
        claimed = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"]
        assert [e["task_id"] for e in claimed] == [task["id"]]
        setattr(w, f"w{n}", SimpleNamespace(id=wid, token=token, task=task["id"], execution=claimed[0]["id"],
                                            batch=batch))
    return w


def test_malformed_json_is_400(world):
    for raw in (b"{bad", b'{"command": "x",}', b"[1, 2", b"\"unterminated"):
        body = assert_error(world.srv.call("POST", "/tasks", raw=raw, headers={"Content-Type": "application/json"}),
                            400, "bad_request")
        assert "JSON" in body["detail"]


def test_missing_token_is_401_once_a_token_exists(world):
    for method, path in (("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/tokens"),
                         ("POST", f"/workers/{world.w1.id}/claim")):
        body = {"command": "x"} if path == "/tasks" and method == "POST" else \
            {"slots": 1} if method == "POST" else None
        assert_error(world.srv.call(method, path, body, token=None), 401, "unauthorized")


def test_unknown_revoked_or_malformed_token_is_401(world):
    assert_error(world.srv.call("GET", "/tasks", token="scitq_" + "0" * 40), 401, "unauthorized")
    assert_error(world.srv.call("GET", "/tasks", token="not-even-a-scitq-token"), 401, "unauthorized")
    assert_error(world.srv.call("GET", "/tasks", token=None, headers={"Authorization": f"Basic {world.admin}"}),
                 401, "unauthorized")
    assert_error(world.srv.call("GET", "/tasks", token=None, headers={"Authorization": "Bearer "}),
                 401, "unauthorized")


def test_user_token_on_tokens_is_403(world):
    assert_error(world.srv.call("GET", "/tokens", token=world.user), 403, "forbidden")
    assert_error(world.srv.call("POST", "/tokens", {"name": unique("t"), "role": "admin"}, token=world.user),
                 403, "forbidden")
    assert_error(world.srv.call("DELETE", "/tokens/admin", token=world.user), 403, "forbidden")
    # and the admin token still works: nothing was revoked by the refused call
    world.srv.ok("GET", "/tokens")


def test_worker_token_on_people_routes_is_403(world):
    t = world.w1.token
    for method, path, body in (("GET", "/tasks", None), ("POST", "/tasks", {"command": "x"}),
                               ("GET", f"/tasks/{world.w1.task}", None), ("GET", "/batches", None),
                               ("GET", "/workers", None), ("PATCH", f"/workers/{world.w1.id}", {"concurrency": 9}),
                               ("GET", f"/executions/{world.w1.execution}", None),
                               ("POST", "/workers/register", {"name": unique("w")}), ("GET", "/tokens", None),
                               ("GET", "/events", None)):
        assert_error(world.srv.call(method, path, body, token=t), 403, "forbidden")
    assert world.srv.ok("GET", f"/workers/{world.w1.id}")["concurrency"] == 1


def test_worker_token_on_another_workers_claim_and_heartbeat_is_403(world):
    t, other = world.w1.token, world.w2.id
    assert_error(world.srv.call("POST", f"/workers/{other}/claim", {"slots": 1}, token=t), 403, "forbidden")
    assert_error(world.srv.call("POST", f"/workers/{other}/heartbeat", {"executions": [world.w2.execution]},
                                token=t), 403, "forbidden")
    assert_error(world.srv.call("POST", f"/workers/{other}/outbox", {"items": []}, token=t), 403, "forbidden")
    # its own routes are fine
    world.srv.ok("POST", f"/workers/{world.w1.id}/heartbeat", {"executions": [world.w1.execution]}, token=t)


def test_worker_token_on_another_workers_execution_report_is_403(world):
    t, theirs = world.w1.token, world.w2.execution
    assert_error(world.srv.call("POST", f"/executions/{theirs}/report", {"phase": "running"}, token=t),
                 403, "forbidden")
    assert_error(world.srv.call("POST", f"/executions/{theirs}/output",
                                {"stream": "stdout", "offset": 0, "data": "aGk="}, token=t), 403, "forbidden")
    # through its own outbox, the same report is refused item by item
    results = world.srv.ok("POST", f"/workers/{world.w1.id}/outbox",
                           {"items": [{"type": "report", "execution_id": theirs, "body": {"phase": "running"}}]},
                           token=t)["results"]
    assert results[0]["ok"] is False and results[0]["status"] == 403 and results[0]["error"] == "forbidden"
    # the other worker's execution did not move
    assert world.srv.ok("GET", f"/executions/{theirs}")["status"] == "assigned"


def test_unknown_task_id_is_404(world):
    for method, path, body in (("GET", "/tasks/987654321", None), ("PATCH", "/tasks/987654321", {"priority": 1}),
                               ("DELETE", "/tasks/987654321", None), ("POST", "/tasks/987654321/relaunch", None),
                               ("GET", "/tasks/987654321/executions", None), ("GET", "/executions/987654321", None),
                               ("GET", "/batches/no-such-batch", None), ("GET", "/workers/987654321", None)):
        reply = assert_error(world.srv.call(method, path, body), 404, "not_found")
        assert ("no-such-batch" if "batches" in path else "987654321") in reply["detail"], reply


def test_unknown_route_is_404(world):
    for path in ("/nope", "/tasks/1/nope", "/tasks/abc"):
        assert_error(world.srv.call("GET", path), 404, "not_found")
    assert_error(api(world.srv.url, "GET", "/api/v2/tasks", token=world.admin), 404, "not_found")
    assert_error(api(world.srv.url, "GET", "/", token=world.admin), 404, "not_found")


def test_wrong_method_on_existing_path_is_405(world):
    for method, path in (("PUT", "/tasks"), ("DELETE", "/tasks"), ("PUT", "/tasks/1"), ("GET", "/tasks/bulk"),
                         ("DELETE", "/tasks/counts"), ("GET", f"/workers/{world.w1.id}/claim"),
                         ("PATCH", "/tokens")):
        assert_error(world.srv.call(method, path, {} if method != "GET" else None), 405, "method_not_allowed")


def test_relaunch_of_pending_task_is_409(world):
    task = world.srv.ok("POST", "/tasks", {"command": "true", "batch": unique("e409")})
    body = assert_error(world.srv.call("POST", f"/tasks/{task['id']}/relaunch"), 409, "conflict")
    assert "pending" in body["detail"]
    assert world.srv.ok("GET", f"/tasks/{task['id']}")["status"] == "pending"


def test_update_command_of_assigned_task_is_409(world):
    assert world.srv.ok("GET", f"/tasks/{world.w1.task}")["status"] == "assigned"
    body = assert_error(world.srv.call("PATCH", f"/tasks/{world.w1.task}", {"command": "echo other"}), 409,
                        "conflict")
    assert "command" in body["detail"]
    assert world.srv.ok("GET", f"/tasks/{world.w1.task}")["command"] == "sleep 100"


@pytest.mark.parametrize("backend", BACKENDS)
def test_body_over_max_body_is_413(backend, servers):
    srv = servers.start(backend, env={"SCITQ_SERVER_MAX_BODY": "2048"})
    batch = unique("big")
    assert_error(srv.call("POST", "/tasks", {"command": "x" * 3000, "batch": batch}), 413, "too_large")
    # chunked bodies (no Content-Length) are held to the same limit
    data = json.dumps({"command": "y" * 5000, "batch": batch}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.proc.port, timeout=30)
    conn.putrequest("POST", "/api/v1/tasks")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {srv.admin}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    resp = conn.getresponse()
    assert_error((resp.status, json.loads(resp.read())), 413, "too_large")
    conn.close()
    # just under the limit is accepted, and nothing of the refused bodies was stored
    srv.ok("POST", "/tasks", {"command": "x" * 1000, "batch": batch})
    assert srv.ok("GET", f"/tasks/counts?batch={batch}")["counts"] == {"pending": 1}


def test_non_json_content_type_is_415(world):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert_error(world.srv.call("POST", "/tasks", raw=b'{"command": "x"}', headers={"Content-Type": ctype}),
                     415, "unsupported_media_type")
    # no content type at all
    client = RawClient("127.0.0.1", world.srv.proc.port)
    try:
        code, raw, _ = client.request("POST", "/api/v1/tasks", b'{"command": "x"}',
                                      {"Authorization": f"Bearer {world.admin}"})
    finally:
        client.close()
    assert_error((code, json.loads(raw)), 415, "unsupported_media_type")


INVALID = [
    # (id, method, path, body, field named in the reply)
    ("unknown status filter", "GET", "/tasks?status=pending,bogus", None, "status"),
    ("negative concurrency", "PATCH", "/workers/{w1}", {"concurrency": -1}, "concurrency"),
    ("string for an int", "POST", "/tasks", {"command": "x", "priority": "4"}, "priority"),
    ("string for an int in bulk", "POST", "/tasks/bulk", {"tasks": [{"command": "x"}, {"command": "x",
                                                                                        "max_retries": "4"}]},
     "tasks[1].max_retries"),
    ("empty command", "POST", "/tasks", {"command": ""}, "command"),
    ("blank command", "POST", "/tasks", {"command": "   "}, "command"),
    ("NUL byte in command", "POST", "/tasks", {"command": "echo a\x00b"}, "command"),
    ("dot-dot in a URI", "POST", "/tasks", {"command": "x", "inputs": ["s3://b/../x"]}, "inputs"),
    ("credentials in a URI", "POST", "/tasks", {"command": "x", "inputs": ["http://u:p@h/x"]}, "inputs"),
    ("bad output URI", "POST", "/tasks", {"command": "x", "output": "s3://b/../x/"}, "output"),
    ("unknown field", "POST", "/tasks", {"command": "x", "comand": "y"}, "comand"),
    ("unknown query parameter", "GET", "/tasks?colour=red", None, "colour"),
    ("bool for an int", "POST", "/workers/{w1}/claim", {"slots": True}, "slots"),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_field_is_422(world, case):
    _, method, path, body, field = case
    path = path.format(w1=world.w1.id)
    before = world.srv.ok("GET", "/tasks/counts")["counts"]
    reply = assert_error(world.srv.call(method, path, body), 422, "invalid")
    assert reply.get("data", {}).get("field", "").startswith(field), reply
    assert field in reply["detail"], reply
    assert world.srv.ok("GET", "/tasks/counts")["counts"] == before  # nothing was created
    assert world.srv.ok("GET", f"/workers/{world.w1.id}")["concurrency"] == 1
