"""Each plain task runs under its own supervisor: a killed agent costs no work when it comes back,
and never leaves a live copy behind when it does not (grandchildren included)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time


from scitq_app import supervisor
from scitq_app.runner import kill_group, process_identity
from tests.support.cluster import Cluster
from tests.support.processes import read_text, wait_for


def _state(worker, execution_id: int) -> dict:
    path = os.path.join(worker.workdir, f"exec-{execution_id}", supervisor.STATE)
    return json.loads(wait_for(lambda: os.path.exists(path) and read_text(path), 10, what=path))


def _tree(root: int) -> set[int]:
    """The live processes below `root`."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = read_text(f"/proc/{name}/stat")
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state != "Z":
                children.setdefault(int(ppid), []).append(int(name))
    found, todo = set(), [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.add(pid)
            todo.append(pid)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if supervisor.start_time(p) is not None}


def _ledger_lines(path: str) -> list[str]:
    return read_text(path).split() if os.path.exists(path) else []


def test_a_killed_agent_that_does_not_come_back_leaves_no_live_copy_before_the_server_requeues(cluster, tmp_path):
    ledger = str(tmp_path / "ledger")
    # the background job escapes the process group (setsid): only the subreaper supervisor can find it
    command = (f"setsid sh -c 'sleep 5; echo grandchild >> {ledger}' & "
               f"sleep 6; echo main >> {ledger}; echo finished")
    tid = cluster.client.submit(command, shell="sh", batch="k9")["ids"][0]
    doomed = cluster.worker("doomed")
    task = cluster.wait_status(tid, "running")
    eid = task["current_execution_id"]
    state = _state(doomed, eid)
    tree = wait_for(lambda: len(t := _tree(state["pid"])) >= 4 and t, 10, what="the task's process tree")
    doomed.proc.kill()  # kill -9 of the agent alone: its supervisor stays
    doomed.proc.wait(5)
    assert supervisor.start_time(state["pid"]) is not None, "the supervisor outlives its agent"

    def tree_gone() -> bool:
        execution = cluster.client.executions(tid)[-1]
        assert execution["id"] == eid and execution["status"] == "running", \
            "the server gave the task up while a copy of it still ran"
        return not _alive(tree | {state["pid"]})
    wait_for(tree_gone, 10, 0.02, "the supervisor to kill the whole tree")

    cluster.worker("rescuer")
    done = cluster.wait_final([tid], timeout=40)[tid]
    assert done["status"] == "succeeded"
    executions = cluster.client.executions(tid)
    assert [(e["worker_name"], e["status"]) for e in executions] == [("rescuer", "succeeded"), ("doomed", "failed")]
    assert executions[1]["failure_class"] == "lost"
    assert done["retries_used"] == 0, "a lost worker does not spend the task's retries"
    assert sorted(_ledger_lines(ledger)) == ["grandchild", "main"], "each part of the command completed once"
    assert cluster.output(tid) == "finished\n"


def test_a_restarted_agent_adopts_its_running_tasks_and_those_that_ended_while_it_was_away(patient_cluster,
                                                                                           tmp_path):
    cluster = patient_cluster
    ledger = str(tmp_path / "ledger")
    specs = [{"command": f"sleep {0.2 if i < 2 else 4}; echo done-{i} >> {ledger}; echo out-{i}; echo err-{i} >&2",
              "shell": "sh", "batch": "adopt", "name": f"t{i}"} for i in range(4)]
    ids = cluster.client.submit_many(specs)
    w = cluster.worker("phoenix", concurrency=4)
    wait_for(lambda: all(t["status"] == "running" for t in cluster.tasks(ids).values()), 20, what="4 running tasks")
    w.proc.kill()
    w.proc.wait(5)
    short = [cluster.tasks(ids)[tid]["current_execution_id"] for tid in ids[:2]]
    wait_for(lambda: all(os.path.exists(os.path.join(w.workdir, f"exec-{e}", supervisor.EXIT)) for e in short),
             10, what="the short tasks to end while no agent runs")
    w.start()  # the same worker, same work dir: it adopts all four
    tasks = cluster.wait_final(ids, timeout=40)
    assert {t["status"] for t in tasks.values()} == {"succeeded"}
    for i, tid in enumerate(ids):
        executions = cluster.client.executions(tid)
        assert [e["status"] for e in executions] == ["succeeded"], f"task t{i} ran once, its only attempt kept"
        assert cluster.output(tid) == f"out-{i}\n"
        assert cluster.output(tid, "stderr") == f"err-{i}\n"
    assert sorted(_ledger_lines(ledger)) == [f"done-{i}" for i in range(4)]
    assert "adopted" in w.log()


def test_an_idle_agent_breaks_off_its_long_poll_on_sigterm(database_url, tmp_path):
    # Claims long-poll for 30 s here: an agent that waited for its poll to end before exiting would
    # take up to that. (How fast it exits, about 0.1 s, is measured by bench/startup.py, not here:
    # a wall-clock bound in a test fails on a loaded machine, not on a slow agent.)
    cluster = Cluster(database_url, str(tmp_path), env={"SCITQ_SERVER_CLAIM_WAIT": "30"}).start()
    try:
        w = cluster.worker("idle")
        wait_for(lambda: any(x["name"] == "idle" for x in cluster.client.workers()), 20, what="registration")
        time.sleep(0.5)  # into its long poll
        start = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait(25) == 0
        assert time.monotonic() - start < 10, "the agent waited for its long poll to end"
    finally:
        cluster.stop()


def test_nothing_is_signalled_without_the_same_boot_and_start_time(tmp_path):
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        me = process_identity(victim.pid)
        assert not kill_group({**me, "boot_id": "another-boot"}), "a pid file from before a reboot"
        assert not kill_group({**me, "start_time": me["start_time"] - 1}), "a pid reused by another process"
        assert not kill_group({"pid": victim.pid}), "an older agent's bare pid"
        assert victim.poll() is None
        # a supervisor record naming this (unrelated) process on another boot is not adopted either
        d = tmp_path / "exec-1"
        d.mkdir()
        (d / supervisor.STATE).write_text(json.dumps({"pid": victim.pid, "start_time": me["start_time"],
                                                      "boot_id": "another-boot"}))
        assert supervisor.adopt(str(d)) is None
        (d / supervisor.STATE).write_text(json.dumps({"pid": victim.pid, "start_time": me["start_time"] + 1,
                                                      "boot_id": me["boot_id"]}))
        assert supervisor.adopt(str(d)) is None
        assert victim.poll() is None
        assert kill_group(me)
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()


def _state_letter(pid: int) -> str:
    stat = read_text(f"/proc/{pid}/stat")
    return stat[stat.rindex(")") + 2]


def _supervised(tmp_path, command: str, shell: str):
    """`command` started by a LocalRunner in tmp_path/exec-1 (its supervisor's directory), with a
    long lease: the runner's process and that directory."""
    from scitq_app.runner import LocalRunner, RunSpec
    exec_dir = tmp_path / "exec-1"
    dirs = {k: str(exec_dir / k) for k in ("input", "output", "resource", "tmp")}
    for d in dirs.values():
        os.makedirs(d)
    lease = supervisor.Lease(str(tmp_path / "lease"), 600)
    lease.renew()
    return LocalRunner(lease=lease).start(RunSpec(command=command, shell=shell, dirs=dirs)), exec_dir


def test_a_pause_signal_delivered_after_a_resume_leaves_the_command_running(tmp_path):
    # Pending signals are delivered lowest number first and coalesce: a pause (SIGUSR1) sent before a
    # resume (SIGUSR2) can reach the supervisor after it. It obeys what the agent asked last.
    proc, exec_dir = _supervised(tmp_path, "sleep 60", "none")
    handle = proc.handle  # type: ignore[attr-defined]
    command = json.loads(read_text(str(exec_dir / supervisor.STATE)))["command_pid"]
    log = str(exec_dir / supervisor.LOG)
    try:
        proc.send("pause")
        wait_for(lambda: _state_letter(command) == "T", 10, what="the command stopped")
        proc.send("resume")
        wait_for(lambda: _state_letter(command) != "T", 10, what="the command continued")
        os.kill(handle.pid, signal.SIGUSR1)  # the pause, late
        wait_for(lambda: read_text(log).count("the command is") == 3, 10, what="the late signal handled")
        assert read_text(log).splitlines()[-1].endswith("the command is running")
        assert _state_letter(command) != "T", "a late pause signal stopped the command the agent resumed"
    finally:
        proc.send("kill")
        proc.wait()


def test_a_storm_of_pauses_and_resumes_ends_as_the_agent_asked_last(tmp_path):
    # A signal handler can run inside another one (while it lists the tree in /proc): the inner,
    # later wish must not be undone by the outer, earlier one finishing last.
    # a tree of a few processes: listing it takes the supervisor a while, as a real task's would
    proc, exec_dir = _supervised(tmp_path, "sleep 60 & sleep 60 & sleep 60 & wait", "sh")
    command = json.loads(read_text(str(exec_dir / supervisor.STATE)))["command_pid"]
    log = str(exec_dir / supervisor.LOG)
    try:
        for last in ("pause", "resume"):
            for _ in range(150):
                proc.send("pause")
                proc.send("resume")
            if last == "pause":
                proc.send("pause")
            want = "paused" if last == "pause" else "running"
            wait_for(lambda: read_text(log).splitlines()[-1].endswith(f"the command is {want}")
                     and (_state_letter(command) == "T") == (want == "paused"), 20,
                     what=f"the command {want}, as asked last")
    finally:
        proc.send("kill")
        proc.wait()


def test_only_the_supervisors_main_thread_takes_the_agents_signals(tmp_path):
    # The kernel gives a process's signal to any thread not blocking it, and Python runs handlers in
    # the main thread only: a signal taken by another thread would wait, unnoted, until the command
    # ends (a storm of pauses and resumes once ended running although the agent asked a pause last).
    proc, exec_dir = _supervised(tmp_path, "sleep 60", "sh")
    pid = json.loads(read_text(str(exec_dir / supervisor.STATE)))["pid"]
    obeyed = sum(1 << (s - 1) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP))
    try:
        def blocked() -> dict[int, bool]:
            out = {}
            for tid in os.listdir(f"/proc/{pid}/task"):
                mask = next(int(ln.split()[1], 16) for ln in read_text(f"/proc/{pid}/task/{tid}/status").splitlines()
                            if ln.startswith("SigBlk:"))
                out[int(tid)] = mask & obeyed == obeyed
            return out
        # (the main thread blocks them itself for an instant, while it starts a thread)
        wait_for(lambda: (lambda b: len(b) == 3 and b == {t: t != pid for t in b})(blocked()), 10,
                 what="the obey and lease threads blocking the agent's signals, and the main thread not")
    finally:
        proc.send("kill")
        proc.wait()
