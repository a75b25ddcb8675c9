"""Real scitq processes for tests: a server (and workers) as subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from .postgres import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# remotes (s3, gcs) that test servers accept in URIs, so `s3://bucket/file` is a valid example
EXAMPLE_RCLONE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rclone-examples.conf")


def scitq_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["SCITQ_CONFIG"] = os.devnull  # never read the machine's /etc/scitq.conf
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


LISTENING = "scitq: server listening on "


class ServerProcess:
    """`python -m scitq_app server` on a free port, run in `workdir`: a first start on an
    empty database writes the admin token there (`token_file`; `admin_token` reads it)."""

    def __init__(self, database: str, workdir: str, *, port: int | None = None, listen: str = "127.0.0.1",
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.database = database
        self.workdir = workdir
        self.port = port or free_port()
        self._port_chosen = port is None  # a busy port is then retried with another
        self.listen = listen
        self.extra_env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        self.token_file = os.path.join(workdir, "admin.token")

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    @property
    def admin_token(self) -> str | None:
        """The admin secret this server (or an earlier one in the same workdir) wrote at the
        first start on its empty database; None when the database was initialised elsewhere."""
        try:
            return read_text(self.token_file).strip() or None
        except FileNotFoundError:
            return None

    def start(self, wait: bool = True) -> "ServerProcess":
        env = scitq_env(**{"SCITQ_SERVER_RCLONE_CONFIG": EXAMPLE_RCLONE_CONFIG,
                           "SCITQ_SERVER_TOKEN_FILE": self.token_file,
                           # its registry entry (tokenfiles) stays in the workdir, not the tester's home
                           "XDG_STATE_HOME": os.path.join(self.workdir, "state"),
                           "SCITQ_SERVER_DATABASE": self.database, "SCITQ_SERVER_PORT": str(self.port),
                           "SCITQ_SERVER_LISTEN": self.listen, **self.extra_env})
        for attempt in range(5):
            self._log = open(self.log_path, "ab")
            logged = self._log.tell()
            env["SCITQ_SERVER_PORT"] = str(self.port)
            self.proc = subprocess.Popen([sys.executable, "-m", "scitq_app", "server", *self.args],
                                         cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT)
            if not wait:
                return self
            # Its own line, not an answer on the port: another test's server may hold the port.
            wait_for(lambda: self.proc.poll() is not None or LISTENING in self._log_since(logged), 30,
                     what=f"the server on port {self.port} to listen or exit")
            if self.proc.poll() is None:
                wait_http(self.url + "/api/v1/health", proc=self.proc)
                return self
            self._log.close()
            if not (self._port_chosen and "Address already in use" in self._log_since(logged)):
                break
            self.port = free_port()
        raise RuntimeError(f"the server exited with {self.proc.returncode}: {self._log_since(logged)[-2000:]}")

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def api(url: str, method: str, path: str, body: Any = None, token: str | None = None,
        raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A bare HTTP call (for tests that must see status codes and headers as sent)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method)
    if body is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text.decode("utf-8", "replace")


class WorkerProcess:
    """`python -m scitq_app worker run` as a real subprocess."""

    def __init__(self, server_url: str, workdir: str, name: str, *, concurrency: int = 1, prefetch: int = 0,
                 heartbeat: float = 0.5, token: str | None = None, join_token: str | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None) -> None:
        self.server_url = server_url
        self.workdir = workdir
        self.name = name
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.heartbeat = heartbeat
        self.token = token            # [worker] token: only a worker token is accepted
        self.join_token = join_token  # [worker] join_token: how a new worker registers
        self.extra_env = env or {}
        self.prefix = prefix or []   # e.g. ["nsenter", "--net=/run/netns/x"]
        self.proc: subprocess.Popen | None = None
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "worker.log")

    def start(self) -> "WorkerProcess":
        settings = {"SCITQ_WORKER_SERVER": self.server_url, "SCITQ_WORKER_WORKDIR": self.workdir,
                    "SCITQ_WORKER_NAME": self.name, "SCITQ_WORKER_CONCURRENCY": str(self.concurrency),
                    "SCITQ_WORKER_PREFETCH": str(self.prefetch), "SCITQ_WORKER_HEARTBEAT": str(self.heartbeat),
                    # not an installed worker: tasks run as the test's user unless a test says otherwise
                    "SCITQ_WORKER_TASK_USER": "root"}
        if self.token:
            settings["SCITQ_WORKER_TOKEN"] = self.token
        if self.join_token:
            settings["SCITQ_WORKER_JOIN_TOKEN"] = self.join_token
        env = scitq_env(**{**settings, **self.extra_env})  # a test's own env wins
        if getattr(self, "_log", None) is not None:
            self._log.close()  # started again (after a kill): one log, appended to
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.prefix + [sys.executable, "-m", "scitq_app", "worker", "run"],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self._log.close()
        kill_leftovers(self.workdir)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def kill_leftovers(workdir: str) -> None:
    """End what a SIGKILLed worker left behind in its work dir: supervised commands (their
    supervisor kills the whole tree on SIGHUP) and the process groups of container helpers."""
    from scitq_app import supervisor
    from scitq_app.runner import kill_group
    if not os.path.isdir(workdir):
        return
    for name in os.listdir(workdir):
        d = os.path.join(workdir, name)
        if not name.startswith("exec-"):
            continue
        handle = supervisor.adopt(d)
        if handle is not None and handle.alive():
            handle.send("kill")
        try:
            identity = json.loads(read_text(os.path.join(d, "pid")))
        except (OSError, ValueError):
            continue
        if isinstance(identity, dict):
            kill_group(identity)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return it, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
