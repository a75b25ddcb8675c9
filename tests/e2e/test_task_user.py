"""A root worker runs plain tasks as its unprivileged task user, out of reach of its secrets.

The worker runs as root here (as an installed one does) with `[worker] task_user = nobody`; a task
tries to read the worker's state (its token), its rclone config and its environment."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from typing import Iterator

import pytest

from scitq_app.errors import ConfigError
from scitq_app.runner import task_account
from tests.support.cluster import Cluster
from tests.support.processes import WorkerProcess, read_text, wait_for
from tests.support.system import need



@pytest.fixture(autouse=True)
def _root() -> None:
    need(os.geteuid() == 0, "a worker must be root to run tasks as another user")

NOBODY = "nobody"


@pytest.fixture
def reachable(cluster: Cluster) -> Iterator[str]:
    """A directory the task user can traverse (pytest's tmp dirs are mode 700), for the cluster's
    workers."""
    base = tempfile.mkdtemp(prefix="scitq-task-user-", dir="/var/tmp")
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        # before the cluster's own teardown (which comes after this one): a running worker writes
        # in its directory while it is removed
        for w in cluster.workers:
            w.stop()
        shutil.rmtree(base)


def test_plain_tasks_run_as_the_task_user_and_cannot_read_the_worker_s_state(cluster: Cluster, reachable: str):
    workdir = os.path.join(reachable, "work")
    w = WorkerProcess(cluster.server.url, workdir, "unprivileged", env={"SCITQ_WORKER_TASK_USER": NOBODY},
                      join_token=cluster.client.create_join_token()["join_token"])  # no open mode
    cluster.workers.append(w)
    w.start()
    state = os.path.join(workdir, ".scitq", "state.json")
    wait_for(lambda: os.path.exists(state), 20, what="the worker to register")
    secret = read_text(state)
    attack = (f"id -un; echo home=$HOME; cat {workdir}/.scitq/state.json; ls {workdir}/.scitq; "
              f"cat {workdir}/.scitq/rclone.conf; cat /proc/{w.proc.pid}/environ; ls {workdir}; "
              "echo result > $OUTPUT/r.txt && echo wrote-output; touch $TEMP/t && echo wrote-tmp; "
              f"touch {workdir}/exec-planted || echo no-write-in-workdir; true")
    tid = cluster.client.submit(attack, shell="sh")["ids"][0]
    task = cluster.wait_final([tid], 30)[tid]
    assert task["status"] == "succeeded", task
    out = cluster.output(tid)
    err = cluster.output(tid, "stderr")
    lines = out.splitlines()
    assert lines[0] == NOBODY
    assert lines[1].startswith("home=" + workdir) and lines[1].endswith("/tmp")
    assert "wrote-output" in lines and "wrote-tmp" in lines and "no-write-in-workdir" in lines
    token = json.loads(secret)["token"]
    assert token not in out + err, "the task read the worker's token"
    assert "Permission denied" in err
    for refused in (f"cat: {workdir}/.scitq/state.json: Permission denied",
                    f"ls: cannot open directory '{workdir}/.scitq': Permission denied",
                    f"cat: {workdir}/.scitq/rclone.conf: Permission denied",
                    f"cat: /proc/{w.proc.pid}/environ: Permission denied",
                    f"ls: cannot open directory '{workdir}': Permission denied"):
        assert refused in err, err
    assert not os.path.exists(os.path.join(workdir, "exec-planted"))
    exec_dir = os.path.join(workdir, f"exec-{task['current_execution_id']}")
    assert os.stat(os.path.join(exec_dir, "output")).st_uid == pwd.getpwnam(NOBODY).pw_uid
    assert os.stat(os.path.join(workdir, ".scitq")).st_mode & 0o777 == 0o700


def test_a_root_worker_whose_task_user_is_missing_refuses_to_start(cluster: Cluster, tmp_path):
    w = WorkerProcess(cluster.server.url, str(tmp_path / "w"), "no-such-user",
                      env={"SCITQ_WORKER_TASK_USER": "scitq-no-such-user"},
                      join_token=cluster.client.create_join_token()["join_token"])
    cluster.workers.append(w)
    w.start()
    assert w.wait(30) == 2, w.log()
    errors = [ln for ln in w.log().splitlines() if ln.startswith("scitq: ")]
    assert len(errors) == 1, w.log()
    assert "[worker] task_user 'scitq-no-such-user' does not exist" in errors[0]
    assert "install.sh worker" in errors[0] and "task_user = root" in errors[0]
    assert cluster.client.workers() == []


def test_task_user_root_is_explicit_and_warned_about_once(cluster: Cluster, tmp_path):
    w = WorkerProcess(cluster.server.url, str(tmp_path / "w"), "as-root", env={"SCITQ_WORKER_TASK_USER": "root"},
                      join_token=cluster.client.create_join_token()["join_token"])
    cluster.workers.append(w)
    w.start()
    tid = cluster.client.submit("id -un")["ids"][0]
    assert cluster.wait_final([tid], 30)[tid]["status"] == "succeeded"
    assert cluster.output(tid) == "root\n"
    assert w.log().count("task_user = root: tasks run as root and can read this worker's token") == 1


def test_a_work_dir_the_task_user_cannot_reach_is_refused_with_the_fix(tmp_path):
    closed = tmp_path / "closed"
    workdir = closed / "work"
    workdir.mkdir(parents=True)
    os.chmod(closed, 0o700)
    with pytest.raises(ConfigError) as e:
        task_account(NOBODY, 0, str(workdir))
    assert f"{closed} is mode 700; allow traversal with `chmod o+x {closed}`" in e.value.message


def test_a_worker_that_is_not_root_runs_tasks_as_itself_and_says_so() -> None:
    user, warning = task_account("scitq-task", 1000, "/srv/work")
    assert user is None
    assert warning is not None and "does not run as root" in warning
