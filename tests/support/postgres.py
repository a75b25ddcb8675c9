"""A throwaway PostgreSQL cluster for the test session (real server, temp dir, free port).

Used when SCITQ_TEST_PG_DSN is not given. initdb refuses to run as root, so
as root the cluster runs as the `postgres` OS user. The directory is created
here, marked as ours, and only a marked directory is ever removed.
"""
from __future__ import annotations

import glob
import os
import shutil
import secrets
import socket
import subprocess
import tempfile
import time

MARKER = ".scitq-test-postgres"


def free_port() -> int:
    """A port free on 127.0.0.1 now, drawn at random from 20000-31999: below the kernel's ephemeral
    range, from which it picks ports for outgoing connections and for `bind(0)` in parallel tests,
    and where a port it handed out can be handed out again before the bind that uses it."""
    for _ in range(200):
        port = 20000 + secrets.randbelow(12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> str | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2].split(".")[0]))
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir: str | None = None
        self.port = 0
        self.password = "scitq-test"

    def available(self) -> bool:
        return self.bindir is not None

    def _as_owner(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        if os.getuid() == 0:
            args = ["runuser", "-u", "postgres", "--"] + args
        return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, **kw)

    def start(self) -> str:
        assert self.bindir
        self.dir = tempfile.mkdtemp(prefix="scitq-pg-")
        open(os.path.join(self.dir, MARKER), "w").close()
        data = os.path.join(self.dir, "data")
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password)
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(pwfile, "postgres")
        self._as_owner([f"{self.bindir}/initdb", "-D", data, "-U", "postgres", "--pwfile", pwfile,
                        "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
        self.port = free_port()
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._opts = opts
        self._pg_ctl("start")
        return self.dsn("postgres")

    def _pg_ctl(self, action: str, *flags: str) -> None:
        assert self.dir
        self._as_owner([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-o", self._opts,
                        "-l", os.path.join(self.dir, "log"), *flags, "-w", "-t", "60", action])

    def pause(self) -> None:
        """Stop the server (fast: connections are cut) without losing its data; `resume` restarts it."""
        self._pg_ctl("stop", "-m", "fast")

    def resume(self) -> None:
        self._pg_ctl("start")

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if not self.dir or not os.path.exists(os.path.join(self.dir, MARKER)):
            return
        try:
            self._as_owner([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate",
                            "-w", "stop"])
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
