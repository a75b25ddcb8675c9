"""The fault suite: each way a fleet fails, with real processes, on SQLite and PostgreSQL, judged by
the same three numbers: tasks lost, commands completed twice, tasks whose status disagrees with
their last execution. Every command ends by appending to a ledger from a background job it waits
for (a grandchild), so a copy that outlived its agent would show as a second completion."""
from __future__ import annotations

import collections
import os
import random
import threading

import pytest

from scitq_app.client import Server
from scitq_app.errors import Conflict
from tests.support.cluster import Cluster
from tests.support.postgres import ThrowawayPostgres
from tests.support.processes import read_text, wait_for

BATCH = 24


def _specs(ledger: str, batch: str, seconds: float = 1.5) -> list[dict]:
    # the completion is written by a grandchild: only a copy whose whole tree lived to the end counts
    return [{"command": f"(sleep {seconds}; echo done-{i} >> {ledger}) & wait; echo out-{i}", "shell": "sh",
             "batch": batch, "name": f"t{i}"} for i in range(BATCH)]


def _tally(cluster: Cluster, ids: list[int], ledger: str, may_cancel: frozenset[int] = frozenset()) -> dict:
    """lost: tasks that did not end as they should (succeeded, or canceled when the test stopped them);
    twice: commands whose completion is in the ledger more than once; disagree: tasks whose status is
    not what their last execution says."""
    tasks = cluster.tasks(ids)
    counts = collections.Counter(read_text(ledger).split() if os.path.exists(ledger) else [])
    names = {tid: t["name"] for tid, t in tasks.items()}
    lost = [tid for tid, t in tasks.items()
            if not (t["status"] == "succeeded" or (t["status"] == "canceled" and tid in may_cancel))]
    twice = [n for n, c in counts.items() if c > 1]
    disagree = []
    for tid, t in tasks.items():
        executions = cluster.client.executions(tid)  # newest first
        last = executions[0]["status"] if executions else None
        if t["status"] == "succeeded":
            ok = last == "succeeded" and counts[f"done-{names[tid][1:]}"] == 1
        elif t["status"] == "canceled":
            ok = last in (None, "failed")
        else:
            ok = False
        if not ok:
            disagree.append((tid, t["status"], last))
    return {"lost": lost, "twice": twice, "disagree": disagree}


CLEAN = {"lost": [], "twice": [], "disagree": []}


def _running(cluster: Cluster, ids: list[int], at_least: int) -> None:
    wait_for(lambda: sum(t["status"] == "running" for t in cluster.tasks(ids).values()) >= at_least, 30,
             what=f"{at_least} running tasks")


def test_an_agent_killed_for_good_mid_batch(cluster, tmp_path):
    # The tasks outlast the supervisors' deadline (half the 3 s lease) after the kill: a copy that
    # completed before it, with no agent left to report it, would rightly run again (at least once).
    ledger = str(tmp_path / "ledger")
    ids = cluster.client.submit_many(_specs(ledger, "k9", seconds=4))
    doomed = cluster.worker("doomed", concurrency=4)
    cluster.worker("steady", concurrency=4)
    _running(cluster, ids, 8)
    doomed.proc.kill()  # its supervisors stay, then kill their trees before the server requeues
    cluster.wait_final(ids, timeout=90)
    assert _tally(cluster, ids, ledger) == CLEAN, cluster.diagnostics()
    lost = [e for tid in ids for e in cluster.client.executions(tid) if e["worker_name"] == "doomed"
            and e["status"] == "failed"]
    assert lost and {e["failure_class"] for e in lost} == {"lost"}, "the killed agent's tasks ran elsewhere"


def test_an_agent_killed_and_restarted_mid_batch(patient_cluster, tmp_path):
    cluster = patient_cluster
    ledger = str(tmp_path / "ledger")
    ids = cluster.client.submit_many(_specs(ledger, "phoenix", seconds=2))
    w = cluster.worker("phoenix", concurrency=6)
    _running(cluster, ids, 6)
    w.proc.kill()
    w.proc.wait(5)
    w.start()  # adopts what its predecessor started
    cluster.wait_final(ids, timeout=90)
    assert _tally(cluster, ids, ledger) == CLEAN
    attempts = [len(cluster.client.executions(tid)) for tid in ids]
    assert attempts == [1] * BATCH, "an agent restart costs no attempt"


def test_the_server_down_for_8_s_mid_batch(cluster, tmp_path):
    ledger = str(tmp_path / "ledger")
    ids = cluster.client.submit_many(_specs(ledger, "outage", seconds=2))
    cluster.worker("w1", concurrency=4)
    cluster.worker("w2", concurrency=4)
    _running(cluster, ids, 8)
    cluster.server.kill()
    wait_for(lambda: len(collections.Counter(read_text(ledger).split()) if os.path.exists(ledger) else []) >= 8,
             30, what="tasks finishing while the server is down")
    cluster.server.start()
    cluster.wait_final(ids, timeout=90)
    assert _tally(cluster, ids, ledger) == CLEAN


def test_batch_and_task_control_racing_a_running_batch(cluster, tmp_path, request):
    ledger = str(tmp_path / "ledger")
    ids = cluster.client.submit_many(_specs(ledger, "storm", seconds=0.5))
    cluster.worker("w1", concurrency=3)
    cluster.worker("w2", concurrency=3)
    rng = random.Random(9)
    stopped: set[int] = set()
    controller = Server(cluster.server.url, cluster.server.admin_token)
    request.addfinalizer(controller.close)  # also when the test fails: no socket left to the collector
    errors: list[BaseException] = []

    def storm() -> None:
        try:
            _storm()
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    def _storm() -> None:
        for _ in range(40):
            action = rng.choice(["pause", "pause-signal", "go", "stop", "task-stop", "go"])
            if action == "task-stop":
                tid = rng.choice(ids)
                stopped.add(tid)
                try:
                    controller.signal_task(tid, "stop")
                except Conflict:
                    pass  # it had ended already (succeeded, or stopped before): the refusal is right
            elif action == "pause":
                controller.pause_batch("storm")
            elif action == "pause-signal":
                controller.pause_batch("storm", signal="pause")  # SIGSTOPs the running ones
            elif action == "go":
                controller.go_batch("storm")
            else:
                controller.stop_batch("storm")  # running ones are ended and go back to pending
    threads = [threading.Thread(target=storm) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    controller.go_batch("storm")
    cluster.wait_final(ids, timeout=120)
    assert _tally(cluster, ids, ledger, may_cancel=frozenset(stopped)) == CLEAN


def test_postgresql_restarting_mid_batch(tmp_path):
    pg = ThrowawayPostgres()
    if not pg.available():
        pytest.fail("PostgreSQL binaries are needed (tests/run.sh installs them)")
    dsn = pg.start()
    cluster = Cluster(dsn, str(tmp_path)).start()
    try:
        ledger = str(tmp_path / "ledger")
        ids = cluster.client.submit_many(_specs(ledger, "pg", seconds=2))
        w = cluster.worker("w1", concurrency=6)
        _running(cluster, ids, 6)
        pg.pause()
        wait_for(lambda: "unavailable" in w.log(), 20, what="the worker to see the outage")
        pg.resume()
        cluster.wait_final(ids, timeout=120)
        assert _tally(cluster, ids, ledger) == CLEAN, cluster.diagnostics()
        assert w.proc.poll() is None, "the worker rode out the outage"
    finally:
        cluster.stop()
        pg.stop()
