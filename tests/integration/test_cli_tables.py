"""Human tables and `show` fields read right: workers per batch from live assignments, the
empty `Default` batch hidden, spent retries apart from attempts, aligned fields, formatted
stats. Real `scitq` processes against a real server (each test on a fresh database, since
`Default` and the batch list are global)."""
from __future__ import annotations

import re

import pytest

from tests.integration.conftest import cli, wait_for

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def srv(request, servers):
    return servers.start(request.param)


def env_for(srv) -> dict[str, str]:
    return {"SCITQ_SERVER": srv.url, "SCITQ_TOKEN": srv.admin}


def table(text: str) -> list[list[str]]:
    """Rows of a table as cells (columns are separated by two spaces or more)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def test_batch_list_hides_an_empty_default_and_counts_live_workers(srv):
    r = cli("batch", "list", env=env_for(srv))
    assert r.code == 0 and r.out == "(no batches)\n", r
    assert [b["name"] for b in cli("batch", "list", "--json", env=env_for(srv)).json()] == ["Default"]
    for _ in range(3):
        srv.ok("POST", "/tasks", {"command": "x", "batch": "rna"})
    wid, token = srv.register()   # not pinned to any batch
    eid = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"][0]["id"]
    srv.ok("POST", f"/executions/{eid}/report", {"phase": "running"}, token=token)
    rows = table(cli("batch", "list", env=env_for(srv)).out)
    assert rows == [["NAME", "STATUS", "PRIO", "WORKERS", "TASKS"],
                    ["rna", "running", "0", "1", "2 pending, 1 running"]], rows
    srv.ok("POST", "/tasks", {"command": "x"})  # something in Default: listed
    rows = table(cli("batch", "list", env=env_for(srv)).out)
    assert [r[0] for r in rows] == ["NAME", "Default", "rna"]


def test_task_list_shows_attempts_and_spent_retries_apart(srv):
    t = srv.ok("POST", "/tasks", {"command": "x", "batch": "tries", "max_retries": 2})
    wid, token = srv.register()
    for _ in range(2):  # two attempts stopped with the batch: no retry spent
        eid = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"][0]["id"]
        srv.ok("POST", f"/executions/{eid}/report", {"phase": "running"}, token=token)
        srv.ok("POST", "/batches/tries/stop", {"signal": "term"})
        srv.ok("POST", f"/executions/{eid}/report", {"phase": "failed", "return_code": 143,
                                                     "failure_class": "canceled"}, token=token)
        srv.ok("POST", "/batches/tries/go", {})
    eid = srv.ok("POST", f"/workers/{wid}/claim", {"slots": 1}, token=token)["executions"][0]["id"]
    srv.ok("POST", f"/executions/{eid}/report", {"phase": "failed", "return_code": 1, "failure_class": "app"},
           token=token)
    task = srv.ok("GET", f"/tasks/{t['id']}")
    rows = table(cli("task", "list", "--batch", "tries", env=env_for(srv)).out)
    assert rows[0] == ["ID", "BATCH", "NAME", "STATUS", "ATTEMPTS", "RETRIES", "COMMAND"]
    assert rows[1] == [str(t["id"]), "tries", "-", task["status"], "3", "1/2", "x"], (rows, task)
    out = cli("task", "show", str(t["id"]), env=env_for(srv)).out
    assert "\nattempts:       3\nretries:        1 of 2 spent\n" in out, out


def test_show_commands_print_aligned_fields_and_formatted_stats(srv):
    wid, token = srv.register(name="w-show", batch="shown")
    stats = {"cpu": 12.5, "iowait": 0.5, "load": [0.52, 0.4, 0.3], "mem": 43.2, "disk": 61.0, "disk_free_gb": 12.3,
             "net_rx_mbs": 0.01, "net_tx_mbs": 0.0, "disk_read_mbs": 0.0, "disk_write_mbs": 0.1}
    srv.ok("POST", f"/workers/{wid}/heartbeat", {"stats": stats, "executions": []}, token=token)
    # heartbeats are written behind (beats.py): wait until the stats are readable
    wait_for(lambda: srv.ok("GET", f"/workers/{wid}")["stats"], what="the heartbeat's stats")
    r = cli("worker", "show", "w-show", env=env_for(srv))
    assert r.code == 0, r
    lines = r.out.splitlines()
    keyed = [ln for ln in lines if re.match(r"^\w+:", ln)]
    assert len({len(re.match(r"^\w+:\s+", ln).group(0)) for ln in keyed}) == 1, "values start in one column"
    assert "{" not in r.out and "'" not in r.out, "no Python dict"
    start = lines.index(next(ln for ln in lines if ln.startswith("stats:")))
    column = len(re.match(r"^stats:\s+", lines[start]).group(0))
    assert [ln[column:] for ln in lines[start:start + 6]] == [
        "load   0.52 0.4 0.3", "cpu    12.5% cpu, 0.5% iowait", "mem    43.2% used",
        "disk   61% used, 12.3 GiB free", "net     0.01 MB/s in, 0 MB/s out", "disk io 0 MB/s read, 0.1 MB/s write"]
    r = cli("batch", "show", "shown", env=env_for(srv))
    assert r.out.splitlines()[:4] == ["name:     shown", "status:   running", "priority: 0", "workers:  1"], r
    assert "tasks:    none" in r.out
