"""What a job reports when a stop races the end of its command: a command that exited 0 by itself
succeeded (reported canceled, the server would requeue work already done and run it twice); one
the stop ended failed, canceled. Real supervised commands, no server: the reports are read from
the job's outbox journal."""
from __future__ import annotations

import os
import threading

from scitq_app.job import Job, Slots, Stager
from scitq_app.outbox import Outbox
from scitq_app.runner import LocalRunner
from scitq_app.supervisor import Lease


def _run_and_stop(tmp_path, command: str) -> list[dict]:
    root = tmp_path / "work"
    root.mkdir()
    outbox = Outbox(str(tmp_path / "outbox"))
    lease = Lease(str(tmp_path / "lease"), 600)  # the agent's, renewed for the whole test
    lease.renew()
    done = threading.Event()
    job = Job({"id": 1, "command": command, "shell": "sh"}, root=str(root), runner=LocalRunner(lease=lease), stager=Stager(),
              outbox=outbox, slots=Slots(1), cpu_per_slot=lambda: 1, head=1000, tail=1000,
              on_done=lambda job: done.set())
    job.thread.start()
    started = os.path.join(job.dir, "stdout.log")
    ready = threading.Event()

    def until_started() -> None:  # the command says it runs (and has set its traps) on stdout
        while not (os.path.exists(started) and os.path.getsize(started)):
            if done.wait(0.02):
                return
        ready.set()
    threading.Thread(target=until_started, daemon=True).start()
    assert ready.wait(30), "the command did not start"
    job.signal("term")  # a person's stop, as a heartbeat reply carries it
    job.thread.join(30)
    assert not job.thread.is_alive()
    return [item["body"] for _, item in outbox.journal.pending() if item["type"] == "report"]


def test_a_command_that_exits_0_after_a_stop_reached_it_is_reported_succeeded(tmp_path):
    # It ignores SIGTERM and finishes its work: the stop came too late to prevent it.
    reports = _run_and_stop(tmp_path, "trap '' TERM; echo up; sleep 0.5; exit 0")
    assert reports[-1]["phase"] == "succeeded"
    assert reports[-1]["return_code"] == 0


def test_a_command_the_stop_ended_is_reported_canceled(tmp_path):
    reports = _run_and_stop(tmp_path, "echo up; sleep 30")
    assert reports[-1]["phase"] == "failed"
    assert reports[-1]["failure_class"] == "canceled"
    assert reports[-1]["return_code"] == 128 + 15


def test_a_command_that_exits_non_zero_after_a_stop_is_reported_canceled(tmp_path):
    # It caught the stop and said so: not its own failure, and it spends no retry.
    reports = _run_and_stop(tmp_path, "trap 'exit 3' TERM; echo up; sleep 30 & wait")
    assert reports[-1]["phase"] == "failed"
    assert reports[-1]["failure_class"] == "canceled"
    assert reports[-1]["return_code"] == 3
