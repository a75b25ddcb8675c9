"""Steering a running worker: pause, drain, clean, hand back on stop, dependencies, stats."""
from __future__ import annotations

import os
import signal
import time


from tests.support.cluster import Cluster
from tests.support.processes import wait_for


def _worker_id(cluster: Cluster, name: str) -> int:
    return wait_for(lambda: [w["id"] for w in cluster.client.workers() if w["name"] == name], 20,
                    what=f"worker {name} to register")[0]


def test_a_paused_worker_finishes_its_task_and_claims_nothing_more_until_resumed(cluster):
    cluster.worker("pausable")
    wid = _worker_id(cluster, "pausable")
    first = cluster.client.submit("sleep 1; echo first", shell="sh")["ids"][0]
    cluster.wait_status(first, "running")
    cluster.client.update_worker(wid, status="paused")
    second = cluster.client.submit("echo second")["ids"][0]
    cluster.wait_final([first], 20)
    time.sleep(2)  # a few claim rounds: the paused worker must leave the new task alone
    assert cluster.client.task(second)["status"] == "pending"
    cluster.client.update_worker(wid, status="running")
    assert cluster.wait_final([second], 20)[second]["status"] == "succeeded"


def test_a_draining_worker_finishes_what_it_runs_then_exits(cluster):
    w = cluster.worker("drainer")
    wid = _worker_id(cluster, "drainer")
    tid = cluster.client.submit("sleep 1; echo drained", shell="sh")["ids"][0]
    cluster.wait_status(tid, "running")
    cluster.client.update_worker(wid, status="draining")
    assert w.wait(30) == 0
    assert cluster.client.task(tid)["status"] == "succeeded"
    assert "drained, exiting" in w.log()


def test_clean_removes_the_work_dirs_kept_for_failed_executions(cluster, tmp_path):
    cluster.worker("cleaner")
    wid = _worker_id(cluster, "cleaner")
    tid = cluster.client.submit("exit 3", shell="sh")["ids"][0]
    eid = cluster.wait_final([tid], 20)[tid]["current_execution_id"]
    kept = tmp_path / "cleaner" / f"exec-{eid}"
    assert kept.is_dir(), "a failed execution's work dir is kept for inspection"
    cluster.client.signal_worker(wid, "clean")
    wait_for(lambda: not kept.exists(), 20, what="the clean signal to remove it")


def test_on_stop_handback_gives_running_tasks_back_at_the_first_sigterm(cluster):
    w = cluster.worker("leaver", env={"SCITQ_WORKER_ON_STOP": "handback"})
    tid = cluster.client.submit("sleep 60")["ids"][0]
    cluster.wait_status(tid, "running")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    task = cluster.client.task(tid)
    assert task["status"] == "pending" and task["retries_used"] == 0
    assert cluster.client.executions(tid)[0]["failure_class"] == "canceled"


def test_dependent_tasks_run_after_their_requirements_and_a_failed_one_blocks(cluster):
    a = cluster.client.submit("echo a")["ids"][0]
    bad = cluster.client.submit("exit 1", shell="sh")["ids"][0]
    b = cluster.client.submit("echo b", requires=[a])["ids"][0]
    c = cluster.client.submit("echo c", requires=[bad])["ids"][0]
    assert cluster.client.task(b)["status"] == "waiting"
    cluster.worker("chain")
    done = cluster.wait_final([a, bad, b], 30)
    assert done[b]["status"] == "succeeded"
    first_b = cluster.client.executions(b)[0]
    assert first_b["started"] >= cluster.client.executions(a)[0]["finished"]
    blocked = cluster.client.task(c)
    assert blocked["status"] == "waiting" and blocked["blocked"] is True


def test_the_worker_reports_its_host_statistics(cluster):
    cluster.worker("stats")
    wid = _worker_id(cluster, "stats")
    stats = wait_for(lambda: (s := cluster.client.worker(wid)["stats"]).get("load") and s, 20,
                     what="a heartbeat with stats")
    for key in ("load", "cpu", "mem", "disk", "net_rx_mbs", "net_tx_mbs", "version"):
        assert key in stats, key
    assert os.cpu_count() == int(cluster.client.worker(wid)["cpu"])


def test_an_upgrade_signal_lets_running_tasks_finish_hands_back_the_rest_and_exits_75(cluster):
    w = cluster.worker("upgraded", concurrency=1, prefetch=1)
    running = cluster.client.submit("sleep 2; echo finished", shell="sh")["ids"][0]
    cluster.wait_status(running, "running")
    queued = cluster.client.submit("echo later")["ids"][0]
    wait_for(lambda: cluster.client.task(queued)["status"] == "assigned", 20, what="the prefetched task")
    w.signal(signal.SIGUSR1)
    assert w.wait(30) == 75, w.log()
    assert cluster.client.task(running)["status"] == "succeeded"
    assert cluster.output(running) == "finished\n"
    back = cluster.client.task(queued)
    assert (back["status"], back["retries_used"]) == ("pending", 0)
    assert "drained for the upgrade" in w.log()


def test_an_upgrade_past_its_deadline_hands_running_tasks_back_without_spending_a_retry(cluster):
    w = cluster.worker("deadline", env={"SCITQ_WORKER_UPGRADE_DEADLINE": "1"})
    tid = cluster.client.submit("sleep 60")["ids"][0]
    cluster.wait_status(tid, "running")
    w.signal(signal.SIGUSR1)
    assert w.wait(30) == 75, w.log()
    task = cluster.client.task(tid)
    assert (task["status"], task["retries_used"]) == ("pending", 0)
    assert cluster.client.executions(tid)[0]["failure_class"] == "canceled"
    assert "upgrade deadline reached" in w.log()
