"""A worker out of disk, inodes, descriptors or processes fails the task as its own (infra: no
retry spent, the OS's words in the report), claims nothing while it lacks room, says why, and
carries on by itself once it has room again. Real limits: a small tmpfs work dir, a pids cgroup
(root ignores RLIMIT_NPROC), prlimit on the live agent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from scitq_app.outbox import RESERVE_BYTES, Journal
from tests.conftest import FakeClock
from tests.support.processes import read_text, wait_for
from tests.support.system import need

MIN_FREE_GIB = 16 / 1024  # 16 MiB on a 48 MiB work dir
PIDS = "/sys/fs/cgroup/pids"


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs (2,000 inodes) made for this test, unmounted after it."""
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    path = tmp_path / "small-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,nr_inodes=2000", "scitq-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _started(cluster, w, name: str) -> None:
    wait_for(lambda: any(x["name"] == name and x["status"] == "running" for x in cluster.client.workers()),
             20, what=f"worker {name} to register")


def _status_of(cluster, name: str) -> str:
    return next(x for x in cluster.client.workers() if x["name"] == name)["stats"].get("short_of") or ""


FILLERS = {
    "disk space": "dd if=/dev/zero of=$TEMP/fill bs=1M count=100",
    # 2,000 inodes on the small disk: files until there is none left
    "inodes": "i=0; while [ $i -lt 5000 ]; do : > $TEMP/f$i || exit 1; i=$((i+1)); done",
}


@pytest.mark.parametrize("short", sorted(FILLERS))
def test_a_task_exhausting_the_disk_fails_as_infra_without_spending_a_retry_and_runs_again_once_room_is_back(
        cluster, small_disk, tmp_path, short):
    flag = tmp_path / "filled-once"
    w = cluster.worker("filler", env={"SCITQ_WORKER_WORKDIR": str(small_disk),
                                      "SCITQ_WORKER_MIN_FREE": str(MIN_FREE_GIB),
                                      "SCITQ_WORKER_MIN_FREE_INODES": "100"})
    command = f"if [ -e {flag} ]; then echo second-try; else touch {flag}; {FILLERS[short]}; fi"
    tid = cluster.client.submit(command, shell="sh", max_retries=0)["ids"][0]
    done = cluster.wait_final([tid], timeout=60)[tid]
    assert done["status"] == "succeeded", cluster.diagnostics()
    assert done["retries_used"] == 0, "the worker's disk is not the task's fault"
    assert cluster.output(tid) == "second-try\n"
    first = cluster.client.executions(tid)[-1]
    assert first["failure_class"] == "infra"
    assert "No space left on device" in first["message"] and f"short of {short}" in first["message"]
    assert "claiming again" in w.log(), "the worker said when it took work again"


def test_a_worker_short_of_disk_claims_nothing_says_why_and_resumes_when_space_is_freed(cluster, small_disk):
    w = cluster.worker("cramped", env={"SCITQ_WORKER_WORKDIR": str(small_disk),
                                       "SCITQ_WORKER_MIN_FREE": str(MIN_FREE_GIB)})
    _started(cluster, w, "cramped")
    filler = small_disk / "test-filler"  # the test's own file, beside the worker's
    with open(filler, "wb") as f:
        f.write(b"\0" * (40 << 20))
    wait_for(lambda: "disk space" in _status_of(cluster, "cramped"), 20, what="the worker to say it is short")
    listed = subprocess.run([sys.executable, "-m", "scitq_app", "worker", "list"],
                            capture_output=True, text=True, env={**os.environ, "SCITQ_SERVER": cluster.server.url,
                                                                  "SCITQ_TOKEN": cluster.server.admin_token})
    assert "running, short of disk space" in listed.stdout, listed.stdout + listed.stderr
    tid = cluster.client.submit("echo fits")["ids"][0]
    wait_for(lambda: "claiming nothing while short of disk space" in w.log(), 10, what="the worker's notice")
    time.sleep(2)  # a claim round is at most 1 s apart: two would have taken it by now
    assert cluster.client.task(tid)["status"] == "pending"
    filler.unlink()
    assert cluster.wait_final([tid], timeout=30)[tid]["status"] == "succeeded"
    wait_for(lambda: _status_of(cluster, "cramped") == "", 10, what="the worker to say it has room again")
    assert w.log().count("claiming nothing while short of disk space") == 1, "said once, not once per try"


@pytest.fixture
def pids_cgroup():
    need(os.geteuid() == 0 and os.access(PIDS, os.W_OK), "a writable pids cgroup (v1) hierarchy")
    path = os.path.join(PIDS, f"scitq-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        for pid in read_text(os.path.join(path, "cgroup.procs")).split():
            try:
                with open(os.path.join(PIDS, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except OSError:
                pass
        os.rmdir(path)


def test_a_worker_that_cannot_fork_fails_the_task_as_infra_and_carries_on_when_it_can(cluster, pids_cgroup):
    w = cluster.worker("nofork")
    warm = cluster.client.submit("true")["ids"][0]  # the agent's lazy first-task checks, done before the limit
    assert cluster.wait_final([warm], timeout=30)[warm]["status"] == "succeeded"
    with open(os.path.join(pids_cgroup, "cgroup.procs"), "w") as f:
        f.write(str(w.proc.pid))
    # Room for the task's thread in the agent, none for its supervisor: counted from the agent's
    # threads at this moment, so a short-lived thread of the agent (its writer, a finishing job's
    # reader) starting meanwhile takes that room and the task's thread is the one refused. That is
    # the other infra failure, checked as such; the fork's must come within a few tries.
    tries = []
    for _ in range(5):
        current = int(read_text(os.path.join(pids_cgroup, "pids.current")))
        with open(os.path.join(pids_cgroup, "pids.max"), "w") as f:
            f.write(str(current + 1))
        tid = cluster.client.submit("echo forked", max_retries=0)["ids"][0]
        failed = wait_for(lambda: (e := cluster.client.executions(tid)) and e[-1]["status"] == "failed" and e[-1],
                          30, what="the first attempt to fail")
        with open(os.path.join(pids_cgroup, "pids.max"), "w") as f:
            f.write("max")
        assert failed["failure_class"] == "infra"
        done = cluster.wait_final([tid], timeout=40)[tid]
        assert (done["status"], done["retries_used"]) == ("succeeded", 0)
        assert cluster.output(tid) == "forked\n"
        tries.append(failed["message"])
        if not failed["message"].startswith("the worker could not start a thread for it"):
            break
    assert "Resource temporarily unavailable" in tries[-1], tries
    assert w.proc.poll() is None, "the agent lives on"


def test_a_worker_out_of_file_descriptors_fails_the_task_as_infra_and_carries_on(cluster):
    need(os.geteuid() == 0, "prlimit on another process needs root")
    w = cluster.worker("nofd")
    warm = cluster.client.submit("true")["ids"][0]  # the agent's lazy first-task checks, done before the limit
    assert cluster.wait_final([warm], timeout=30)[warm]["status"] == "succeeded"
    fds = len(os.listdir(f"/proc/{w.proc.pid}/fd"))
    soft = subprocess.run(["prlimit", f"--pid={w.proc.pid}", "--nofile", "--output=SOFT", "--noheadings"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # only the soft limit moves: raising a hard one back would need CAP_SYS_RESOURCE
    subprocess.run(["prlimit", f"--pid={w.proc.pid}", f"--nofile={fds + 2}:"], check=True)
    tid = cluster.client.submit("echo opened", max_retries=0)["ids"][0]
    failed = wait_for(lambda: (e := cluster.client.executions(tid)) and e[-1]["status"] == "failed" and e[-1],
                      30, what="the first attempt to fail")
    subprocess.run(["prlimit", f"--pid={w.proc.pid}", f"--nofile={soft}:"], check=True)
    assert failed["failure_class"] == "infra"
    assert "Too many open files" in failed["message"]
    done = cluster.wait_final([tid], timeout=40)[tid]
    assert (done["status"], done["retries_used"]) == ("succeeded", 0)
    assert w.proc.poll() is None, "the agent lives on"


def test_the_journal_keeps_reports_on_a_full_disk_through_its_reserve(small_disk):
    journal_dir = small_disk / "journal"
    clock = FakeClock()
    journal = Journal(str(journal_dir), clock=clock)
    assert os.path.getsize(journal_dir / "reserve") == RESERVE_BYTES
    with open(small_disk / "filler", "wb") as f:  # every byte left on the disk, taken
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    report = {"type": "report", "execution_id": 7, "body": {"phase": "succeeded", "return_code": 0}}
    journal.put(report)
    assert not (journal_dir / "reserve").exists(), "the reserve was given up for the report"
    assert not journal.degraded
    reopened = Journal(str(journal_dir), clock=clock)
    assert [item for _, item in reopened.pending()] == [report], "the report is on disk, whole"
    lines = [json.loads(x) for name in sorted(os.listdir(journal_dir)) if name.endswith(".jsonl")
             for x in read_text(str(journal_dir / name)).splitlines()]
    assert [entry["item"] for entry in lines] == [report]
    (small_disk / "filler").unlink()
    reopened.keep_reserve()
    assert not (journal_dir / "reserve").exists(), "tried again only every 10 s"
    clock.advance(10)
    reopened.keep_reserve()
    assert os.path.getsize(journal_dir / "reserve") == RESERVE_BYTES, "made again once there is room"
