"""The outage log: one line when the server goes, one when it is back, a reminder in between."""
from __future__ import annotations

from scitq_app.outage import Outage, backoff


def test_an_outage_is_said_once_then_reminded_then_its_end_with_duration_and_tries() -> None:
    now = [100.0]
    said: list[str] = []
    outage = Outage("claims", said.append, clock=lambda: now[0], remind=300)
    for _ in range(50):
        outage.failed("connection refused")
        now[0] += 2
    assert said == ["claims: connection refused; retrying (said again when it changes or every 5 min)"]
    for _ in range(110):
        outage.failed("connection refused")
        now[0] += 2
    assert said[1] == "claims: still failing after 151 tries over 300 s: connection refused"
    assert len(said) == 2
    outage.failed("HTTP 502")
    assert said[2] == "claims: HTTP 502 (try 161)"
    outage.ok()
    assert said[3] == "claims: the server answers again after 320 s (161 tries)"
    outage.ok()
    assert len(said) == 4 and not outage.down


def test_backoff_doubles_up_to_its_cap_with_each_wait_in_the_upper_half() -> None:
    delay, waits = 0.5, []
    for r in (0.0, 1.0, 0.5, 0.0, 1.0):
        wait, delay = backoff(delay, 5.0, rand=lambda r=r: r)
        waits.append(wait)
    assert waits == [0.25, 1.0, 1.5, 2.0, 5.0]
    assert delay == 5.0
