"""End to end: a real server and real worker processes run real commands."""
from __future__ import annotations

import json
import os
import signal
import time


from tests.support.cluster import Cluster
from tests.support.processes import read_text, wait_for


def _pid_of(cluster: Cluster, worker, execution_id: int) -> int:
    """The command's pid, as its supervisor records it."""
    path = os.path.join(worker.workdir, f"exec-{execution_id}", "supervisor.json")
    return int(json.loads(wait_for(lambda: os.path.exists(path) and read_text(path), 10, what=path))["command_pid"])


def _state(pid: int) -> str:
    return read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]


def test_two_workers_run_a_mixed_batch_of_200_tasks_to_the_right_end(cluster, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    specs = []
    for i in range(120):
        specs.append({"command": f"echo ok-{i}", "name": f"ok-{i}", "batch": "mix"})
    for i in range(30):
        specs.append({"command": f"echo sh-{i} | tr a-z A-Z", "shell": "sh", "name": f"sh-{i}", "batch": "mix"})
    for i in range(20):
        specs.append({"command": f"if [ -e {flags}/f{i} ]; then echo second-try; else touch {flags}/f{i}; exit 1; fi",
                      "shell": "sh", "max_retries": 1, "name": f"retry-{i}", "batch": "mix"})
    for i in range(20):
        specs.append({"command": "sh -c 'echo doomed >&2; exit 3'", "max_retries": 1, "name": f"fail-{i}",
                      "batch": "mix"})
    for i in range(10):
        specs.append({"command": "sleep 30", "run_timeout": 1, "name": f"timeout-{i}", "batch": "mix"})
    ids = cluster.client.submit_many(specs)
    assert len(ids) == 200
    cluster.worker("w1", concurrency=6)
    cluster.worker("w2", concurrency=6)
    tasks = cluster.wait_final(ids, timeout=120)
    by_name = {t["name"]: t for t in tasks.values()}
    counts = cluster.client.counts("mix")
    assert counts == {"succeeded": 170, "failed": 30}
    assert cluster.output(by_name["ok-7"]["id"]) == "ok-7\n"
    assert cluster.output(by_name["sh-3"]["id"]) == "SH-3\n"
    retried = by_name["retry-4"]
    assert retried["status"] == "succeeded" and retried["attempts"] == 2 and retried["retries_used"] == 1
    assert cluster.output(retried["id"]) == "second-try\n"
    failed = by_name["fail-2"]
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert cluster.output(failed["id"], "stderr") == "doomed\n"
    executions = cluster.client.executions(failed["id"])
    assert [e["return_code"] for e in executions] == [3, 3]
    assert {e["failure_class"] for e in executions} == {"app"}
    timed = cluster.client.executions(by_name["timeout-5"]["id"])
    assert len(timed) == 1 and timed[0]["failure_class"] == "timeout"
    assert "run_timeout of 1 s reached" in cluster.output(by_name["timeout-5"]["id"], "stderr")
    workers = {w["name"]: w for w in cluster.client.workers()}
    assert set(workers) == {"w1", "w2"}
    ran_on = {e["worker_name"] for t in list(tasks.values())[:200:10] for e in cluster.client.executions(t["id"])}
    assert ran_on == {"w1", "w2"}, "both workers took part"


def test_a_healthy_worker_keeps_a_task_three_times_longer_than_the_lease(cluster):
    tid = cluster.client.submit("sleep 10; echo long", shell="sh")["ids"][0]  # lease is 3 s
    cluster.worker("steady")
    done = cluster.wait_final([tid], timeout=40)[tid]
    assert done["status"] == "succeeded"
    executions = cluster.client.executions(tid)
    assert len(executions) == 1 and executions[0]["status"] == "succeeded"


def test_signals_pause_resume_stop_and_kill_reach_the_running_process(cluster):
    w = cluster.worker("sig", concurrency=2)
    paused_id = cluster.client.submit("sleep 60")["ids"][0]
    task = cluster.wait_status(paused_id, "running")
    pid = _pid_of(cluster, w, task["current_execution_id"])
    cluster.client.signal_task(paused_id, "pause")
    wait_for(lambda: _state(pid) == "T", 10, what="SIGSTOP")
    assert cluster.client.task(paused_id)["status"] == "paused"
    cluster.client.signal_task(paused_id, "resume")
    wait_for(lambda: _state(pid) in "RS", 10, what="SIGCONT")
    assert cluster.client.task(paused_id)["status"] == "running"
    cluster.client.signal_task(paused_id, "stop")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", 15, what="SIGTERM")
    execution = wait_for(lambda: (e := cluster.client.executions(paused_id)[0])["status"] == "failed" and e, 15)
    assert execution["failure_class"] == "canceled" and execution["return_code"] == 128 + signal.SIGTERM
    assert cluster.client.task(paused_id)["status"] == "canceled"

    killed_id = cluster.client.submit("trap '' TERM; sleep 60", shell="sh")["ids"][0]
    task = cluster.wait_status(killed_id, "running")
    cluster.client.signal_task(killed_id, "kill")
    execution = wait_for(lambda: (e := cluster.client.executions(killed_id)[0])["status"] == "failed" and e, 15)
    assert execution["return_code"] == 128 + signal.SIGKILL
    assert cluster.client.task(killed_id)["status"] == "canceled"


def test_batch_pause_and_go_and_live_concurrency_changes(cluster):
    w = cluster.worker("live", concurrency=1)
    wid = wait_for(lambda: [x["id"] for x in cluster.client.workers() if x["name"] == "live"], 20)[0]
    cluster.client.create_batch("held")
    cluster.client.pause_batch("held")
    ids = cluster.client.submit_many([{"command": "sleep 2", "batch": "held"} for _ in range(6)])
    time.sleep(1.5)  # a claim poll cycle: nothing may start while paused
    assert cluster.client.counts("held") == {"pending": 6}
    cluster.client.go_batch("held")
    wait_for(lambda: cluster.client.counts("held").get("running") == 1, 10, what="one running task")
    cluster.client.update_worker(wid, concurrency=3)
    wait_for(lambda: cluster.client.counts("held").get("running") == 3, 10, what="three running tasks")
    cluster.wait_final(ids, timeout=40)
    assert cluster.client.counts("held") == {"succeeded": 6}
    assert w.proc.poll() is None


def test_batch_stop_ends_running_tasks_which_go_back_to_pending_without_spending_retries(cluster):
    cluster.worker("stopper", concurrency=2)
    ids = cluster.client.submit_many([{"command": "sleep 60", "batch": "halt"} for _ in range(2)])
    wait_for(lambda: cluster.client.counts("halt").get("running") == 2, 15)
    cluster.client.stop_batch("halt", "term")
    wait_for(lambda: cluster.client.counts("halt") == {"pending": 2}, 20, what="tasks back to pending")
    for tid in ids:
        assert cluster.client.task(tid)["retries_used"] == 0
        assert cluster.client.executions(tid)[0]["failure_class"] == "canceled"


def test_worker_sigterm_finishes_running_tasks_then_a_second_one_cancels_them(cluster):
    w = cluster.worker("graceful", concurrency=1)
    tid = cluster.client.submit("sleep 2; echo graceful", shell="sh")["ids"][0]
    cluster.wait_status(tid, "running")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    assert cluster.client.task(tid)["status"] == "succeeded"
    assert cluster.output(tid) == "graceful\n"

    w2 = cluster.worker("impatient", concurrency=1)
    tid2 = cluster.client.submit("sleep 60")["ids"][0]
    cluster.wait_status(tid2, "running")
    w2.signal(signal.SIGTERM)
    time.sleep(0.3)
    w2.signal(signal.SIGTERM)
    assert w2.wait(30) == 0
    t = cluster.client.task(tid2)
    assert t["status"] == "pending" and t["retries_used"] == 0, "a canceled attempt is handed back, not lost"
    assert cluster.client.executions(tid2)[0]["failure_class"] == "canceled"
