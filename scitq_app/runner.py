"""Running a command: locally in its own process group (here) or in a
container engine (`containers.py`), behind one contract.

A `Runner` starts a `Process` from a `RunSpec`; the process exposes its
stdout/stderr pipes, takes signals (pause, resume, term, kill) and reports
how it ended (`Outcome`: return code, peak memory, CPU time, OOM kill).
"""
from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Mapping

from . import supervisor
from .errors import ConfigError, ScitqError

class StartError(ScitqError):
    """The command could not start."""

    kind = "start"

    def __init__(self, message: str, failure_class: str = "app") -> None:
        super().__init__(message)
        self.failure_class = failure_class  # app: the task's fault; infra: the worker's


@dataclass(frozen=True)
class RunSpec:
    """What to run and where. `dirs` maps input/output/resource/tmp to host paths."""

    command: str
    shell: str                     # none | sh | bash
    dirs: Mapping[str, str]
    cpu: int = 1
    container: str | None = None
    container_options: str | None = None
    name: str = "scitq"            # container name / log label
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The command as argv: split like a shell would when no shell is asked for."""
        if self.shell in ("sh", "bash"):
            return [self.shell, "-c", self.command]
        try:
            argv = shlex.split(self.command)
        except ValueError as e:
            raise StartError(f"cannot split the command into arguments ({e}); use shell sh") from None
        if not argv:
            raise StartError("the command is empty")
        return argv


@dataclass
class Outcome:
    return_code: int
    peak_mem: int | None = None      # bytes
    cpu_time: float | None = None    # seconds
    oom: bool = False
    signal: int | None = None        # the signal that ended it, if any
    lost: str | None = None          # why the attempt was lost, not failed (its supervisor gave up on it)


class Process:
    """A started command. Subclasses implement the signal and wait mechanics.

    `pid` is a process group the worker may SIGKILL after a restart: the command's own, or for a
    container the helper that relays its output (the container itself is found by `Runner.attach`)."""

    stdout: IO[bytes]
    stderr: IO[bytes]
    pid: int | None = None

    def send(self, action: str) -> None:
        """pause | resume | term | kill, applied to the command (or its container)."""
        raise NotImplementedError

    def wait(self) -> Outcome:
        """Block until the command ended and release what it held (a container is removed);
        return its outcome."""
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError


class Runner:
    """Starts processes. `name` and `version` are what the worker reports (none, docker, podman,
    apptainer, and the engine's version)."""

    name = "abstract"
    version = ""

    def prepare(self, spec: RunSpec) -> None:
        """Get what `start` needs that may take long (a container image), without starting
        anything; StartError as `start`. The Job calls it before `start`, outside its lock."""

    def start(self, spec: RunSpec) -> Process:
        """Start the command; StartError (class app or infra) if it cannot start."""
        raise NotImplementedError

    def attach(self, name: str) -> Process | None:
        """After a worker restart: the process that `start` gave for the spec named `name`, found
        again and followed to its end, its stdout/stderr replaying its output from the start.
        None when it no longer exists or this runner cannot re-attach; then nothing of it is left
        running (a container found but not resumable is removed)."""
        return None

    def adopt(self, exec_dir: str) -> Process | None:
        """After an agent restart: the supervised command a previous agent started in the execution
        directory `exec_dir`, still running or ended since (its outcome kept), followed to its end;
        None when there is none to follow."""
        return None


@dataclass(frozen=True)
class TaskUser:
    """The account plain commands run as, when it is not the worker's own."""

    name: str
    uid: int
    gid: int


def find_task_user(name: str) -> TaskUser:
    """The account `name` (ConfigError naming it when it does not exist)."""
    import pwd
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"[worker] task_user {name!r} does not exist: `install.sh worker` creates it (useradd "
                          f"--system --no-create-home --shell /usr/sbin/nologin {name}); or set [worker] task_user = "
                          "root (SCITQ_WORKER_TASK_USER=root) to run tasks as root, where they can read this "
                          "worker's token and storage keys") from None
    return TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


class LocalProcess(Process):
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdout = popen.stdout  # type: ignore[assignment]
        self.stderr = popen.stderr  # type: ignore[assignment]
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()

    def send(self, action: str) -> None:
        sig = {"pause": signal.SIGSTOP, "resume": signal.SIGCONT, "term": signal.SIGTERM,
               "kill": signal.SIGKILL}[action]
        try:
            os.killpg(self.pid, sig)  # type: ignore[arg-type]
            if action == "term":
                # A stopped process group would not see SIGTERM until continued.
                os.killpg(self.pid, signal.SIGCONT)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self._outcome is None and self.popen.poll() is None

    def wait(self) -> Outcome:
        with self._lock:
            if self._outcome is None:
                # wait4 gives the child's own resource usage (peak RSS, CPU time).
                _, status, usage = os.wait4(self.pid, 0)  # type: ignore[arg-type]
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                code = 128 + sig if sig else os.WEXITSTATUS(status)
                self._outcome = Outcome(code, peak_mem=usage.ru_maxrss * 1024,
                                        cpu_time=usage.ru_utime + usage.ru_stime, signal=sig)
                # The group may have members left (background jobs of a shell): end them.
                try:
                    os.killpg(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
                except (ProcessLookupError, PermissionError):
                    pass
            return self._outcome


class SupervisedLocalProcess(Process):
    """A command run under its per-task supervisor (`supervisor.py`): it outlives the agent, and a
    restarted agent adopts it again. Its output is in the execution's log files (no pipes)."""

    stdout = None  # type: ignore[assignment]
    stderr = None  # type: ignore[assignment]
    pid = None     # nothing for `recover` to kill blindly: the supervisor answers for its tree

    def __init__(self, handle: "supervisor.SupervisedProcess") -> None:
        self.handle = handle

    def send(self, action: str) -> None:
        self.handle.send(action)

    def alive(self) -> bool:
        return self.handle.alive()

    def wait(self) -> Outcome:
        r = self.handle.result()
        if "return_code" not in r:
            return Outcome(-1, lost="the task's supervisor vanished before the command ended")
        cpu = r.get("cpu_time")
        outcome = Outcome(int(r["return_code"]), peak_mem=r.get("peak_mem"),
                          cpu_time=float(cpu) if cpu is not None else None, signal=r.get("signal"))
        if r.get("lease_expired"):
            outcome.lost = ("no worker agent renewed the lease in time: the task's supervisor killed it "
                            "before the server could run it elsewhere")
        return outcome


class LocalRunner(Runner):
    """Runs commands on the host, exporting INPUT OUTPUT RESOURCE TEMP CPU; as `user` when given
    (a root worker's unprivileged task user), else as the worker's own user.

    With a `lease` (the worker agent's), each command runs under its own supervisor, which keeps it
    and its output across agent restarts and kills it when no agent renews the lease; without one
    (tools, tests of the runner alone) the command is this process's child."""

    name = "none"

    def __init__(self, user: TaskUser | None = None, lease: "supervisor.Lease | None" = None) -> None:
        self.user = user
        self.lease = lease

    def adopt(self, exec_dir: str) -> Process | None:
        handle = supervisor.adopt(exec_dir)
        return SupervisedLocalProcess(handle) if handle is not None else None

    def start(self, spec: RunSpec) -> Process:
        if spec.container:
            raise StartError(f"this worker has no container engine for image {spec.container!r} "
                             "(set [worker] engine)", "infra")
        env = clean_env()
        env.update({"INPUT": spec.dirs["input"], "OUTPUT": spec.dirs["output"], "RESOURCE": spec.dirs["resource"],
                    "TEMP": spec.dirs["tmp"], "TMPDIR": spec.dirs["tmp"], "CPU": str(spec.cpu)})
        env.update(spec.extra_env)
        account: dict = {}
        if self.user is not None:
            # the worker's own HOME (root's) is no place for a task: its tmp is
            env.update({"HOME": spec.dirs["tmp"], "USER": self.user.name, "LOGNAME": self.user.name})
            account = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        if self.lease is not None:
            body = {"argv": spec.argv(), "env": env, "cwd": spec.dirs["tmp"],
                    "uid": self.user.uid if self.user else None, "gid": self.user.gid if self.user else None}
            try:
                return SupervisedLocalProcess(supervisor.launch(os.path.dirname(spec.dirs["tmp"]), body, self.lease))
            except supervisor.SupervisorRefused as e:
                raise StartError(e.message, e.failure_class) from None
            except OSError as e:  # no process, descriptor or disk left for the supervisor itself
                raise StartError(f"cannot start the task's supervisor: {e.strerror or e}", "infra") from None
        try:
            popen = subprocess.Popen(spec.argv(), cwd=spec.dirs["tmp"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, close_fds=True, **account)
        except FileNotFoundError as e:
            raise StartError(f"command not found: {e.filename}") from None
        except PermissionError as e:
            raise StartError(f"cannot execute {e.filename}: permission denied") from None
        except OSError as e:
            raise StartError(f"cannot start the command: {e.strerror or e}",
                             "infra" if e.errno in supervisor.WORKER_ERRNOS else "app") from None
        return LocalProcess(popen)


def clean_env() -> dict[str, str]:
    """The worker's environment without its SCITQ_* settings: the worker's own secrets never reach
    tasks, nor the container engines that could pass them on (`-e NAME`, `--env-host`)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}


def process_identity(pid: int) -> dict[str, Any]:
    """What names a process beyond its pid, for a later agent: the boot and its start time."""
    return {"pid": pid, "boot_id": supervisor.boot_id(), "start_time": supervisor.start_time(pid)}


def kill_group(identity: Mapping[str, Any]) -> bool:
    """SIGKILL a leftover process group a previous agent recorded with `process_identity`, only if
    it is still that process (same boot, same start time: pids are reused); True if it was."""
    pid = int(identity.get("pid") or 0)
    if not pid or identity.get("boot_id") != supervisor.boot_id() or \
            identity.get("start_time") is None or supervisor.start_time(pid) != identity["start_time"]:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def task_account(name: str, euid: int, workdir: str) -> tuple[TaskUser | None, str | None]:
    """Who plain tasks run as, and a warning to log once: a root worker runs them as `[worker]
    task_user` (refusing to start when that account is missing or cannot reach the work dir), or as
    root only when told so; a worker that is not root can only run them as itself."""
    if euid != 0:
        return None, (f"this worker does not run as root: its tasks run as its own user and can read its token "
                      f"and storage keys in {workdir}/.scitq")
    if name == "root":
        return None, ("[worker] task_user = root: tasks run as root and can read this worker's token and storage "
                      "keys; run it through install.sh worker for an unprivileged task user")
    user = find_task_user(name)
    # the task user must reach its own work dir (exec-N/...) but list nothing else: o+x all the way
    os.chmod(workdir, 0o711)
    path = os.path.dirname(workdir)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(f"[worker] task_user {name} cannot reach the work dir {workdir}: {path} is mode "
                              f"{stat.S_IMODE(mode):o}; allow traversal with `chmod o+x {path}`")
        if path == os.path.dirname(path):
            return user, None
        path = os.path.dirname(path)
