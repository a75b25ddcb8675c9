"""The per-task supervisor: one small process between the worker agent and each plain command.

Why: the agent may die (kill -9, a crash, an upgrade) while its tasks run. Without a supervisor
its commands either die with it (work lost) or run on unsupervised while the server requeues
them (work done twice). The supervisor owns the command instead:

- it starts the command in its own session, with stdout/stderr going straight to the
  execution's log files (no pipe through the agent, so nothing is lost while no agent reads);
- it is a child subreaper: background jobs the command leaves (grandchildren, even ones that
  called setsid) are re-parented to it, so it can end the whole tree;
- when the command exits it ends what is left of the tree, reaps it, and writes `exit.json`
  (return code, signal, peak memory, CPU time) atomically, then exits;
- it enforces the lease itself: the agent renews a deadline in the worker's lease file
  (CLOCK_MONOTONIC, shared by every process of one boot); when no agent renewed it in time,
  the supervisor kills the whole tree before the server may requeue the task, and says so
  in `exit.json` (`lease_expired`);
- it relays the agent's signals to the command's tree: SIGTERM (term), SIGHUP (kill), and on
  SIGUSR1 / SIGUSR2 it pauses or resumes the tree as the `wanted` file says (signals do not
  arrive in the order they were sent).

A restarted agent finds it through `supervisor.json` (pid, boot id, process start time: a pid
is trusted only on the same boot and with the same start time) and re-adopts the task.

This module runs as the supervisor process with the standard library only (it is started with
`python -I` from the pyz or the source tree and must start fast); the agent side is
`SupervisedProcess`, `start` and `adopt`.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

SPEC = "supervise.json"     # written by the agent: argv, env, cwd, account, lease file
STATE = "supervisor.json"   # written by the supervisor once the command started
EXIT = "exit.json"          # the outcome, written by the supervisor when the tree is gone
LOG = "supervisor.log"      # the supervisor's own complaints
# Written by the agent before each pause / resume signal: "paused" or "running". Signals are
# not delivered in the order they were sent (pending ones go lowest number first, and several
# of one kind make one), so a pause sent before a resume could be applied after it; the
# supervisor applies what this file says on either signal, whatever their order.
WANTED = "wanted"
PR_SET_CHILD_SUBREAPER = 36

WORKER_ERRNOS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT}
_ACTIONS = {"term": signal.SIGTERM, "pause": signal.SIGUSR1, "resume": signal.SIGUSR2, "kill": signal.SIGHUP}


# --- facts about processes, shared by both sides -------------------------------------------------
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when there is no such process (or it is a zombie, which holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _atomic_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_wanted(exec_dir: str) -> str | None:
    """What the agent last asked of the command: "paused", "running", or None (never asked)."""
    try:
        with open(os.path.join(exec_dir, WANTED), encoding="ascii") as f:
            wanted = f.read().strip()
    except (OSError, ValueError):
        return None
    return wanted if wanted in ("paused", "running") else None


def write_wanted(exec_dir: str, wanted: str) -> None:
    tmp = os.path.join(exec_dir, f"{WANTED}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(wanted)
    os.replace(tmp, os.path.join(exec_dir, WANTED))  # whole or absent: a reader never sees half of it


def write_lease(path: str, deadline: float) -> None:
    """The agent's renewal: every supervisor of this worker reads `deadline` (time.monotonic())."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{deadline:.3f}\n")
    os.replace(tmp, path)


def read_lease(path: str) -> float | None:
    try:
        with open(path, encoding="ascii") as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


# --- the supervisor process ----------------------------------------------------------------------
class Supervisor:
    def __init__(self, exec_dir: str) -> None:
        self.dir = exec_dir
        with open(os.path.join(exec_dir, SPEC), encoding="utf-8") as f:
            self.spec = json.load(f)
        self.lease_path: str = self.spec["lease_path"]
        self.child: subprocess.Popen | None = None
        self.lease_expired = False
        self.killed = threading.Event()
        self.done = threading.Event()
        self._paused = False
        self._notes_r, self._notes_w = os.pipe()  # signal handler -> obey(), see on_signal
        os.set_blocking(self._notes_w, False)

    def descendants(self) -> list[int]:
        """Every live process below this one (a subreaper: orphans of the tree are re-parented here)."""
        parents: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state == "Z":
                continue  # already dead, reaped by the wait loop
            parents.setdefault(int(ppid), []).append(int(name))
        found, todo = [], [os.getpid()]
        while todo:
            for pid in parents.get(todo.pop(), []):
                found.append(pid)
                todo.append(pid)
        return found

    def signal_tree(self, sig: int) -> None:
        if self.child is not None:
            try:
                os.killpg(self.child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.descendants():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_tree(self) -> None:
        self.killed.set()
        # a few rounds: a process may fork between the listing and the signal
        for _ in range(5):
            self.signal_tree(signal.SIGKILL)
            if not self.descendants():
                return
            time.sleep(0.02)

    def on_signal(self, signum: int, frame: Any) -> None:
        """Only notes the signal for `obey`: a Python handler can run inside another one (between
        any two of its steps), so a handler that acted could apply an earlier wish after a later
        one, and a storm of signals nested deep enough to end the supervisor."""
        try:
            os.write(self._notes_w, bytes([signum]))
        except BlockingIOError:
            pass  # thousands of notes not read yet: the ones waiting say the same

    def obey(self) -> None:
        """The agent's signals, acted on one at a time, in the order they were handled: SIGTERM
        (term), SIGHUP (kill); SIGUSR1 / SIGUSR2 pause or resume the tree as the `wanted` file
        says (the latest wish, whatever order the signals came in)."""
        while True:
            try:
                notes = os.read(self._notes_r, 4096)
            except InterruptedError:
                continue
            if not notes:
                return
            wish = None
            for signum in notes:
                if signum in (signal.SIGUSR1, signal.SIGUSR2):
                    wish = signum  # a run of them: one look at the file, after the last
                    continue
                if wish is not None:
                    self._apply_wish(wish)
                    wish = None
                if signum == signal.SIGTERM:
                    self.signal_tree(signal.SIGTERM)
                    self.signal_tree(signal.SIGCONT)  # a stopped tree would not see SIGTERM until continued
                elif signum == signal.SIGHUP:
                    self.kill_tree()
            if wish is not None:
                self._apply_wish(wish)

    def _apply_wish(self, signum: int) -> None:
        wanted = read_wanted(self.dir)
        if wanted is None:  # an agent that writes no file (an older release): the signal says
            wanted = "paused" if signum == signal.SIGUSR1 else "running"
        self._paused = wanted == "paused"
        self.signal_tree(signal.SIGSTOP if self._paused else signal.SIGCONT)
        print(f"signal {signum}: the command is {wanted}", file=sys.stderr, flush=True)

    def watch_lease(self) -> None:
        """Kill the tree when the agent's deadline passes unrenewed."""
        while not self.done.is_set():
            deadline = read_lease(self.lease_path)
            if deadline is None:
                deadline = float(self.spec["lease_deadline"])
            left = deadline - time.monotonic()
            if left <= 0:
                self.lease_expired = True
                self.kill_tree()
                return
            self.done.wait(min(left, 1.0))

    def start(self) -> str | None:
        """Start the command; else the error that stopped it: its failure class, a space, then words."""
        s = self.spec
        account: dict[str, Any] = {}
        if s.get("uid") is not None:
            account = {"user": s["uid"], "group": s["gid"], "extra_groups": []}
        out = os.open(os.path.join(self.dir, "stdout.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        err = os.open(os.path.join(self.dir, "stderr.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self.child = subprocess.Popen(s["argv"], cwd=s["cwd"], env=s["env"], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=err, start_new_session=True, close_fds=True, **account)
        except FileNotFoundError as e:
            return f"app command not found: {e.filename}"
        except PermissionError as e:
            return f"app cannot execute {e.filename}: permission denied"
        except OSError as e:
            # no process or file left for it (fork, descriptors, memory): the worker's trouble, not the task's
            return f"{'infra' if e.errno in WORKER_ERRNOS else 'app'} cannot start the command: {e.strerror or e}"
        finally:
            os.close(out)
            os.close(err)
        return None

    def run(self) -> int:
        _subreaper()
        for signum in _OBEYED:
            signal.signal(signum, self.on_signal)
        _start_deaf_thread(self.obey, "obey")
        self._reserve_exit()
        error = self.start()
        if error is not None:
            print(f"error {error}", flush=True)
            return 0
        assert self.child is not None
        me = os.getpid()
        _atomic_json(os.path.join(self.dir, STATE), {"pid": me, "start_time": start_time(me), "boot_id": boot_id(),
                                                     "command_pid": self.child.pid})
        print(f"started {self.child.pid}", flush=True)
        try:
            sys.stdout.close()  # the agent stops reading here; nothing else goes to that pipe
        except OSError:
            pass
        _start_deaf_thread(self.watch_lease, "lease")
        outcome: dict[str, Any] = {}
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                break
            if pid == self.child.pid:
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                outcome = {"return_code": 128 + sig if sig else os.WEXITSTATUS(status), "signal": sig,
                           "peak_mem": usage.ru_maxrss * 1024, "cpu_time": usage.ru_utime + usage.ru_stime}
                # what the command left behind (a shell's background jobs) ends with it
                self.kill_tree()
        self.done.set()
        outcome["lease_expired"] = self.lease_expired
        self._write_exit(outcome)
        return 0

    def _reserve_exit(self) -> None:
        """Take the room exit.json needs now: a command that fills the disk must not cost its outcome."""
        with open(os.path.join(self.dir, EXIT + ".tmp"), "wb") as f:
            f.write(b" " * 4096)
            f.flush()
            os.fsync(f.fileno())

    def _write_exit(self, outcome: dict[str, Any]) -> None:
        path = os.path.join(self.dir, EXIT)
        data = json.dumps(outcome).encode("utf-8")
        with open(path + ".tmp", "r+b") as f:  # rewritten in the room taken at the start
            f.write(data)
            f.truncate(len(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)


_OBEYED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def _start_deaf_thread(target: Any, name: str) -> None:
    """Start a thread that never receives the agent's signals. The kernel gives a signal to any
    thread that does not block it (another one when the main thread has one pending, as in a
    storm of them), and only the main thread runs Python handlers: one taken by this thread
    would wait, unnoted, until the main thread's wait for the command returns, maybe hours."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _OBEYED)
    try:
        threading.Thread(target=target, name=name, daemon=True).start()  # inherits the blocked set
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _OBEYED)


def _subreaper() -> None:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # without it, escaped grandchildren go to init: the process group still covers the rest


def main(argv: list[str]) -> int:
    """`python -I -c ... EXEC_DIR`: supervise the command described in EXEC_DIR/supervise.json."""
    exec_dir = argv[0]
    log = os.open(os.path.join(exec_dir, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log, 2)
    os.close(log)
    try:
        return Supervisor(exec_dir).run()
    except Exception as e:  # noqa: BLE001 - said in its log and to the agent, which reports it
        print(f"error infra the task's supervisor failed: {type(e).__name__}: {e}", flush=True)
        print(f"supervisor failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


# --- the agent's side ----------------------------------------------------------------------------
class Lease:
    """The worker's lease file, renewed by a live agent and read by every supervisor of the worker.

    `share` of the server's lease (half): a supervisor kills its task at most half a lease after the
    agent's last renewal, while the server requeues only a whole lease after the last heartbeat it
    heard, and the agent heart-beats every third of a lease, so the kill always comes first."""

    share = 0.5

    def __init__(self, path: str, seconds: float | None = None, clock: Any = time.monotonic) -> None:
        self.path = path
        self.seconds = seconds  # None until the server said (no command of ours can run before)
        self.clock = clock

    def deadline(self) -> float:
        assert self.seconds is not None, "no command starts before the worker registered"
        return self.clock() + self.seconds * self.share

    def every(self) -> float:
        """How often to renew: a few times per supervisor deadline."""
        return max(0.1, (self.seconds or 1.0) * self.share / 5)

    def renew(self) -> None:
        # never a horizon longer than the server's lease allows: unknown yet, nothing is written
        if self.seconds is not None:
            write_lease(self.path, self.deadline())


def _entry(exec_dir: str) -> list[str]:
    # the directory (or the pyz) scitq_app was imported from: the supervisor runs this same code
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from scitq_app.supervisor import main; "
            "sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-I", "-c", code, root, exec_dir]


class SupervisedProcess:
    """The agent's handle on a supervised command (a `runner.Process`): its output is in the
    execution's log files, not in pipes (`stdout`/`stderr` are None)."""

    stdout = None
    stderr = None

    def __init__(self, exec_dir: str, pid: int, started: int | None, popen: subprocess.Popen | None = None) -> None:
        self.dir = exec_dir
        self.pid = pid          # the supervisor's, for the agent's signals
        self.started = started  # its start time: a pid alone may be someone else's after a while
        self.popen = popen      # set when this agent started it (then it is our child to reap)
        self._result: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _same(self) -> bool:
        return self.started is not None and start_time(self.pid) == self.started

    def send(self, action: str) -> None:
        if self._same():
            if action != "kill":  # a tree being stopped (term) must run to see it: a late pause must not stop it
                write_wanted(self.dir, "paused" if action == "pause" else "running")
            try:
                os.kill(self.pid, _ACTIONS[action])
            except ProcessLookupError:
                pass

    def alive(self) -> bool:
        return self._result is None and self._same()

    def result(self) -> dict[str, Any]:
        """Wait for the supervisor to end; what it wrote in exit.json (empty if it vanished)."""
        with self._lock:
            if self._result is None:
                if self.popen is not None:
                    self.popen.wait()
                else:
                    _wait_gone(self.pid, self.started)
                try:
                    with open(os.path.join(self.dir, EXIT), encoding="utf-8") as f:
                        self._result = json.load(f)
                except (OSError, ValueError):
                    self._result = {}
            return self._result


def _wait_gone(pid: int, started: int | None) -> None:
    """Block until `pid` (not our child) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = None
    if fd is not None:
        import select
        try:
            if start_time(pid) == started:  # the pidfd is of the right process
                select.select([fd], [], [])
            return
        finally:
            os.close(fd)
    while start_time(pid) == started and started is not None:
        time.sleep(0.2)


def launch(exec_dir: str, spec: dict[str, Any], lease: Lease) -> SupervisedProcess:
    """Start a supervisor for `spec` (argv, env, cwd, uid, gid) in `exec_dir`: returns once the
    command runs; OSError or (failure class, message) in `SupervisorRefused` otherwise."""
    body = dict(spec, lease_path=lease.path, lease_deadline=lease.deadline())
    fd = os.open(os.path.join(exec_dir, SPEC), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(body, f)
    popen = subprocess.Popen(_entry(exec_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert popen.stdout is not None
    with popen.stdout:
        line = popen.stdout.readline().decode("utf-8", "replace").strip()
    if not line.startswith("started "):
        popen.wait()
        words = line.split(" ", 2)
        if line.startswith("error ") and len(words) == 3:
            raise SupervisorRefused(words[1], words[2])
        raise SupervisorRefused("infra", f"the task's supervisor died before the command started "
                                         f"(see {os.path.join(exec_dir, LOG)})")
    return SupervisedProcess(exec_dir, popen.pid, start_time(popen.pid), popen)


class SupervisorRefused(Exception):
    """The command did not start: `failure_class` (app or infra) and a message in words."""

    def __init__(self, failure_class: str, message: str) -> None:
        super().__init__(message)
        self.failure_class = failure_class
        self.message = message


def adopt(exec_dir: str) -> SupervisedProcess | None:
    """After an agent restart: the supervised command of `exec_dir`, still running or ended since
    (its exit.json written), or None when there is none to follow (never started, or its
    supervisor died with the machine). A pid is trusted only on the boot that wrote it and with
    the start time it had."""
    try:
        with open(os.path.join(exec_dir, STATE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    pid, started = int(state["pid"]), state.get("start_time")
    same_boot = state.get("boot_id") == boot_id()
    if same_boot and started is not None and start_time(pid) == started:
        return SupervisedProcess(exec_dir, pid, started)
    if os.path.exists(os.path.join(exec_dir, EXIT)):
        return SupervisedProcess(exec_dir, pid, None)  # ended while no agent watched: its outcome is kept
    return None
