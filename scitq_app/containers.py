"""Running tasks in a container engine: docker, podman (same CLI) or apptainer/singularity.

`ContainerRunner` drives the engine's command line, never its API, so any
engine version that has the usual subcommands works. For docker and podman a
task is `create` + `start`, then a follower (`logs -f`) whose pipes are the
task's stdout/stderr; the end is `wait` + `inspect` (exit code, OOM kill) +
`rm`. Because the container outlives the worker, a restarted worker can find
it again by name (`attach`) and follow it to its end. Apptainer runs the task
as a host process (`apptainer exec`), so it cannot be re-attached.

`WorkerRunner` is what a worker uses: container tasks go to its engine, the
others to the host (`LocalRunner`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shlex
import shutil
import subprocess
import threading
import time
from typing import Any

from .config import Config
from .container_policy import DEFAULT_DENY, denied, parse_rules
from .errors import ConfigError
from .runner import LocalProcess, LocalRunner, Outcome, Process, RunSpec, Runner, StartError, TaskUser, clean_env
from .supervisor import Lease

log = logging.getLogger(__name__)

ENGINES = ("docker", "podman", "apptainer", "singularity")
MOUNTS = (("input", "/input", False), ("output", "/output", False), ("tmp", "/tmp", False),
          ("resource", "/resource", True))
CALL_TIMEOUT = 120.0    # seconds for a short engine command (create, inspect, kill, rm...)
PULL_TIMEOUT = 3600.0   # seconds for pulling one image
PULL_RETRY_AFTER = 60.0  # seconds a failed pull is not tried again (10 tasks, one failed pull)
FOLLOW_STALL = 10.0     # seconds a log follower may relay nothing after its container ended
ACTIVE = ("created", "running", "paused", "restarting", "removing", "stopping")
# Where each engine keeps a task's output, so that `logs -f` can replay it after a worker restart
# (the daemon's default may be a driver that cannot be read back, like journald or none).
LOG_DRIVER = {"docker": "json-file", "podman": "k8s-file"}
# The OCI runtime's words (runc, crun) when the task's command cannot be executed.
_EXEC_FAILED = re.compile(r'exec: "[^"]*": (executable file not found|no such file or directory|permission denied)',
                          re.I)
PACKAGES = {"docker": "docker.io", "podman": "podman runc", "apptainer": "apptainer",
            "singularity": "singularity-ce"}


def workdir_tag(workdir: str) -> str:
    """A short tag unique to a worker's work dir, added to its container names: two workers on one
    host (each with its own work dir) never collide, and a restarted worker finds its own again."""
    return hashlib.sha1(os.path.realpath(workdir).encode()).hexdigest()[:8]


def safe_ulimits() -> list[str]:
    """`--ulimit` flags at this process's hard limits.

    podman asks the kernel for its default limits (nofile 1048576...), which fails with
    "setrlimit: operation not permitted" where root lacks CAP_SYS_RESOURCE (some sandboxes and
    CI machines); limits within our own hard limits always work. nproc is capped at 32768 because
    runc refused higher values there although the hard limit allowed them."""
    flags = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 1 << 20), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(which)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def _message(result: subprocess.CompletedProcess | None, default: str) -> str:
    """The useful end of an engine's error output, on one line."""
    if result is None:
        return default
    text = (result.stderr or "") + ("" if result.stderr else result.stdout or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Trying to pull")]
    message = " / ".join(lines[-3:]) or f"exit code {result.returncode}"
    return message if len(message) <= 1500 else "..." + message[-1500:]


class ContainerRunner(Runner):
    """Runs tasks in docker, podman or apptainer/singularity through their command line.

    `engine_options` go before the subcommand (global flags such as podman's
    `--runtime runc`), `run_options` into every container run before the task's
    own `container_options`. Registry credentials come from here, never from a
    task: the engine logs in once, into an auth file under `state_dir`, and only
    for images of that registry."""

    def __init__(self, engine: str, *, workdir: str, state_dir: str, binary: str | None = None,
                 engine_options: str = "", run_options: str = "", registry: str = "", registry_user: str = "",
                 registry_password: str = "", deny: str = DEFAULT_DENY) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"unknown container engine {engine!r} (one of {', '.join(ENGINES)})")
        self.name = engine
        self.apptainer = engine in ("apptainer", "singularity")
        self.binary = binary or shutil.which(engine) or ""
        if not self.binary:
            raise ConfigError(f"[worker] engine is {engine} but there is no {engine} command on PATH: install it "
                              f"(apt-get install {PACKAGES[engine]}) or set [worker] engine = none")
        try:
            self.engine_options = shlex.split(engine_options)
            self.run_options = shlex.split(run_options)
        except ValueError as e:
            raise ConfigError(f"[worker] engine_options / run_options cannot be split into arguments ({e})") from None
        if bool(registry_user) != bool(registry_password) or (registry_user and not registry):
            raise ConfigError("[worker] registry, registry_user and registry_password go together: set all three "
                              "(or only registry for a public one)")
        self.registry = registry.strip().rstrip("/")
        self.deny = parse_rules(deny, "[worker] container_deny")
        self.registry_user, self.registry_password = registry_user, registry_password
        self.tag = workdir_tag(workdir)
        self.auth_dir = os.path.join(state_dir, "engine-auth")
        self.image_dir = os.path.join(state_dir, "images")   # apptainer's pulled SIF files
        self.ulimits = safe_ulimits() if engine == "podman" else []
        self.version = ""
        self._ready: dict[str, str] = {}   # image -> what to run (the image, or a SIF path)
        self._failed: dict[str, tuple[float, StartError]] = {}
        self._image_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._logged_in = False

    # --- engine commands ------------------------------------------------------------
    def _argv(self, *args: str) -> list[str]:
        return [self.binary, *self.engine_options, *args]

    def call(self, *args: str, timeout: float | None = CALL_TIMEOUT, input: str | None = None,
             env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run one engine command to its end; a command that cannot run or hangs is a failed result."""
        try:
            return subprocess.run(self._argv(*args), input=input, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, env=env or clean_env(), cwd=cwd,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "",
                                               f"{self.name} {args[0]} did not answer in {timeout:.0f} s")
        except OSError as e:
            return subprocess.CompletedProcess(args, 127, "", f"cannot run {self.binary}: {e.strerror or e}")

    def check(self) -> str:
        """The engine's version; ConfigError with the fix when it does not answer."""
        fmt = [] if self.apptainer else ["--format", "{{.Server.Version}}" if self.name == "docker"
                                         else "{{.Client.Version}}"]
        result = self.call("version", *fmt, timeout=30)
        if result.returncode != 0 or not result.stdout.strip():
            hint = ("start the docker daemon (or point DOCKER_HOST at it)" if self.name == "docker"
                    else f"check that `{self.name} version` works as the worker's user")
            raise ConfigError(f"[worker] engine is {self.name} but `{self.name} version` failed "
                              f"({_message(result, 'no answer')}): {hint}, or set [worker] engine = none")
        self.version = result.stdout.strip().splitlines()[-1].strip()
        return self.version

    def container_name(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def inspect(self, name: str) -> dict[str, Any] | None:
        """The engine's record of a container (by full name), or None if there is none."""
        result = self.call("container", "inspect", name)
        if result.returncode != 0:
            return None
        try:
            found = json.loads(result.stdout)
        except ValueError:
            return None
        return found[0] if found else None

    def remove(self, name: str) -> None:
        result = self.call("rm", "-f", "-v", name)
        if result.returncode != 0 and self.inspect(name) is not None:
            log.warning("cannot remove container %s: %s", name, _message(result, "?"))

    # --- images ---------------------------------------------------------------------
    def _image_lock(self, image: str) -> threading.Lock:
        with self._locks_lock:
            return self._image_locks.setdefault(image, threading.Lock())

    def _on_registry(self, image: str) -> bool:
        ref = image.split("://", 1)[-1]
        return bool(self.registry) and ref.startswith(self.registry + "/")

    def _authfile(self) -> str:
        return os.path.join(self.auth_dir, "auth.json")

    def _login(self) -> None:
        """Log in to the configured registry once per worker; the password goes on stdin."""
        with self._login_lock:
            if self._logged_in:
                return
            os.makedirs(self.auth_dir, mode=0o700, exist_ok=True)
            login = ["-u", self.registry_user, "--password-stdin", self.registry]
            if self.name == "docker":
                result = self.call("--config", self.auth_dir, "login", *login, input=self.registry_password)
            else:
                result = self.call("login", "--authfile", self._authfile(), *login, input=self.registry_password)
            if result.returncode != 0:
                raise StartError(f"cannot log in to registry {self.registry}: {_message(result, 'login failed')}",
                                 "infra")
            self._logged_in = True
            log.info("logged in to registry %s", self.registry, extra={"action": "registry_login"})

    def ensure_image(self, image: str) -> str:
        """Make the image available and return what to run. An image the engine already has is used
        as it is; a missing one is pulled once per worker, concurrent callers waiting for that one
        pull. A failed pull is StartError class infra with the engine's message, given again without
        pulling to the tasks that want the image in the next PULL_RETRY_AFTER seconds."""
        with self._image_lock(image):
            if image in self._ready:
                return self._ready[image]
            failed = self._failed.get(image)
            if failed is not None and time.monotonic() - failed[0] < PULL_RETRY_AFTER:
                raise failed[1]
            try:
                target = self._apptainer_image(image) if self.apptainer else self._engine_image(image)
            except StartError as e:
                self._failed[image] = (time.monotonic(), e)
                raise
            self._failed.pop(image, None)
            self._ready[image] = target
            return target

    def _engine_image(self, image: str) -> str:
        if self.call("image", "inspect", image).returncode == 0:
            return image
        private = self._on_registry(image) and bool(self.registry_user)
        if private:
            self._login()
        if self.name == "docker":
            self._pull(image, [*(["--config", self.auth_dir] if private else []), "pull", image])
        else:
            self._pull(image, ["pull", *(["--authfile", self._authfile()] if private else []), image])
        return image

    def _apptainer_image(self, image: str) -> str:
        if "://" not in image and (image.startswith((".", "/")) or image.endswith(".sif")):
            if not os.path.exists(image):
                raise StartError(f"image file {image} does not exist on this worker", "infra")
            return image
        uri = image if "://" in image else f"docker://{image}"
        path = os.path.join(self.image_dir, hashlib.sha1(uri.encode()).hexdigest()[:16] + ".sif")
        if os.path.exists(path):
            return path
        os.makedirs(self.image_dir, exist_ok=True)
        env = clean_env()
        if self._on_registry(image) and self.registry_user:
            prefix = self.name.upper()
            env[f"{prefix}_DOCKER_USERNAME"], env[f"{prefix}_DOCKER_PASSWORD"] = (self.registry_user,
                                                                                  self.registry_password)
        part = path + ".part"
        self._pull(image, ["pull", "--force", part, uri], env=env)
        os.replace(part, path)
        return path

    def _pull(self, image: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log.info("pulling image %s", image, extra={"action": "pull"})
        started = time.monotonic()
        result = self.call(*args, timeout=PULL_TIMEOUT, env=env)
        if result.returncode != 0:
            message = _message(result, "pull failed")
            # an image the registry does not have is the task's error (a retry may be spent on it);
            # anything else (registry down, credentials, disk) is this worker's trouble
            missing = any(m in message.lower() for m in _IMAGE_MISSING)
            raise StartError(f"cannot pull image {image}: {message}", "app" if missing else "infra")
        log.info("pulled image %s in %.1f s", image, time.monotonic() - started, extra={"action": "pulled"})

    # --- running ---------------------------------------------------------------------
    def refuse_denied(self, spec: RunSpec) -> None:
        """StartError (class staging: the task's own setup, refused before anything runs) when the
        task's container_options hold an option of this worker's deny-list, whatever the server
        allowed: a server configured too widely, or a task submitted before its policy tightened."""
        option = denied(spec.container_options, self.deny)
        if option is not None:
            raise StartError(f"container option {option} is refused by this worker's [worker] container_deny "
                             "(it would reach the host: mounts, privileges or host namespaces)", "staging")

    def prepare(self, spec: RunSpec) -> None:
        if spec.container:
            self.refuse_denied(spec)  # before pulling an image for nothing
            self.ensure_image(spec.container)

    def start(self, spec: RunSpec) -> Process:
        if not spec.container:
            raise StartError("this runner only runs container tasks", "infra")
        self.refuse_denied(spec)
        try:
            options = shlex.split(spec.container_options or "")
        except ValueError as e:
            raise StartError(f"cannot split container_options into arguments ({e})") from None
        argv = spec.argv()
        image = self.ensure_image(spec.container)
        env = {"CPU": str(spec.cpu), "INPUT": "/input", "OUTPUT": "/output", "RESOURCE": "/resource",
               "TEMP": "/tmp", **spec.extra_env}
        if self.apptainer:
            return self._exec_apptainer(spec, image, env, options, argv)
        name = self.container_name(spec.name)
        # The engine runs in the work dir: podman's conmon (2.1.6) drops an `oom` file in its cwd.
        cwd = os.path.dirname(spec.dirs["tmp"])
        create = ["create", "--name", name, "--log-driver", LOG_DRIVER[self.name], *self.ulimits, "-w", "/tmp"]
        for key, target, read_only in MOUNTS:
            create += ["-v", f"{spec.dirs[key]}:{target}" + (":ro" if read_only else "")]
        for k, v in env.items():
            create += ["-e", f"{k}={v}"]
        kernel = KernelLog()
        result = self.call(*create, *self.run_options, *options, image, *argv, cwd=cwd)
        if result.returncode != 0:
            kernel.close()
            self.remove(name)
            # The image is there (ensure_image), so a refused create is about the options: the
            # task's own when it gave some, otherwise the worker's.
            raise StartError(f"{self.name} could not create the container: {_message(result, 'create failed')}",
                             "app" if options else "infra")
        result = self.call("start", name, cwd=cwd)
        if result.returncode != 0:
            kernel.close()
            self.remove(name)
            message = _message(result, "start failed")
            # The command is not in the image or cannot be run: the task's fault, not the worker's.
            raise StartError(f"{self.name} could not start the container: {message}",
                             "app" if _EXEC_FAILED.search(message) else "infra")
        try:
            return ContainerProcess(self, name, kernel, cwd=cwd)
        except OSError as e:
            kernel.close()
            self.call("kill", name)
            self.remove(name)
            raise StartError(f"cannot follow the container's output: {e.strerror or e}", "infra") from None

    def _exec_apptainer(self, spec: RunSpec, image: str, env: dict[str, str], options: list[str],
                        argv: list[str]) -> Process:
        binds = ",".join(f"{spec.dirs[key]}:{target}" + (":ro" if ro else "") for key, target, ro in MOUNTS)
        cmd = self._argv("exec", "--containall", "--pwd", "/tmp", "--bind", binds,
                         *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
                         *self.run_options, *options, image, *argv)
        try:
            popen = subprocess.Popen(cmd, cwd=spec.dirs["tmp"], env=clean_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     close_fds=True)
        except OSError as e:
            raise StartError(f"cannot run {self.binary}: {e.strerror or e}", "infra") from None
        return LocalProcess(popen)

    def attach(self, name: str) -> Process | None:
        """Follow a container a previous run of this worker started (running, paused or already
        ended): its output is replayed from the start. None if there is none; a container that
        never started is removed."""
        if self.apptainer:
            return None
        full = self.container_name(name)
        info = self.inspect(full)
        if info is None:
            return None
        status = info.get("State", {}).get("Status", "")
        if status not in ("running", "paused", "exited", "stopped"):
            self.remove(full)
            return None
        return ContainerProcess(self, full, KernelLog(), paused=status == "paused")


class ContainerProcess(Process):
    """A docker or podman container followed by `logs -f`; signals go to the container."""

    def __init__(self, runner: ContainerRunner, name: str, kernel: "KernelLog", *, paused: bool = False,
                 cwd: str | None = None) -> None:
        self.runner = runner
        self.name = name
        self.kernel = kernel
        self.cwd = cwd
        self.paused = paused
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()
        self.follower = subprocess.Popen(runner._argv("logs", "-f", name), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                                         start_new_session=True, close_fds=True, cwd=cwd)
        self.pid = self.follower.pid
        self.stdout = self.follower.stdout  # type: ignore[assignment]
        self.stderr = self.follower.stderr  # type: ignore[assignment]

    def send(self, action: str) -> None:
        r = self.runner
        if action == "pause":
            self.paused = r.call("pause", self.name, cwd=self.cwd).returncode == 0 or self.paused
        elif action == "resume":
            if r.call("unpause", self.name, cwd=self.cwd).returncode == 0:
                self.paused = False
        elif action in ("term", "kill"):
            # A paused container would only see SIGTERM once unpaused (like SIGCONT after SIGTERM locally).
            r.call("kill", "--signal", "TERM" if action == "term" else "KILL", self.name, cwd=self.cwd)
            if self.paused:
                r.call("unpause", self.name, cwd=self.cwd)
                self.paused = False
        else:
            raise ValueError(f"unknown action {action!r}")

    def alive(self) -> bool:
        if self._outcome is not None:
            return False
        info = self.runner.inspect(self.name)
        return info is not None and info.get("State", {}).get("Status") in ACTIVE

    def wait(self) -> Outcome:
        with self._lock:
            if self._outcome is None:
                info = self._wait_ended()
                self._stop_follower()
                self.runner.remove(self.name)
                state = (info or {}).get("State", {})
                if info is None:
                    log.warning("container %s vanished before its exit code was read", self.name)
                code = int(state.get("ExitCode", -1)) if info is not None else -1
                # OOMKilled counts when the kill made the task fail (a shell may survive a killed child);
                # the kernel's log tells when the engine missed it (podman 4 on cgroup v1 does).
                oom = code != 0 and (bool(state.get("OOMKilled")) or
                                     self.kernel.oom_killed((info or {}).get("Id", "")))
                self.kernel.close()
                self._outcome = Outcome(code, oom=oom, signal=code - 128 if 128 < code <= 128 + 64 else None)
            return self._outcome

    def _wait_ended(self) -> dict[str, Any] | None:
        while True:
            self.runner.call("wait", self.name, timeout=None, cwd=self.cwd)
            info = self.runner.inspect(self.name)
            if info is None or info.get("State", {}).get("Status") not in ACTIVE:
                return info
            time.sleep(1.0)  # `wait` returned early (interrupted, engine restart): wait again

    def _stop_follower(self) -> None:
        """Let the follower relay the end of the output, but not hang on a stuck one."""
        relayed = -1
        while True:
            try:
                self.follower.wait(FOLLOW_STALL)
                return
            except subprocess.TimeoutExpired:
                now = _bytes_written(self.follower.pid)
                if now == relayed or now < 0:
                    break
                relayed = now
        log.warning("the log follower of container %s stalled; stopping it", self.name)
        self.follower.kill()
        self.follower.wait()


def _bytes_written(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


class KernelLog:
    """The kernel log (/dev/kmsg) from now on, to see OOM kills in a container's memory cgroup
    that the engine did not report. Needs root (or CAP_SYSLOG); without it, it sees nothing."""

    def __init__(self) -> None:
        self.fd: int | None = None
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.close()

    def oom_killed(self, container_id: str) -> bool:
        """True if the kernel logged an OOM kill of a task in this container's cgroup since then."""
        if self.fd is None or not container_id:
            return False
        needle, found = container_id.encode(), False
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BrokenPipeError:
                continue  # older records were overwritten while we read: go on with the next
            except OSError:
                break  # EAGAIN: nothing more
            if not record:
                break
            # e.g. "oom-kill:constraint=CONSTRAINT_MEMCG,...,task_memcg=/libpod_parent/libpod-<id>,task=dd,..."
            if b"oom-kill:" in record and needle in record:
                found = True
        return found

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class WorkerRunner(Runner):
    """A worker's runner: container tasks to its engine (if any), the others to the host."""

    def __init__(self, local: Runner, engine: ContainerRunner | None = None) -> None:
        self.local = local
        self.engine = engine
        self.name = engine.name if engine else local.name
        self.version = engine.version if engine else ""

    def prepare(self, spec: RunSpec) -> None:
        if spec.container and self.engine is not None:
            self.engine.prepare(spec)

    def start(self, spec: RunSpec) -> Process:
        if spec.container and self.engine is not None:
            return self.engine.start(spec)
        return self.local.start(spec)

    def adopt(self, exec_dir: str) -> Process | None:
        return self.local.adopt(exec_dir)

    def attach(self, name: str) -> Process | None:
        if self.engine is None:
            log.warning("container of %s: this worker has no [worker] engine now, so it cannot re-attach to it "
                        "or remove it", name)
            return None
        return self.engine.attach(name)


# what docker, podman and apptainer say when the registry answers that the image does not exist
_IMAGE_MISSING = ("manifest unknown", "name unknown", "not found", "does not exist", "repository does not exist")


def make_runner(config: Config, workdir: str, state_dir: str, user: TaskUser | None = None,
                lease: Lease | None = None) -> WorkerRunner:
    """The runner `[worker] engine` asks for, its engine checked (ConfigError with the fix); plain
    commands run as `user` when given, each under its supervisor when the agent's `lease` is given."""
    w = config.worker
    local = LocalRunner(user, lease)
    if w.engine == "none":
        return WorkerRunner(local)
    engine = ContainerRunner(w.engine, workdir=workdir, state_dir=state_dir, engine_options=w.engine_options,
                             run_options=w.run_options, registry=w.registry, registry_user=w.registry_user,
                             registry_password=w.registry_password, deny=w.container_deny)
    engine.check()
    return WorkerRunner(local, engine)
