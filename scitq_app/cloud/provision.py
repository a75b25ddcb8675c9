"""Turn an SSH-reachable host into a worker of this server, as one job with steps, progress and
a log: connect (host key verified), check the host, upload the pyz (and rclone when the host has
none: hosts without internet access work), run the pyz's own install.sh with a join token minted
for that host, and wait until the worker has registered.

A failure at any step fails the job with a message in words, leaves its log, and puts the host
back as it was: what this run installed is uninstalled (only when the host had no scitq before),
the uploaded files removed, the join token revoked, and a worker row it created deleted.

Producers never print: progress goes to `on_event` (see cli/progress.py) and to the job's record
on the server (through the client), the only places anyone reads it.
"""
from __future__ import annotations

import os
import re
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from ..errors import NotFound, ProvisionError, ScitqError, SshError
from .ssh import SshHost



class FleetApi(Protocol):
    """What provisioning needs of the server: `client.Server` (the CLI, over HTTP) or the
    dispatcher's view of its store (recruiting)."""

    def create_job(self, kind: str, target: str, params: dict | None = None) -> dict: ...
    def update_job(self, job_id: int, **changes: Any) -> dict: ...
    def append_job_log(self, job_id: int, lines: Sequence[str]) -> int: ...
    def create_join_token(self, uses: int = 1, ttl: float = 3600, batch: str | None = None,
                          name: str | None = None) -> dict: ...
    def revoke_token(self, name: str) -> dict: ...
    def trust_host_key(self, host: str, key_type: str, key_data: str) -> dict: ...
    def host_key(self, host: str) -> dict: ...
    def workers(self, batch: str | None = None) -> list[dict]: ...
    def delete_worker(self, worker_id: int) -> dict: ...

MIN_PYTHON = (3, 10)
MAX_CLOCK_SKEW = 120.0   # seconds: beyond, TLS, leases and logs go wrong on that host
SPARE_DISK = 64 << 20    # bytes free beyond what is uploaded and installed
LOG_EVERY = 0.5          # seconds between two deliveries of log lines to the server
STEPS = ("connect", "check", "upload", "install", "register")
# where each step starts, as a fraction of the job (upload is the long one)
_STARTS = {"connect": 0.0, "check": 0.1, "upload": 0.2, "install": 0.6, "register": 0.9}

_CHECK = r"""
echo "os=$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")"
echo "python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
echo "systemd=$([ -d /run/systemd/system ] && echo yes || echo no)"
echo "rclone=$(command -v rclone || echo none)"
echo "scitq=$([ -e /etc/scitq.conf ] || [ -e /usr/local/lib/scitq ] && echo yes || echo no)"
mkdir -p /usr/local/lib /var/lib
echo "free=$(df -Pk /var/tmp /usr/local/lib /var/lib | awk 'NR > 1 {print $4}' | sort -n | head -n 1)"
echo "hostname=$(hostname)"
echo "arch=$(uname -m)"
echo "now=$(date +%s)"
"""


@dataclass(frozen=True)
class Target:
    """A host to provision: [USER@]HOST[:PORT]."""
    host: str
    port: int = 22
    user: str = "root"

    @classmethod
    def parse(cls, text: str, user: str = "root", port: int = 22) -> "Target":
        m = re.fullmatch(r"(?:([A-Za-z0-9._-]+)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?", text)
        if m is None:
            raise ProvisionError(f"not a host: {text!r} (expected [USER@]HOST[:PORT])", host=text)
        host = m.group(2).strip("[]")
        return cls(host, int(m.group(3)) if m.group(3) else port, m.group(1) or user)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class InstallFiles:
    """What provisioning uploads: the pyz, install.sh and the worker's unit, and the rclone
    binary for hosts that have none (None: such hosts are refused with the fix)."""
    pyz: str
    install_sh: bytes
    worker_unit: bytes
    rclone: str | None = None


class JobRecord:
    """One job's record on the server and its events for the terminal: steps, progress and
    log lines (sent in batches, at most every LOG_EVERY seconds, and at each step)."""

    def __init__(self, client: "FleetApi", target: str, on_event: Callable[[dict], None],
                 clock: Callable[[], float] = time.monotonic, kind: str = "provision",
                 steps: Sequence[str] = STEPS, params: dict | None = None) -> None:
        self.client = client
        self.steps = tuple(steps)
        self.starts = _STARTS if self.steps == STEPS else {s: i / len(self.steps) for i, s in enumerate(self.steps)}
        self.what = f"{kind} {target}"
        self.on_event = on_event
        self.clock = clock
        self.id = int(client.create_job(kind, target, params)["id"])
        self._lines: list[str] = []
        self._sent_at = clock()
        self._progress_at = float("-inf")
        self._lock = threading.Lock()
        self.step_name = ""

    def step(self, name: str, text: str) -> None:
        self.step_name = name
        self.log(f"== {name}: {text}")
        self.flush()
        self.client.update_job(self.id, status="running", step=text, progress=self.starts[name])
        self.on_event({"event": "progress", "what": self.what, "unit": "steps", "done": self.steps.index(name),
                       "total": len(self.steps), "note": text, "job": self.id})

    def progress(self, fraction: float, note: str) -> None:
        """Within the current step (`fraction` of it done): sent at most once a second."""
        now = self.clock()
        if now - self._progress_at < 1.0:
            return
        self._progress_at = now
        i = self.steps.index(self.step_name)
        start = self.starts[self.step_name]
        end = self.starts[self.steps[i + 1]] if i + 1 < len(self.steps) else 1.0
        self.client.update_job(self.id, progress=round(start + (end - start) * min(1.0, fraction), 3))
        self.on_event({"event": "progress", "what": self.what, "unit": "steps", "done": i,
                       "total": len(self.steps), "note": note, "job": self.id})

    def log(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            due = self.clock() - self._sent_at >= LOG_EVERY or len(self._lines) >= 500
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._sent_at = self.clock()
        if lines:
            self.client.append_job_log(self.id, lines)

    def succeed(self, text: str) -> None:
        self.log(text)
        self.flush()
        self.client.update_job(self.id, status="succeeded", step="done")
        self.on_event({"event": "done", "what": self.what, "unit": "steps", "done": len(self.steps),
                       "total": len(self.steps), "note": text, "job": self.id})

    def fail(self, message: str) -> None:
        self.log(f"failed: {message}")
        self.flush()
        self.client.update_job(self.id, status="failed", message=message)
        self.on_event({"event": "message", "what": self.what,
                       "text": f"{self.what}: failed at {self.step_name}: {message} (log: scitq job log {self.id})"})


class Provisioner:
    """Provisions hosts for `client`'s server. `server_url` is the URL the workers will use;
    `key_file` the SSH key (else the user's keys and agent); `connect` opens an SshHost."""

    def __init__(self, client: "FleetApi", files: InstallFiles, server_url: str, key_file: str | None = None,
                 connect: Callable[..., SshHost] = SshHost.connect, on_event: Callable[[dict], None] = lambda e: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.files = files
        self.server_url = server_url
        self.key_file = key_file
        self.connect = connect
        self.on_event = on_event
        self.clock = clock

    def provision(self, target: Target, name: str | None = None, concurrency: int = 1,
                  batch: str | None = None, host_id: str | None = None,
                  pinned: tuple[str, str] | None = None) -> dict[str, Any]:
        """Provision one host; return its worker. `host_id` names the host for its recorded
        key (default HOST:PORT; a provider's machine id), `pinned` is the key its provider
        gave. Raises ProvisionError (the job failed, its message says why) after putting the
        host back as it was."""
        params = {"host": target.host, "port": target.port, "user": target.user, "name": name,
                  "concurrency": concurrency, "batch": batch}
        job = JobRecord(self.client, str(target), self.on_event, params=params)
        run = _Run(self, job, target, host_id or str(target), pinned)
        try:
            worker = run.go(name, concurrency, batch)
        except ScitqError as e:
            message = e.message
            run.undo()
            job.fail(message)
            raise ProvisionError(f"{target}: {message}", host=str(target), job=job.id) from None
        except Exception as e:  # noqa: BLE001 - a bug must still end the job and clean the host
            run.undo()
            job.fail(f"internal error: {e!r}")
            raise
        finally:
            run.close()
        job.succeed(f"worker {worker['name']} (id {worker['id']}) registered")
        return worker


class _Run:
    """The state of one provisioning: what it did to the host, to undo on failure."""

    def __init__(self, p: Provisioner, job: JobRecord, target: Target, host_id: str,
                 pinned: tuple[str, str] | None) -> None:
        self.p, self.job, self.target = p, job, target
        self.host_id, self.pinned = host_id, pinned
        self.ssh: SshHost | None = None
        self.dir: str | None = None
        self.had_scitq = True       # until the check says otherwise: never uninstall what we did not install
        self.installed = False
        self.rclone_put = False
        self.token_name: str | None = None
        self.worker_name: str | None = None
        self.workers_before: set[int] = set()

    def sh(self, command: str, what: str, timeout: float = 600.0) -> str:
        assert self.ssh is not None
        status, out = self.ssh.run(command, on_line=self.job.log, timeout=timeout)
        if status != 0:
            last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
            raise ProvisionError(f"{what} failed (exit {status}): {last[0].strip()}")
        return out

    def go(self, name: str | None, concurrency: int, batch: str | None) -> dict[str, Any]:
        p, job, t = self.p, self.job, self.target
        job.step("connect", f"connecting to {t.user}@{t}")
        known = None if self.pinned else _known_key(p.client, self.host_id)
        self.ssh = p.connect(t.host, t.port, t.user, key_file=p.key_file, trust=self._trust,
                             known_key=known, host_id=self.host_id, pinned=self.pinned)
        how = "pinned by the provider" if self.pinned else "as recorded" if known else "checked"
        job.log(f"connected; host key {how}")

        job.step("check", "checking the host")
        assert self.ssh is not None
        status, out = self.ssh.run(_CHECK, timeout=60)
        facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        for k in ("os", "python", "systemd", "rclone", "free", "hostname", "arch"):
            job.log(f"{k}: {facts.get(k, '?')}")
        self.had_scitq = facts.get("scitq") != "no"
        self._check(facts, status)
        self.worker_name = name or facts["hostname"]
        self.workers_before = {int(w["id"]) for w in p.client.workers() if w["name"] == self.worker_name}

        job.step("upload", "uploading scitq.pyz" + (" and rclone" if facts["rclone"] == "none" else ""))
        self.dir = self.sh("d=$(mktemp -d /var/tmp/scitq-provision.XXXXXX) && touch \"$d/.scitq-provision\" && "
                           "mkdir \"$d/systemd\" && chmod 755 \"$d\" && echo \"$d\"", "making a folder").split()[-1]
        uploads = [(p.files.pyz, f"{self.dir}/scitq.pyz", 0o644)]
        if facts["rclone"] == "none":
            assert p.files.rclone is not None
            uploads.append((p.files.rclone, f"{self.dir}/rclone", 0o755))
        self._upload(uploads)
        self._write(p.files.install_sh, f"{self.dir}/install.sh", 0o755)
        self._write(p.files.worker_unit, f"{self.dir}/systemd/scitq-worker.service", 0o644)
        if facts["rclone"] == "none":
            self.sh(f"install -m 0755 {self.dir}/rclone /usr/local/bin/rclone", "installing rclone")
            self.rclone_put = True

        job.step("install", f"installing the worker {self.worker_name}")
        minted = p.client.create_join_token(uses=1, ttl=3600, batch=batch, name=self.worker_name)
        self.token_name = minted["token"]["name"]
        self.installed = True
        self.sh(" ".join(["bash", f"{self.dir}/install.sh", "worker", "--server", shlex.quote(p.server_url),
                          "--join-token", shlex.quote(minted["join_token"]), "--name", shlex.quote(self.worker_name),
                          "--concurrency", str(int(concurrency)), "--pyz", f"{self.dir}/scitq.pyz"]),
                "install.sh worker", timeout=300)

        job.step("register", "waiting for the worker to register")
        worker = self._registered()
        self.sh(f"rm -rf -- {shlex.quote(self.dir)}", "removing the uploaded files")
        self.dir = None
        return worker

    def _trust(self, host: str, key_type: str, key_b64: str) -> None:
        self.p.client.trust_host_key(host, key_type, key_b64)
        self.job.log(f"host key {key_type} of {host} recorded (first contact)")

    def _check(self, facts: dict[str, str], status: int) -> None:
        t = self.target
        if status != 0 or "now" not in facts:
            raise ProvisionError(f"{t.host} could not run the host check (exit {status}): is sh there?")
        py = facts.get("python", "none")
        if py == "none":
            raise ProvisionError(f"python3 is not installed on {t.host}: install python3 "
                                 f"({'.'.join(map(str, MIN_PYTHON))} or newer) there first")
        if tuple(int(x) for x in py.split(".")) < MIN_PYTHON:
            raise ProvisionError(f"{t.host} has Python {py}; scitq needs {'.'.join(map(str, MIN_PYTHON))} or newer")
        if facts.get("systemd") != "yes":
            raise ProvisionError(f"systemd is not running on {t.host}: provision installs a systemd unit (without "
                                 "systemd, run install.sh worker there and start `scitq worker run` by hand)")
        if facts["rclone"] == "none":
            if self.p.files.rclone is None:
                raise ProvisionError(f"{t.host} has no rclone and none was found here to upload: install rclone "
                                     "on this machine (or on the host)")
            local_arch = os.uname().machine
            if facts.get("arch") != local_arch:
                raise ProvisionError(f"{t.host} has no rclone and is {facts.get('arch')}, not {local_arch} like "
                                     "this machine's rclone: install rclone on the host")
        need = os.path.getsize(self.p.files.pyz) * 3 + SPARE_DISK + (
            os.path.getsize(self.p.files.rclone) * 2 if facts["rclone"] == "none" and self.p.files.rclone else 0)
        free = int(facts.get("free") or 0) * 1024
        if free < need:
            raise ProvisionError(f"not enough disk space on {t.host}: {free >> 20} MiB free in /var/tmp, "
                                 f"/usr/local/lib or /var/lib, {need >> 20} MiB needed")
        skew = float(facts["now"]) - self.p.clock()
        if abs(skew) > MAX_CLOCK_SKEW:
            raise ProvisionError(f"the clock of {t.host} is {abs(skew):.0f} s {'ahead' if skew > 0 else 'behind'}"
                                 f" of this machine's: set it right (NTP) first")
        if abs(skew) > 5:
            self.job.log(f"warning: the clock of {t.host} is off by {skew:+.0f} s")

    def _upload(self, uploads: list[tuple[str, str, int]]) -> None:
        assert self.ssh is not None
        total = sum(os.path.getsize(local) for local, _, _ in uploads)
        done = 0
        for local, remote, mode in uploads:
            size = os.path.getsize(local)
            self.job.log(f"uploading {os.path.basename(local)} ({size >> 10} KiB) to {remote}")

            def moved(sent: int, _size: int, before: int = done) -> None:
                self.job.progress((before + sent) / total, f"uploading {(before + sent) >> 20}/{total >> 20} MiB")
            self.ssh.put(local, remote, mode, on_progress=moved)
            done += size

    def _write(self, data: bytes, remote: str, mode: int) -> None:
        assert self.ssh is not None
        status, out = self.ssh.run(f"cat > {shlex.quote(remote)} && chmod {mode:o} {shlex.quote(remote)}",
                                   input=data, timeout=60)
        if status != 0:
            raise ProvisionError(f"writing {remote} failed: {out.strip() or f'exit {status}'}")

    def _registered(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [w for w in self.p.client.workers() if w["name"] == self.worker_name
                     and int(w["id"]) not in self.workers_before]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise ProvisionError(f"the worker {self.worker_name} did not register within {timeout:.0f} s")
            time.sleep(0.5)

    def undo(self) -> None:
        """Put the host back as it was, as far as this run changed it (each part tried, whatever
        fails before it)."""
        job = self.job
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.token_name:
            steps.append(("revoking the join token", lambda: self.p.client.revoke_token(self.token_name or "")))
        if self.ssh is not None and self.installed and not self.had_scitq and self.dir:
            steps.append(("uninstalling what was installed",
                          lambda: self.sh(f"bash {self.dir}/install.sh uninstall --purge", "install.sh uninstall")))
        if self.ssh is not None and self.rclone_put:
            steps.append(("removing the uploaded rclone", lambda: self.sh("rm -f /usr/local/bin/rclone", "rm")))
        if self.ssh is not None and self.dir:
            steps.append(("removing the uploaded files",
                          lambda: self.sh(f"rm -rf -- {shlex.quote(self.dir or '')}", "rm")))
        if self.worker_name is not None and self.installed:
            steps.append(("deleting the worker it registered", self._delete_worker))
        for what, action in steps:
            job.log(f"undo: {what}")
            try:
                action()
            except (ScitqError, OSError) as e:
                job.log(f"undo: {what} failed: {getattr(e, 'message', e)}")

    def _delete_worker(self) -> None:
        for w in self.p.client.workers():
            if w["name"] == self.worker_name and int(w["id"]) not in self.workers_before:
                self.p.client.delete_worker(int(w["id"]))

    def close(self) -> None:
        if self.ssh is not None:
            self.ssh.close()


def _known_key(client: "FleetApi", host: str) -> tuple[str, str] | None:
    try:
        k = client.host_key(host)
    except NotFound:
        return None
    return k["key_type"], k["key_data"]


def install_files(pyz: str | None, rclone: str | None) -> InstallFiles:
    """The files to upload: `pyz` (default: the pyz this runs from), install.sh and the worker
    unit from inside it, and `rclone` (default: the one on PATH). ProvisionError when there is
    no pyz to ship."""
    import shutil
    import zipfile

    from ..release import running_pyz
    if pyz is None:
        pyz = running_pyz()
        if pyz is None:
            raise ProvisionError("this scitq runs from source: give the pyz to install with --pyz PATH "
                                 "(build it with python3 build_zipapp.py)")
    if not os.path.isfile(pyz) or not zipfile.is_zipfile(pyz):
        raise ProvisionError(f"{pyz} is not a scitq.pyz")
    with zipfile.ZipFile(pyz) as z:
        try:
            install_sh = z.read("scitq_app/install/install.sh")
            unit = z.read("scitq_app/install/scitq-worker.service")
        except KeyError:
            raise ProvisionError(f"{pyz} holds no install.sh: it was built by an older build_zipapp.py") from None
    return InstallFiles(pyz=os.path.abspath(pyz), install_sh=install_sh, worker_unit=unit,
                        rclone=rclone or shutil.which("rclone"))


__all__ = ["InstallFiles", "JobRecord", "Provisioner", "SshError", "Target", "install_files"]
