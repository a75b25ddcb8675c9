"""A `scitq server` told to stop (SIGTERM) answers the claims it holds in long polls at once,
with nothing, and exits: waitress waits for its threads (up to 5 s, then warns that some are
"still running"), and a long poll would otherwise hold the stop for the rest of its wait.
Real server processes on both databases, real HTTP."""
from __future__ import annotations

import signal
import threading

import pytest

from tests.support.processes import wait_for


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_stopping_server_answers_its_long_polled_claims_at_once(servers, backend):
    srv = servers.start(backend, env={"SCITQ_SERVER_CLAIM_WAIT": "60"})
    wid, token = srv.register(batch="empty")
    outcome: list[BaseException | tuple[int, object]] = []

    def claim() -> None:
        try:
            outcome.append(srv.call("POST", f"/workers/{wid}/claim", {"slots": 1, "wait": 25}, token=token))
        except Exception as e:  # noqa: BLE001 - what the claim got is the test's subject
            outcome.append(e)
    poll = threading.Thread(target=claim)
    poll.start()
    wait_for(lambda: srv.ok("GET", "/health")["long_polls"] == 1, 20, what="the claim to wait")
    proc = srv.proc.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    poll.join(30)
    assert outcome == [(200, {"executions": []})]
    log = srv.proc.log()
    assert "serving on" in log and "still running" not in log, log[-2000:]
