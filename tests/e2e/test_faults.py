"""The fault suite: each way a fleet fails, with real processes, on SQLite and PostgreSQL, judged by
the same three numbers: tasks lost, commands completed twice, tasks whose status disagrees with
their last execution. Every command ends by appending to a ledger from a background job it waits
for (a grandchild), so a copy that outlived its agent would show as a second completion."""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import threading

import pytest

from scitq_app import supervisor
from scitq_app.client import Server
from scitq_app.errors import Conflict
from tests.support.cluster import Cluster
from tests.support.postgres import ThrowawayPostgres
from tests.support.processes import read_text, wait_for

BATCH = 24


def _specs(ledger: str, batch: str, seconds: float = 1.5) -> list[dict]:
    # the completion is written by a grandchild: only a copy whose whole tree lived to the end counts;
    # each line says when and from which execution's folder ($TEMP is EXEC_DIR/tmp)
    return [{"command": f"(sleep {seconds}; echo done-{i} $(date +%s.%N) $TEMP >> {ledger}) & wait; echo out-{i}",
             "shell": "sh", "batch": batch, "name": f"t{i}"} for i in range(BATCH)]


def _tally(cluster: Cluster, ids: list[int], ledger: str, may_cancel: frozenset[int] = frozenset(),
           stops: bool = False) -> dict:
    """lost: tasks that did not end as they should (succeeded, or canceled when the test stopped them);
    twice: commands whose completion is in the ledger more than once; disagree: tasks whose status is
    not what their last execution says.

    With `stops` (people stopped running tasks), a command may have written its completion and
    been ended by the stop before it exited: that attempt rightly failed, canceled, and the task
    ran again. Such a completion is not counted twice when its execution was ended by a signal and
    the line was written before its supervisor saw the whole tree dead (exit.json): a copy that
    escaped the stop would write after."""
    tasks = cluster.tasks(ids)
    entries = _entries(ledger)
    if stops:
        entries = [e for e in entries if not _killed_after_writing(e)]
    counts = collections.Counter(name for name, *_ in entries)
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


def _entries(ledger: str) -> list[tuple[str, float, str]]:
    """The ledger's completions: (command name, when, the execution's folder)."""
    if not os.path.exists(ledger):
        return []
    out = []
    for line in read_text(ledger).splitlines():
        name, when, temp = line.split()
        out.append((name, float(when), os.path.dirname(temp)))
    return out


def _killed_after_writing(entry: tuple[str, float, str]) -> bool:
    _, when, exec_dir = entry
    try:
        outcome = json.loads(read_text(os.path.join(exec_dir, supervisor.EXIT)))
        ended = os.stat(os.path.join(exec_dir, supervisor.EXIT)).st_mtime
    except FileNotFoundError:
        return False  # removed: it succeeded (only then are an execution's files dropped)
    return outcome.get("signal") in (signal.SIGTERM, signal.SIGKILL) and when <= ended


CLEAN = {"lost": [], "twice": [], "disagree": []}


def _completions(ledger: str) -> list[str]:
    """The names of the commands in the ledger, once per completion."""
    return [name for name, *_ in _entries(ledger)]


def _story(cluster: Cluster, ids: list[int], ledger: str) -> str:
    """What a failed tally shows: each troubled task's completions (when, by which execution, how
    that execution's supervisor saw it end) and its executions."""
    tally = _tally(cluster, ids, ledger, stops=True)
    troubled = {tid for tid, *_ in tally["disagree"]} | set(tally["lost"])
    out = []
    for tid, t in sorted(cluster.tasks(ids).items()):
        if tid in troubled:
            out.append(f"task {tid} {t['name']} {t['status']}")
            for name, when, exec_dir in _entries(ledger):
                if name == "done-" + t["name"][1:]:
                    path = os.path.join(exec_dir, supervisor.EXIT)
                    end = f"{read_text(path)} at {os.stat(path).st_mtime}" if os.path.exists(path) else "gone"
                    out.append(f"  completed at {when} in {exec_dir}, exit {end}")
            out += [f"  {e}" for e in reversed(cluster.client.executions(tid))]
    return "\n".join(out)


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
    wait_for(lambda: len(set(_completions(ledger))) >= 8,
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
    assert _tally(cluster, ids, ledger, may_cancel=frozenset(stopped), stops=True) == CLEAN, \
        _story(cluster, ids, ledger)


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
