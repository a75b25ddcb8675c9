"""The Python library against real processes: join, retries, and writes queued through an outage."""
from __future__ import annotations

import threading
import time

import pytest

from scitq_app.client import Pending, Server
from scitq_app.errors import ServerUnreachable


def test_join_waits_for_every_task_relaunches_failures_and_reports_progress_events(cluster, tmp_path):
    marker = tmp_path / "once"
    ids = cluster.client.submit_many(
        [{"command": "echo fine"} for _ in range(5)]
        + [{"command": f"test -e {marker} || {{ touch {marker}; exit 1; }}", "shell": "sh"}])
    cluster.worker("joiner", concurrency=3)
    events: list[dict] = []
    counts = cluster.client.join(ids, retry=1, interval=0.2, on_event=events.append, timeout=60)
    assert counts == {"succeeded": 6}
    assert {e["event"] for e in events} == {"progress", "done"}
    assert events[-1] == dict(events[-2], event="done", relaunched=1)
    assert (events[-1]["done"], events[-1]["total"], events[-1]["detail"]) == (6, 6, {"succeeded": 6})
    assert all(e["what"] == "tasks" and e["unit"] == "tasks" for e in events)
    assert len(cluster.client.executions(ids[-1])) == 2, "the failed task was relaunched once"


def test_join_gives_up_relaunching_after_the_retry_budget(cluster):
    tid = cluster.client.submit("exit 4", shell="sh")["ids"][0]
    cluster.worker("hopeless")
    counts = cluster.client.join([tid], retry=2, interval=0.2, timeout=60)
    assert counts == {"failed": 1}
    assert len(cluster.client.executions(tid)) == 3


def test_join_says_the_server_is_unreachable_and_goes_on_when_it_is_back(cluster):
    tid = cluster.client.submit("true", batch="outage")["ids"][0]
    events: list[dict] = []
    outage = threading.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event["event"] == "outage":
            outage.set()

    client = Server(cluster.server.url, cluster.server.admin_token, timeout=5)
    joiner = threading.Thread(target=lambda: client.join([tid], interval=0.2, on_event=on_event, timeout=120))
    try:
        cluster.server.stop()
        joiner.start()
        assert outage.wait(30), events
        cluster.server.start()
        cluster.worker("after-outage")
        joiner.join(90)
        assert not joiner.is_alive()
    finally:
        client.close()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "outage" and "resumed" in kinds and kinds[-1] == "done", kinds
    first_outage = events[0]
    assert "cannot reach" in first_outage["error"] and first_outage["retry_in"] > 0, first_outage
    assert kinds.index("resumed") < kinds.index("progress")
    assert events[-1]["detail"] == {"succeeded": 1}


def test_resilient_client_queues_writes_in_order_through_a_server_restart(cluster):
    client = Server(cluster.server.url, cluster.server.admin_token, resilient=True, timeout=5)
    try:
        first = client.submit("echo before", batch="queued")
        assert first["ids"], "the server was up: the write went through"
        cluster.server.stop()
        with Server(cluster.server.url) as plain, pytest.raises(ServerUnreachable):
            plain.batches()   # a plain client fails at once
        pending = [client.submit(f"echo during-{i}", batch="queued") for i in range(3)]
        assert all(isinstance(p, Pending) for p in pending)
        time.sleep(1.0)
        assert not any(p.done() for p in pending), "nothing can be written while the server is down"
        reader = threading.Thread(target=lambda: client.batches())  # reads wait for the server too
        reader.start()
        cluster.server.start()
        ids = [p["ids"][0] for p in pending]
        reader.join(30)
        assert not reader.is_alive()
        assert ids == sorted(ids), "queued writes were applied in order"
        tasks = list(client.tasks(batch="queued"))
        assert [t["command"] for t in tasks] == ["echo before", "echo during-0", "echo during-1", "echo during-2"]
    finally:
        client.close()


def test_a_retried_bulk_submission_with_the_same_key_creates_nothing_twice(cluster):
    body = {"tasks": [{"command": "true", "batch": "idem"}] * 3, "key": "retry-key-0001"}
    first = cluster.client.post("/tasks/bulk", body)
    again = cluster.client.post("/tasks/bulk", body)
    assert first["ids"] == again["ids"]
    assert cluster.client.counts("idem") == {"pending": 3}
