"""One execution on a worker, from claim to final report.

A Job makes the execution's work dir (input/ output/ resource/ tmp/),
stages its data (through a `Stager`), waits for a run slot, runs the command
through a `Runner`, keeps stdout/stderr in log files that the outbox ships,
obeys signals (pause, resume, term, kill), enforces run_timeout, uploads the
results and reports every phase through the outbox.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable

from .errors import ScitqError
from .outbox import Outbox, StreamShipper
from .runner import Outcome, Process, RunSpec, Runner, StartError, TaskUser, process_identity

log = logging.getLogger(__name__)

TERM_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


class StagingError(ScitqError):
    """Staging data failed."""

    kind = "staging"


class Stager:
    """Moves a task's data: inputs and resources in before it runs, outputs out after.

    This base refuses any data: a worker without storage configured can only
    run tasks that have none."""

    def stage_in(self, execution: dict, dirs: dict[str, str], cancel: threading.Event) -> None:
        if execution.get("inputs") or execution.get("resources"):
            raise StagingError("this worker has no storage configured: it cannot fetch inputs or resources")

    def stage_out(self, execution: dict, dirs: dict[str, str], cancel: threading.Event,
                  succeeded: bool = True) -> list[str]:
        """Upload output/ after the command ended (`succeeded` says how); return the files uploaded."""
        if execution.get("output"):
            raise StagingError("this worker has no storage configured: it cannot upload outputs")
        return []

    def stats(self) -> dict[str, Any]:
        """What the worker's heartbeat reports about staging."""
        return {}


class Slots:
    """A semaphore whose size changes live (the worker's concurrency)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def acquire(self, cancel: threading.Event) -> bool:
        """Wait for a free slot; False if `cancel` was set first."""
        with self._cond:
            while self._used >= self._limit:
                if cancel.is_set():
                    return False
                self._cond.wait(0.2)
            if cancel.is_set():
                return False
            self._used += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._used -= 1
            self._cond.notify_all()

    def take(self) -> None:
        """Take a slot even if none is free (an execution that already runs)."""
        with self._cond:
            self._used += 1

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class Job:
    """One execution's life on this worker. `run()` is the thread body."""

    def __init__(self, execution: dict, *, root: str, runner: Runner, stager: Stager, outbox: Outbox,
                 slots: Slots, cpu_per_slot: Callable[[], int], head: int, tail: int,
                 on_done: Callable[["Job"], None], clock: Callable[[], float] = time.monotonic,
                 process: Process | None = None, task_user: TaskUser | None = None,
                 short_of: Callable[[], str | None] = lambda: None) -> None:
        """`process`: one a previous run of the worker started, re-attached (`Runner.attach`):
        the Job resumes from "running". `task_user`: the account plain commands run as, which then
        owns input/, output/ and tmp/ (not their staged files, which may be hard links).
        `short_of`: what this worker lacks (disk space, inodes), in words, or None: a command
        that fails while the worker is short of it failed for the worker's reason (infra)."""
        self.short_of = short_of
        self.streams: tuple[StreamShipper, StreamShipper] | None = None
        self.task_user = task_user
        self.execution = execution
        self.id = int(execution["id"])
        self.dir = os.path.join(root, f"exec-{self.id}")
        self.dirs = {k: os.path.join(self.dir, k) for k in ("input", "output", "resource", "tmp")}
        self.runner = runner
        self.stager = stager
        self.outbox = outbox
        self.slots = slots
        self.cpu_per_slot = cpu_per_slot
        self.head, self.tail = head, tail
        self.on_done = on_done
        self.clock = clock
        self.process: Process | None = process
        self.started = process is not None
        self.cancel = threading.Event()      # stop waiting / staging
        self.resumed = threading.Event()
        self.resumed.set()
        self.stop_reason: str | None = None  # term | kill | timeout | fenced | canceled
        self.start_error: StartError | None = None
        self.outcome = "failed"
        self.failure_class: str | None = None  # as reported (infra: the worker's own trouble)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"job-{self.id}", daemon=True)

    # --- control from the worker ---------------------------------------------
    def signal(self, action: str) -> None:
        """Apply a server signal: pause, resume, term or kill."""
        with self._lock:
            if action == "pause":
                self.resumed.clear()
                if self.process is not None:
                    self.process.send("pause")
            elif action == "resume":
                self.resumed.set()
                if self.process is not None:
                    self.process.send("resume")
            elif action in ("term", "kill"):
                self._stop(action, "canceled")

    def fence(self) -> None:
        """The server gave this execution to someone else: stop it and say nothing."""
        with self._lock:
            self._stop("kill", "fenced")

    def hand_back(self, force: bool = False) -> None:
        """Worker shutdown: give back a task not started yet (or any, when forced)."""
        with self._lock:
            if not self.started or force:
                self._stop("kill" if force else "term", "canceled")

    def _stop(self, how: str, reason: str) -> None:
        if self.stop_reason is None or reason == "fenced":
            self.stop_reason = reason
        self.cancel.set()
        self.resumed.set()
        if self.process is not None:
            self.process.send(how)
            if how == "term":
                threading.Timer(TERM_GRACE, self._kill_if_alive).start()

    def _kill_if_alive(self) -> None:
        if self.process is not None and self.process.alive():
            self.process.send("kill")

    # --- the life of the execution ---------------------------------------------
    def _mark(self, name: str, content: str = "") -> None:
        with open(os.path.join(self.dir, name), "w", encoding="utf-8") as f:
            f.write(content)

    def _report(self, phase: str, **fields: Any) -> None:
        if self.stop_reason == "fenced":
            return
        self.outbox.report(self.id, {"phase": phase, **{k: v for k, v in fields.items() if v is not None}})

    def run(self) -> None:
        try:
            self._run()
        except OSError as e:
            # the worker ran out of something (disk, inodes, descriptors, processes): its failure,
            # which spends no retry; the OS's words go to the stderr tail and the report
            where = f" ({e.filename})" if e.filename else ""
            message = f"the worker could not go on: {e.strerror or e}{where}"
            log.warning("execution %s: %s", self.id, message)
            self._abort(message)
        except Exception as e:  # a bug in here must not lose the execution
            log.exception("execution %s crashed in the worker", self.id)
            self._abort(f"worker error: {type(e).__name__}: {e}")
        finally:
            try:
                # "done" holds the outcome: the worker removes succeeded work dirs once delivered.
                self._mark("done", self.outcome)
            except OSError:
                pass
            self.on_done(self)

    def _abort(self, message: str) -> None:
        """Report the execution failed for the worker's reason (infra), its streams closed so the
        report is not held back waiting for them; with a live command left, it is killed first."""
        self._kill_if_alive()
        if self.streams is not None:
            for stream in self.streams:
                if stream.final_size is None:
                    if stream.stream == "stderr":
                        stream.note(f"scitq: {message}\n")
                    stream.finish()
        self.failure_class = "infra"
        self._report("failed", failure_class="infra", message=message)
        self.outbox.wake()

    def _run(self) -> None:
        for d in (self.dir, *self.dirs.values()):
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
        self._mark("execution.json", json.dumps(self.execution))
        stdout = StreamShipper(self.id, "stdout", os.path.join(self.dir, "stdout.log"), self.head, self.tail)
        stderr = StreamShipper(self.id, "stderr", os.path.join(self.dir, "stderr.log"), self.head, self.tail)
        self.streams = (stdout, stderr)
        # a re-attached container replays its output from the start; a supervised command wrote it here
        replays = self.process is not None and self.process.stdout is not None
        for s in (stdout, stderr):
            open(s.path, "wb" if replays else "ab").close()
            self.outbox.add_stream(s)
        if self.process is not None:  # re-attached: it runs already and holds a slot, free or not
            self.slots.take()
            try:
                outcome = self._execute(stdout, stderr)
            finally:
                self.slots.release()
            return self._finish(stdout, stderr, outcome, self._failure_class(outcome),
                                outcome.lost if outcome else None)
        try:
            self.stager.stage_in(self.execution, self.dirs, self.cancel)
        except StagingError as e:
            stderr.note(f"scitq: staging failed: {e.message}\n")
            # stopped while downloading (a person, a worker shutdown): not the data's fault
            failure = self._failure_class(None) if self.cancel.is_set() else "staging"
            return self._finish(stdout, stderr, None, failure, e.message)
        if self.task_user is not None:
            for name in ("input", "output", "tmp"):
                os.chown(self.dirs[name], self.task_user.uid, self.task_user.gid, follow_symlinks=False)
        if not self.slots.acquire(self.cancel):
            return self._finish(stdout, stderr, None, self._failure_class(None), "stopped before it started")
        try:
            while not self.resumed.wait(0.5):
                pass  # paused before it started: hold the slot, do not start
            if self.cancel.is_set():
                return self._finish(stdout, stderr, None, self._failure_class(None), "stopped before it started")
            outcome = self._execute(stdout, stderr)
        finally:
            self.slots.release()
        if outcome is None:
            err = self.start_error
            return self._finish(stdout, stderr, None, err.failure_class if err else "app",
                                err.message if err else "the command could not start")
        return self._finish(stdout, stderr, outcome, self._failure_class(outcome), outcome.lost)

    def _execute(self, stdout: StreamShipper, stderr: StreamShipper) -> Outcome | None:
        e = self.execution
        spec = RunSpec(command=e["command"], shell=e.get("shell") or "none", dirs=self.dirs,
                       cpu=self.cpu_per_slot(), container=e.get("container"),
                       container_options=e.get("container_options"), name=f"scitq-{self.id}")
        try:
            if self.process is None:
                self.runner.prepare(spec)  # may pull an image: not under the lock, which signals need
        except StartError as err:
            self.start_error = err
            stderr.note(f"scitq: {err.message}\n")
            return None
        with self._lock:
            if self.cancel.is_set() and self.process is None:
                return Outcome(-1)
            try:
                if self.process is None:
                    if spec.container:  # named before it exists: a restart finds even a half-started one
                        self._mark("container", spec.name)
                    self.process = self.runner.start(spec)
            except StartError as err:
                self.start_error = err
                stderr.note(f"scitq: {err.message}\n")
                return None
            self.started = True
            if not self.resumed.is_set():
                self.process.send("pause")
        self._report("running")
        if self.process.pid:
            self._mark("pid", json.dumps(process_identity(self.process.pid)))
        readers = []
        if self.process.stdout is not None:  # else its supervisor writes the log files itself
            readers = [threading.Thread(target=_copy, args=(pipe, path, self.outbox), daemon=True)
                       for pipe, path in ((self.process.stdout, stdout.path), (self.process.stderr, stderr.path))]
        for r in readers:
            r.start()
        timer = None
        timeout = e.get("run_timeout")
        if timeout:
            timer = threading.Timer(timeout, self._timed_out)
            timer.daemon = True
            timer.start()
        outcome = self.process.wait()
        if timer is not None:
            timer.cancel()
        for r in readers:
            r.join()
        return outcome

    def _timed_out(self) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = "timeout"
                self.resumed.set()
                if self.process is not None:
                    self.process.send("term")
                    threading.Timer(TERM_GRACE, self._kill_if_alive).start()

    def _failure_class(self, outcome: Outcome | None) -> str | None:
        """How the attempt failed, or None if it succeeded. A command that exited 0 by itself
        succeeded even when a stop or its run_timeout came as it ended: reported canceled, the
        server would requeue work already done (the batch's stop raced the last lines)."""
        if outcome is not None and outcome.return_code == 0 and not (outcome.lost or outcome.oom):
            return None
        if self.stop_reason == "timeout":
            return "timeout"
        if self.stop_reason in ("canceled", "fenced"):
            return "canceled"
        if outcome is None:
            return "canceled" if self.cancel.is_set() else "app"
        if outcome.lost:
            return "lost"
        if outcome.oom:
            return "oom"
        if outcome.return_code == 0:
            return None
        return "infra" if self.short_of() else "app"

    def _finish(self, stdout: StreamShipper, stderr: StreamShipper, outcome: Outcome | None,
                failure: str | None, message: str | None) -> None:
        if failure == "infra" and outcome is not None and message is None:
            short = self.short_of() or "resources"
            message = f"the command failed while this worker was short of {short}"
            stderr.note(f"scitq: {message}: counted as the worker's failure, not the task's\n")
        if failure == "timeout":
            stderr.note(f"scitq: run_timeout of {self.execution.get('run_timeout')} s reached: killed\n")
        output_files: list[str] = []
        if outcome is not None and self.stop_reason != "fenced" and self.execution.get("output"):
            self._report("uploading")
            try:
                output_files = self.stager.stage_out(self.execution, self.dirs, threading.Event(),
                                                     succeeded=failure is None)
            except StagingError as err:
                stderr.note(f"scitq: upload failed: {err.message}\n")
                if failure is None:  # a failed command keeps its own class
                    failure, message = "staging", err.message
        stdout.finish()
        stderr.finish()
        fields = {"return_code": outcome.return_code if outcome else None,
                  "peak_mem": outcome.peak_mem if outcome else None,
                  "cpu_time": round(outcome.cpu_time, 3) if outcome and outcome.cpu_time is not None else None,
                  "output_files": output_files or None, "message": message}
        if self.stop_reason == "fenced":
            self.outbox.drop_execution(self.id)
        elif failure is None:
            self._report("succeeded", **fields)
        else:
            self.failure_class = failure
            self._report("failed", failure_class=failure, **fields)
        self.outbox.wake()
        if failure is None and self.stop_reason != "fenced":
            self.outcome = "succeeded"  # removed once its logs are delivered; failed ones are kept


def _copy(pipe: Any, path: str, outbox: Outbox) -> None:
    """Copy a pipe to its log file as bytes arrive (bounded memory)."""
    fd = pipe.fileno()
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            f.write(chunk)
    pipe.close()
    outbox.wake()
