"""No input makes the server answer 5xx: a battery of bad inputs sent to every
route of `api.ROUTES` over real HTTP, on both backends. Every reply must be
below 500 and every error reply a JSON {error, detail}."""
from __future__ import annotations

import json
import os
import re
import tempfile
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from scitq_app.api import PREFIX, ROUTES, Route
from scitq_app.schema import SPECS
from tests.integration.conftest import RawClient, assert_error_body, unique
from tests.support.static_provider import providers_file

BACKENDS = ["sqlite", "postgres"]

# Values every field receives in turn: wrong types, edges, huge numbers, odd strings.
BAD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.0, 1e308, -1e308, 2 ** 31, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, 10 ** 30,
    "", " ", "4", "true", "\x00", "a\x00b", "\n", "x" * 5000, "é☃\U0001f600", "s3://b/../x", "http://u:p@h/x",
    "\ud800", [], [None], [1, "a"], ["x" * 5000], [[[]]], {}, {"a": {"b": [1]}},
]

# Whole bodies that are not what any route wants.
RAW_BODIES: list[tuple[bytes, str]] = [
    (b"", "application/json"),
    (b"null", "application/json"),
    (b"[]", "application/json"),
    (b'"a string"', "application/json"),
    (b"42", "application/json"),
    (b"true", "application/json"),
    (b"{", "application/json"),
    (b"{}", "application/json"),
    (b"{} {}", "application/json"),
    (b'{"a": 1, "a": 2}', "application/json"),
    (b"\xef\xbb\xbf{}", "application/json"),
    (b'{"x": "\xff\xfe"}', "application/json"),
    (b"\xff\xfe\x00\x00", "application/json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
    (b'{"slots": ' + b"9" * 5000 + b"}", "application/json"),
    (b'{"slots": 1e999999}', "application/json"),
    (b'{"slots": NaN, "wait": Infinity}', "application/json"),
    (b'{"slots": -Infinity}', "application/json"),
    (b'{"command": "x"}', "text/plain"),
    (b'{"command": "x"}', "application/json; charset=latin-1"),
    (b"command=x", "application/x-www-form-urlencoded"),
    (b"\x00" * 100, "application/octet-stream"),
]

BAD_QUERY_VALUES = ["-1", "x", "a,b", "1,,2", ",", "", "0", "1.5", str(10 ** 30), str(2 ** 63), str(-(2 ** 63) - 1),
                    "%ff", "%00", "%C3%A9", "true", "pending,bogus", "x" * 3000]

INT_PATH_VALUES = ["0", "-1", "987654321", str(2 ** 63 - 1), str(2 ** 63), str(10 ** 30), "00001"]
NAME_PATH_VALUES = ["Default", "nope", "%ff", "a%00b", "%2F", "..", "x" * 300, "%C3%A9", "a%20b"]


def valid_bodies(w: SimpleNamespace) -> dict[str, dict]:
    """A valid body of every kind, for mutating one field at a time."""
    task = {"command": "echo hi", "batch": w.batch}
    return {
        "task_create": task,
        "task_single": task,   # POST /tasks: task_create without refs
        "task_update": {"priority": 1},
        "task_bulk": {"tasks": [task]},
        "task_signal": {"action": "pause"},
        "batch_create": {"name": unique("rb")},
        "batch_update": {"priority": 1},
        "batch_action": {"signal": None},
        "worker_update": {"concurrency": 1},
        "worker_signal": {"action": "clean"},
        "register": {"name": unique("rw"), "batch": w.batch},
        "claim": {"slots": 1, "wait": 0},
        "heartbeat": {"stats": {}, "executions": [w.execution]},
        "report": {"phase": "running"},
        "output": {"stream": "stdout", "offset": 0, "data": "aGk="},
        "outbox_item": {"type": "report", "execution_id": w.execution, "body": {"phase": "running"}},
        "outbox": {"items": []},
        "token_create": {"name": unique("rt"), "role": "user"},
        "join_token_create": {"uses": 2, "ttl": 600, "batch": w.batch, "name": unique("jw")},
        "job_create": {"kind": "provision", "target": unique("h") + ":22"},
        "recruiter_create": {"batch": unique("rr"), "provider": "none", "flavor": "s4", "maximum_workers": 2},
        "recruiter_update": {"maximum_workers": 3},
        "machine_deploy": {"provider": "none", "flavor": "s4", "batch": unique("md")},
        "job_update": {"step": "checking"},
        "job_log_append": {"lines": ["a line"]},
        "host_key_trust": {"host": unique("hk") + ":22", "key_type": "ssh-ed25519", "key_data": "AAAAC3Nza2V5"},
    }


NESTED = {"task_bulk": ("tasks", "task_create"), "outbox": ("items", "outbox_item")}


def body_cases(kind: str, w: SimpleNamespace) -> Iterator[tuple[str, Any]]:
    """(label, JSON value) bodies of a kind, each wrong in one place."""
    bodies = valid_bodies(w)
    base = bodies[kind]
    yield "valid", base
    for field in SPECS[kind]:
        for v in BAD_VALUES:
            yield f"{field}={v!r:.40}", {**base, field: v}
    yield "unknown field", {**base, "zzz": 1}
    if kind in NESTED:
        key, item_kind = NESTED[kind]
        item = bodies[item_kind]
        for field in SPECS[item_kind]:
            for v in BAD_VALUES:
                yield f"{key}[0].{field}={v!r:.40}", {key: [{**item, field: v}]}
        for v in BAD_VALUES:
            yield f"{key}[0]={v!r:.40}", {key: [v]}
        if kind == "outbox":
            for inner_kind in ("report", "output"):
                inner = bodies[inner_kind]
                for field in SPECS[inner_kind]:
                    for v in BAD_VALUES:
                        yield (f"items[0].body.{field}={v!r:.40}",
                               {key: [{**item, "type": inner_kind, "body": {**inner, field: v}}]})


def path_variants(route: Route, w: SimpleNamespace) -> list[str]:
    """The route's path filled with a real id or name first, then with odd ones."""
    path = route.path
    params = re.findall(r"<(\w+)(:\w+)?>", path)
    if not params:
        return [path]
    (name, conv), = params
    if conv == ":int":
        real = {"/tasks": w.task, "/executions": w.execution, "/workers": w.worker,
                "/jobs": w.job, "/recruiters": w.recruiter}[path[:path.index("/", 1)]]
        values = [str(real)] + INT_PATH_VALUES
    else:
        real = "rt-keep" if path.startswith("/tokens") else w.host if path.startswith("/host-keys") else w.batch
        values = [real] + [v for v in NAME_PATH_VALUES if not path.startswith("/tokens") or v != "admin"]
    return [re.sub(r"<\w+(:\w+)?>", v, path) for v in values]


def encode(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are what a careless client would send too
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module", params=BACKENDS)
def battery(request, module_servers):
    providers = providers_file(os.path.join(tempfile.mkdtemp(prefix="rob-"), "providers.yaml"))
    srv = module_servers.start(request.param, tokens=(("admin", "admin"), ("rt-keep", "user")),
                               env={"SCITQ_SERVER_CLAIM_WAIT": "0.05", "SCITQ_RECRUIT_PROVIDERS": providers})
    batch = unique("rob")
    worker, wtoken = srv.register(unique("w"), batch=batch)
    task = srv.ok("POST", "/tasks", {"command": "echo hi", "batch": batch})["id"]
    srv.ok("POST", "/tasks", {"command": "echo again", "batch": batch})
    execution = srv.ok("POST", f"/workers/{worker}/claim", {"slots": 1}, token=wtoken)["executions"][0]["id"]
    job = srv.ok("POST", "/jobs", {"kind": "provision", "target": "rob:22"}, status=201)["id"]
    recruiter = srv.ok("POST", "/recruiters", {"batch": unique("rr"), "provider": "none", "flavor": "s4",
                                               "maximum_workers": 1}, status=201)["id"]
    host = unique("rob") + ":22"
    srv.ok("POST", "/host-keys", {"host": host, "key_type": "ssh-ed25519", "key_data": "AAAAC3Nza2V5"})
    client = RawClient("127.0.0.1", srv.proc.port)
    yield SimpleNamespace(srv=srv, batch=batch, worker=worker, worker_token=wtoken, task=task, execution=execution,
                          client=client, job=job, host=host, recruiter=recruiter)
    client.close()


def check(b: SimpleNamespace, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
          token: str | None = "admin", headers: dict[str, str] | None = None,
          statuses: list[int] | None = None) -> str | None:
    """Send one request; return a description of what is wrong with the reply, or None."""
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {b.srv.admin if token == 'admin' else token}"
    if ctype:
        hdrs["Content-Type"] = ctype
    status, raw, _ = b.client.request(method, PREFIX + path, body, hdrs)
    if statuses is not None:
        statuses.append(status)
    where = f"{method} {path[:120]} body={body[:80] if body else body!r}"
    if status >= 500:
        return f"{where} -> {status} {raw[:200]!r}"
    try:
        reply = json.loads(raw)
    except ValueError:
        return f"{where} -> {status} with a non-JSON body {raw[:200]!r}"
    if status >= 400:
        try:
            assert_error_body(reply)
        except AssertionError:
            return f"{where} -> {status} with a malformed error {reply!r:.200}"
    return None


DESTRUCTIVE_LAST = sorted(ROUTES, key=lambda r: (r.method == "DELETE", r.path.startswith("/workers/<")))


@pytest.mark.parametrize("route", DESTRUCTIVE_LAST, ids=[f"{r.method} {r.path}" for r in DESTRUCTIVE_LAST])
def test_no_input_makes_a_route_answer_5xx(battery, route):
    b = battery
    problems: list[str] = []

    def probe(*args: Any, **kw: Any) -> None:
        problem = check(b, *args, **kw)
        if problem:
            problems.append(problem)

    paths = path_variants(route, b)
    m = route.method
    # the battery is only worth something if a valid request gets through to the handler
    valid = encode(valid_bodies(b)[route.body]) if route.body else None
    seen: list[int] = []
    probe(m, paths[0], valid, "application/json" if valid else None, statuses=seen)
    assert seen[0] < 400 or seen[0] in (404, 409), f"the valid request was refused: {seen}"
    # every body case, on the route's real object
    if route.body:
        for label, value in body_cases(route.body, b):
            probe(m, paths[0], encode(value), "application/json")
            escaped = json.dumps(value, allow_nan=True).encode("ascii")
            if b"\\ud8" in escaped:  # the lone surrogate as a \u escape too, not only as raw bytes
                probe(m, paths[0], escaped, "application/json")
        for raw, ctype in RAW_BODIES:
            probe(m, paths[0], raw, ctype)
    else:
        for raw, ctype in RAW_BODIES[:8]:
            probe(m, paths[0], raw, ctype)
    # odd ids and names, with a valid body
    for path in paths[1:]:
        probe(m, path, valid, "application/json" if valid else None)
        probe(m, path, None, None)
    # query parameters: bad values for each, unknown ones, undecodable ones
    for q in route.query:
        for v in BAD_QUERY_VALUES:
            probe(m, f"{paths[0]}?{q.name}={v}")
        probe(m, f"{paths[0]}?{q.name}=1&{q.name}=2")
    for qs in ("zzz=1", "%ff=1", "a%00=1", "&&&", "=", "limit", "x" * 5000):
        probe(m, f"{paths[0]}?{qs}", valid, "application/json" if valid else None)
    # other tokens and broken authorization headers
    for token in (b.worker_token, "scitq_" + "x" * 40, "x" * 10_000):
        probe(m, paths[0], valid, "application/json" if valid else None, token=token)
    for auth in ("Bearer", "Bearer  ", "Basic Zm9vOmJhcg==", "bearer " + b.srv.admin, "Bearer é"):
        probe(m, paths[0], valid, "application/json" if valid else None, token=None,
              headers={"Authorization": auth})
    # other methods on the same path
    for other in ("PUT", "OPTIONS", "TRACE", "PROPFIND"):
        probe(other, paths[0], b"{}", "application/json")
    assert not problems, f"{len(problems)} bad replies:\n" + "\n".join(problems[:40])


def test_odd_urls_and_headers_get_json_errors(battery):
    b = battery
    problems = []
    for path in ("/%ff", "/%00", "/tasks/%ff", "/tasks/1%00", "/" + "a" * 300_000, "/tasks/" + "9" * 5000,
                 "/batches/" + "%ff" * 100, "//tasks", "/tasks/", "/tasks/./1", "/../../etc/passwd"):
        problem = check(b, "GET", path)
        if problem:
            problems.append(problem)
    # a header block over waitress's limit
    problem = check(b, "GET", "/tasks", headers={"X-Big": "a" * 300_000})
    if problem:
        problems.append(problem)
    assert not problems, "\n".join(problems)
