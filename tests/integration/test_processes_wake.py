"""Several server processes on one PostgreSQL database: a task submitted through one wakes
the claims long-polling on the others at once (LISTEN/NOTIFY), not at their own re-check."""
from __future__ import annotations

import threading
import time
from typing import Any

from scitq_app.beats import LISTENING_RECHECK
from tests.support.processes import wait_for

from .conftest import unique

ENV = {"SCITQ_SERVER_CLAIM_WAIT": "30", "SCITQ_SERVER_DISPATCHER": "false"}


def test_a_task_submitted_through_one_process_wakes_a_claim_long_polling_on_another(servers):
    a = servers.start("postgres", env=ENV)
    b = servers.start("postgres", database=a.database, tokens=(), env=ENV)
    # the claim below waits LISTENING_RECHECK s between its own looks at the store
    wait_for(lambda: a.ok("GET", "/health", token=None)["hears_other_processes"], 20, 0.05,
             "server A to listen to the database's announcements")
    worker_id, worker_token = a.register(unique("w"))
    reply: dict[str, Any] = {}

    def claim() -> None:
        reply["claim"] = a.call("POST", f"/workers/{worker_id}/claim", {"slots": 1, "wait": 30}, token=worker_token)
        reply["at"] = time.monotonic()

    poller = threading.Thread(target=claim)
    poller.start()
    try:
        wait_for(lambda: a.ok("GET", "/health", token=None)["long_polls"] == 1, 20, 0.02,
                 "the claim to long-poll on server A")
        task_id = b.ok("POST", "/tasks", {"command": "true", "batch": unique("wake")}, token=a.admin)["id"]
        submitted = time.monotonic()
    finally:
        poller.join(60)
    code, body = reply["claim"]
    assert code == 200, body
    assert [e["task_id"] for e in body["executions"]] == [task_id]
    # its own re-check would have found it LISTENING_RECHECK (5) s after the claim began to wait
    assert reply["at"] - submitted < LISTENING_RECHECK / 5, reply["at"] - submitted
