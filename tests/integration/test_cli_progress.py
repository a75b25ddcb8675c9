"""Long commands and several-object commands as people run them: `task wait` (the progress
convention: plain lines off a terminal, JSON events on request), `task output` of several
tasks. Real `scitq` processes against a real server; the worker side is played over HTTP."""
from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, cli, scitq_env, unique

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="module", params=BACKENDS)
def srv(request, module_servers):
    return module_servers.start(request.param)


def env_for(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


def run_one(srv, wid: int, token: str, stdout: str = "", rc: int = 0) -> int:
    """Claim one task as worker `wid`, print `stdout`, end it with return code `rc`."""
    eid = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"][0]["id"]
    srv.ok("POST", f"/executions/{eid}/report", {"phase": "running"}, token=token)
    if stdout:
        srv.ok("POST", f"/executions/{eid}/output", {"stream": "stdout", "offset": 0, "final": True,
                                                     "data": base64.b64encode(stdout.encode()).decode()}, token=token)
    phase = "succeeded" if rc == 0 else "failed"
    srv.ok("POST", f"/executions/{eid}/report", {"phase": phase, "return_code": rc,
                                                 **({"failure_class": "app"} if rc else {})}, token=token)
    return eid


def test_task_output_of_several_tasks_heads_each(srv):
    batch = unique("outs")
    a = srv.ok("POST", "/tasks", {"command": "a", "batch": batch, "name": "first"})
    b = srv.ok("POST", "/tasks", {"command": "b", "batch": batch})
    c = srv.ok("POST", "/tasks", {"command": "c", "batch": batch, "name": "silent"})
    wid, token = srv.register(batch=batch)
    run_one(srv, wid, token, "one\n")
    run_one(srv, wid, token, "two, no newline")
    run_one(srv, wid, token)
    r = cli("task", "output", str(a["id"]), str(b["id"]), str(c["id"]), env=env_for(srv))
    assert r.code == 0, r
    assert r.out == (f"==> task {a['id']} (first) <==\none\n\n==> task {b['id']} <==\ntwo, no newline\n\n"
                     f"==> task {c['id']} (silent) <==\n(no output)\n"), r.out
    r = cli("task", "output", str(a["id"]), str(b["id"]), "--json", env=env_for(srv))
    parts = r.json()
    assert [p["data"] for p in parts] == ["one\n", "two, no newline"]
    assert [p["source"] for p in parts] == [f"task {a['id']} (first)", f"task {b['id']}"]
    r = cli("task", "output", str(a["id"]), str(b["id"]), "--execution", "1", env=env_for(srv))
    assert r.code == 2 and r.err_lines[0] == "scitq task output: --execution goes with one task id", r


def test_task_output_follows_several_tasks_at_once(srv):
    batch = unique("follow")
    ids = [srv.ok("POST", "/tasks", {"command": "x", "batch": batch})["id"] for _ in range(2)]
    wid, token = srv.register(batch=batch, concurrency=2)
    eids = [e["id"] for e in srv.ok("POST", f"/workers/{wid}/claim", {"slots": 2}, token=token)["executions"]]
    assert len(eids) == 2
    for eid in eids:
        srv.ok("POST", f"/executions/{eid}/report", {"phase": "running"}, token=token)
    proc = subprocess.Popen([sys.executable, "-m", "scitq_app", "task", "output", "--follow", *map(str, ids)],
                            cwd=ROOT, env=scitq_env(**env_for(srv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def say(i: int, text: str, offset: int = 0) -> None:
        srv.ok("POST", f"/executions/{eids[i]}/output", {"stream": "stdout", "offset": offset,
                                                         "data": base64.b64encode(text.encode()).decode()}, token=token)
    try:
        say(0, "first of 0\n")
        assert proc.stdout.readline() == f"==> task {ids[0]} <==\n"
        assert proc.stdout.readline() == "first of 0\n"  # printed while both still run
        say(1, "first of 1\n")
        assert proc.stdout.readline() == "\n"
        assert proc.stdout.readline() == f"==> task {ids[1]} <==\n"
        assert proc.stdout.readline() == "first of 1\n"
        for eid in eids:
            srv.ok("POST", f"/executions/{eid}/report", {"phase": "succeeded", "return_code": 0}, token=token)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out == "", (out, err)


def test_task_wait_shows_plain_lines_off_a_terminal_and_exits_0_when_all_succeeded(srv):
    batch = unique("wait")
    ids = [srv.ok("POST", "/tasks", {"command": "x", "batch": batch})["id"] for _ in range(3)]
    wid, token = srv.register(batch=batch)
    proc = subprocess.Popen([sys.executable, "-m", "scitq_app", "task", "wait", "--batch", batch,
                             "--interval", "0.1"], cwd=ROOT, env=scitq_env(**env_for(srv)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # its first look, printed at once: nothing has run yet
        for _ in ids:
            run_one(srv, wid, token, "ok\n")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert first == "0/3 tasks (3 pending)\n", first
    lines = err.splitlines()
    assert lines[-1].startswith("done: 3/3 tasks (3 succeeded) in "), err
    assert "\r" not in err and "\x1b" not in err and out == ""


def test_task_wait_json_events_and_exit_1_when_some_failed(srv):
    batch = unique("waitf")
    ids = [srv.ok("POST", "/tasks", {"command": "x", "batch": batch})["id"] for _ in range(2)]
    wid, token = srv.register(batch=batch)
    run_one(srv, wid, token, rc=0)
    run_one(srv, wid, token, rc=3)
    r = cli("task", "wait", *map(str, ids), "--json", env=env_for(srv))
    assert r.code == 1 and r.err == "", r
    events = [json.loads(line) for line in r.out.splitlines()]
    assert [e["event"] for e in events] == ["progress", "done"]
    assert events[-1]["detail"] == {"failed": 1, "succeeded": 1} and events[-1]["total"] == 2
    missing = unique("none")
    r = cli("task", "wait", "--batch", missing, env=env_for(srv))
    assert r.code == 4 and r.err_lines == [f"scitq: no batch named {missing!r}"], r
    srv.ok("POST", "/batches", {"name": missing})
    r = cli("task", "wait", "--batch", missing, env=env_for(srv))
    assert r.code == 4 and r.err_lines == [f"scitq: batch {missing!r} has no tasks"], r
