"""Disposable Debian 12 machines (systemd as PID 1, sshd) for end-to-end tests of install.sh.

Built on the shared recipes `nspawn-machine.sh` (systemd-nspawn machines) and `netns-hosts.sh`
(one network namespace per machine on a private bridge), which live in `<project>/../shared/recipes/`
(read-only in CI: they are only ever run with `bash`, settings go through environment variables).

Per test run: a unique NETNS_PREFIX / NETNS_NET (/24) / NSPAWN_STATE, so runs sharing a host do not
collide. Built once and cached across runs under /var/tmp/scitq-test-machines/<key>/ (guarded by a
file lock, so xdist workers or concurrent runs never build the same thing twice at once):
  - the root fs tarball `bookworm.tar` (mmdebstrap through the recipe, ~2-3 min), keyed by the
    recipe's content and NSPAWN_EXTRA;
  - a flat apt repository holding REPO_PACKAGES and every dependency the image lacks, keyed by the
    image key and the package list. The machines have no route out: `Machine.use_local_apt()` points
    them at this repository, served over HTTP on the bridge address by the session.

`python -m tests.support.machines prepare` builds both ahead of pytest (tests/run.sh does);
SCITQ_TEST_MACHINES_REBUILD=1 forces a rebuild. Without root, mmdebstrap or systemd-nspawn the
`machines` fixture skips, or fails when SCITQ_TEST_REQUIRE_MACHINES=1 (CI).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Iterator

import pytest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = Path(os.environ.get("SCITQ_TEST_RECIPES", str(ROOT.parent / "shared" / "recipes")))
NSPAWN_SCRIPT = RECIPES / "nspawn-machine.sh"
NETNS_SCRIPT = RECIPES / "netns-hosts.sh"

CACHE_ROOT = Path("/var/tmp/scitq-test-machines")
CACHE_MARKER = ".scitq-test-machines"
# extra Debian packages baked into the image (comma-separated, as the recipe takes them)
NSPAWN_EXTRA = ""
# what install.sh needs on a fresh machine. A test module needing more appends to it at import time
# (before the `machines` fixture runs prepare()): the repository key then changes and it is rebuilt
REPO_PACKAGES: list[str] = ["postgresql", "nginx-light", "rclone", "openssl", "python3-paramiko", "python3-libcloud",
                            "ca-certificates", "curl", "sudo"]

# seconds the last prepare() spent building each artifact (None: reused from the cache)
TIMINGS: dict[str, float | None] = {}

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=6"]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _recipe(script: Path, args: list[str], env: dict[str, str], timeout: float) -> str:
    """Run a recipe (with bash: in CI the recipe dir has no write or exec bits to rely on)."""
    try:
        r = subprocess.run(["bash", str(script), *args], env={**os.environ, **env}, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{script.name} {' '.join(args)}: timed out after {timeout} s") from e
    if r.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed ({r.returncode}):\n"
                           f"{_tail(r.stdout + r.stderr)}")
    return r.stdout


# ---------------------------------------------------------------------------------------------------
# availability

def unavailable_reason() -> str | None:
    """Why machines cannot run here, or None when they can."""
    if os.getuid() != 0:
        return "nspawn machines need root"
    for tool in ("mmdebstrap", "systemd-nspawn", "ssh", "ssh-keygen", "ip", "nsenter", "apt-get"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install mmdebstrap systemd-container openssh-client iproute2)"
    if shutil.which("apt-ftparchive") is None:
        return "apt-ftparchive is missing (apt-get install apt-utils)"
    for script in (NSPAWN_SCRIPT, NETNS_SCRIPT):
        if not script.is_file():
            return f"recipe {script} not found"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the test for want of machines, or fail it when CI requires them."""
    if os.environ.get("SCITQ_TEST_REQUIRE_MACHINES") == "1":
        pytest.fail(f"nspawn machines are required (SCITQ_TEST_REQUIRE_MACHINES=1): {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------
# the cached image and apt repository

def image_key() -> str:
    """Changes whenever the image the recipe would build changes."""
    h = hashlib.sha256(NSPAWN_SCRIPT.read_bytes() + b"\0NSPAWN_EXTRA=" + NSPAWN_EXTRA.encode())
    return h.hexdigest()[:16]


def repo_key(img_key: str, packages: list[str]) -> str:
    # v1: bump when the way the repository is built changes
    return hashlib.sha256(f"v1\0{img_key}\0{' '.join(sorted(packages))}".encode()).hexdigest()[:16]


def _ours(path: Path) -> Path:
    """Create `path` (a directory under CACHE_ROOT) marked as ours, or refuse one that is not."""
    if path.exists() and not (path / CACHE_MARKER).is_file() and any(path.iterdir()):
        raise RuntimeError(f"{path} exists and is not ours (no {CACHE_MARKER})")
    path.mkdir(parents=True, exist_ok=True)
    (path / CACHE_MARKER).touch()
    return path


def _remove_ours(path: Path) -> None:
    """Delete a directory only when it is under /tmp or /var/tmp and carries one of our markers."""
    resolved = path.resolve()
    if not (str(resolved).startswith("/tmp/") or str(resolved).startswith("/var/tmp/")) or ".." in path.parts:
        raise RuntimeError(f"refusing to remove {path}")
    markers = (CACHE_MARKER, ".nspawn-machines")
    if not any((resolved / m).is_file() for m in markers):
        raise RuntimeError(f"refusing to remove {path}: not ours")
    shutil.rmtree(resolved)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    _ours(CACHE_ROOT)
    with open(CACHE_ROOT / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rebuild_requested() -> bool:
    return os.environ.get("SCITQ_TEST_MACHINES_REBUILD") == "1"


def _build_image(key_dir: Path, image: Path, rebuild: bool) -> None:
    if image.is_file() and image.stat().st_size > 0 and not rebuild:
        return
    if image.exists():
        image.unlink()
    log.info("building the machine image %s (mmdebstrap, a few minutes)", image)
    # NSPAWN_STATE = the key dir: the recipe leaves its build log (image.log) there
    _recipe(NSPAWN_SCRIPT, ["image"], {"NSPAWN_STATE": str(key_dir), "NSPAWN_IMAGE": str(image),
                                       "NSPAWN_EXTRA": NSPAWN_EXTRA}, timeout=1000)


def _apt(args: list[str], opts: list[str], timeout: float) -> None:
    cmd = ["apt-get", "-q", "-y", *opts, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n{_tail(r.stdout + r.stderr)}")


def _build_repo(image: Path, repo: Path, packages: list[str]) -> None:
    """Download into `repo` the packages and every dependency a machine booted from `image` lacks.

    apt runs on the host with the image's dpkg status and apt sources and private lists/caches, so it
    resolves against exactly what a machine has and sees the archive the image came from, without
    touching the host's own apt state."""
    work = Path(tempfile.mkdtemp(prefix="repo-build-", dir=repo.parent))
    (work / CACHE_MARKER).touch()
    try:
        with tarfile.open(image) as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers()}
            status = tar.extractfile(members["var/lib/dpkg/status"])
            assert status is not None
            (work / "status").write_bytes(status.read())
            sources = work / "sources.list.d"
            sources.mkdir()
            for name, m in members.items():
                if m.isfile() and (name == "etc/apt/sources.list" or
                                   (name.startswith("etc/apt/sources.list.d/") and
                                    name.endswith((".list", ".sources")))):
                    f = tar.extractfile(m)
                    assert f is not None
                    (sources / (name.replace("/", "_"))).write_bytes(f.read())
        for d in ("lists/partial", "cache/archives/partial", "archives/partial"):
            (work / d).mkdir(parents=True)
        opts = [f"-o=Dir::State::status={work / 'status'}", f"-o=Dir::State::Lists={work / 'lists'}",
                f"-o=Dir::Cache={work / 'cache'}", f"-o=Dir::Cache::archives={work / 'archives'}",
                f"-o=Dir::Etc::SourceList={os.devnull}", f"-o=Dir::Etc::SourceParts={sources}",
                "-o=Debug::NoLocking=1", "-o=APT::Sandbox::User=root",
                "-o=APT::Install-Recommends=0", "-o=Acquire::Retries=3"]
        _apt(["update"], opts, timeout=600)
        _apt(["install", "--download-only", "--no-install-recommends", *packages], opts, timeout=900)
        debs = sorted((work / "archives").glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt downloaded nothing for {packages}")
        # assembled inside the work dir (removed on any failure), then moved in place in one rename
        out = work / "repo"
        out.mkdir(mode=0o755)
        (out / CACHE_MARKER).touch()
        for deb in debs:
            os.replace(deb, out / deb.name)
        for index, args in (("Packages", ["packages", "."]), ("Release", ["release", "."])):
            r = subprocess.run(["apt-ftparchive", *args], cwd=out, capture_output=True, text=True,
                               timeout=300, check=True)
            (out / index).write_text(r.stdout)
            if index == "Packages":
                subprocess.run(["gzip", "-9kf", "Packages"], cwd=out, timeout=120, check=True)
        if repo.exists():
            _remove_ours(repo)
        os.replace(out, repo)
    finally:
        _remove_ours(work)


def _prune_stale(current: Path, max_age_days: float = 2.0) -> None:
    """Delete cache dirs of other image keys (an older recipe) unused for a while: 250+ MB each."""
    for d in CACHE_ROOT.iterdir():
        if d == current or not d.is_dir() or not (d / CACHE_MARKER).is_file():
            continue
        newest = max((p.stat().st_mtime for p in d.iterdir()), default=d.stat().st_mtime)
        if time.time() - newest > max_age_days * 86400:
            log.info("removing the stale machine cache %s", d)
            _remove_ours(d)


def prepare(packages: list[str] | None = None, rebuild: bool | None = None) -> tuple[Path, Path]:
    """Build (or reuse) the machine image and the local apt repository; returns (image, repo dir).

    Cached in CACHE_ROOT under an exclusive file lock: a concurrent caller waits, then reuses."""
    packages = list(REPO_PACKAGES if packages is None else packages)
    rebuild = _rebuild_requested() if rebuild is None else rebuild
    with _cache_lock():
        img_key = image_key()
        key_dir = _ours(CACHE_ROOT / img_key)
        _prune_stale(key_dir)
        image = key_dir / "bookworm.tar"
        image_rebuilt = rebuild or not image.is_file()
        t0 = time.monotonic()
        _build_image(key_dir, image, rebuild)
        TIMINGS["image"] = time.monotonic() - t0 if image_rebuilt else None
        repo = key_dir / f"repo-{repo_key(img_key, packages)}"
        t0 = time.monotonic()
        repo_rebuilt = image_rebuilt or not (repo / "Packages.gz").is_file()
        if repo_rebuilt:
            log.info("building the local apt repository %s", repo)
            _build_repo(image, repo, packages)
        TIMINGS["repo"] = time.monotonic() - t0 if repo_rebuilt else None
    return image, repo


# ---------------------------------------------------------------------------------------------------
# machines

class Machine:
    """One booted machine: a fresh Debian 12 with systemd as PID 1, reached as root over ssh."""

    def __init__(self, machines: Machines, name: str, netns: str, addr: str) -> None:
        self._machines = machines
        self.name = name
        self.netns = netns
        self.addr = addr

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.addr!r})"

    def _ssh(self, cmd: str) -> list[str]:
        return ["ssh", *SSH_OPTS, "-i", str(self._machines.key), f"root@{self.addr}",
                "bash -lc " + shlex.quote(cmd)]

    def run(self, cmd: str, *, check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` with `bash -lc` as root on the machine. With check, a non-zero exit raises an
        AssertionError naming the command, its exit code and the tail of its output."""
        try:
            r = subprocess.run(self._ssh(cmd), capture_output=True, text=True, timeout=timeout,
                               input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                          for x in (e.stdout, e.stderr))
            raise AssertionError(f"on {self.name}: `{cmd}` timed out after {timeout} s\n{_tail(out)}") from e
        if check and r.returncode != 0:
            raise AssertionError(f"on {self.name}: `{cmd}` exited {r.returncode}\n"
                                 f"{_tail(r.stdout + r.stderr)}")
        return r

    def put(self, local_path: str | os.PathLike[str], remote_path: str, mode: int | None = None) -> None:
        """Copy a local file to the machine (parent directories are created)."""
        remote = shlex.quote(remote_path)
        cmd = f"mkdir -p \"$(dirname {remote})\" && cat > {remote}"
        if mode is not None:
            # created private, then given its mode: never readable by others in between
            cmd = f"umask 077 && {cmd} && chmod {mode:o} {remote}"
        with open(local_path, "rb") as f:
            r = subprocess.run(self._ssh(cmd), stdin=f, capture_output=True, timeout=300)
        if r.returncode != 0:
            raise AssertionError(f"on {self.name}: copying {local_path} to {remote_path} failed "
                                 f"({r.returncode})\n{_tail((r.stdout + r.stderr).decode(errors='replace'))}")

    def read(self, remote_path: str) -> str:
        """The content of a file on the machine."""
        return self.run(f"cat {shlex.quote(remote_path)}").stdout

    def stop(self) -> None:
        """Power the machine off cleanly (SIGKILL after 20 s); its disk is kept for `boot()`."""
        self._machines._nspawn(["stop", self.name], timeout=60)

    def boot(self) -> None:
        """Boot the stopped machine again with its disk as left (a reboot); returns once sshd answers."""
        self._machines._nspawn(["boot", self.name, self.netns], timeout=120)

    def use_local_apt(self) -> None:
        """Make the session's local repository the machine's only apt source (it has no route out)."""
        line = f"deb [trusted=yes] {self._machines.repo_url}/ ./"
        self.run("find /etc/apt/sources.list.d -mindepth 1 -delete && "
                 f"echo {shlex.quote(line)} > /etc/apt/sources.list")


def _free_subnet() -> str:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10,
                          check=True).stdout
    taken = set()
    for line in used.splitlines():
        fields = line.split()
        if "inet" in fields:
            taken.add(".".join(fields[fields.index("inet") + 1].split(".")[:3]))
    for _ in range(200):
        net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if net not in taken:
            return net
    raise RuntimeError("no free 10.200-250.x.0/24 subnet")


def _unused_prefix() -> str:
    existing = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10,
                              check=True).stdout
    names = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.split())
    for _ in range(100):
        # "s" + 3 base36 chars: "<prefix>NN-h" stays within the 15 chars of an interface name
        prefix = "s" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=3))
        if f"{prefix}-br" not in existing and not any(n.startswith(prefix) for n in names):
            return prefix
    raise RuntimeError("no unused NETNS_PREFIX")


OWNER_FILE = "owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the pid, it names one process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def reap_abandoned() -> list[str]:
    """Remove the machines, network and state of earlier runs whose owning process is gone (a pytest
    killed before its teardown leaves machines running for up to 2 hours). Returns their state dirs."""
    reaped = []
    for state in Path("/tmp").glob("scitq-machines-*"):
        owner = state / OWNER_FILE
        if not (state / ".nspawn-machines").is_file() or not owner.is_file():
            continue
        try:
            info = json.loads(owner.read_text())
            pid, start, env = int(info["pid"]), info["start"], dict(info["env"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _start_time(pid) is not None and _start_time(pid) == start:
            continue   # its owner still runs
        if env.get("NSPAWN_STATE") != str(state):
            continue
        log.warning("removing the machines of an abandoned test run: %s", state)
        server = info.get("server")
        if server and _start_time(int(server[0])) == server[1]:
            with contextlib.suppress(OSError):
                os.kill(int(server[0]), signal.SIGTERM)
        with contextlib.suppress(RuntimeError):
            _recipe(NSPAWN_SCRIPT, ["down"], env, timeout=300)
        with contextlib.suppress(RuntimeError):
            _recipe(NETNS_SCRIPT, ["down"], env, timeout=120)
        with contextlib.suppress(RuntimeError, OSError):
            _remove_ours(state)
        reaped.append(str(state))
    return reaped


class Machines:
    """The session's machines: one network (bridge + a namespace per machine), the local apt
    repository served on the bridge, and every machine booted through it; `close()` removes them all."""

    def __init__(self, image: Path, repo: Path) -> None:
        self.image = image
        self.repo = repo
        self.prefix = _unused_prefix()
        self.net = _free_subnet()
        self.bridge = f"{self.net}.1"
        self.state = Path(tempfile.mkdtemp(prefix=f"scitq-machines-{self.prefix}-", dir="/tmp"))
        # the recipe's marker: its `down`/`rm` then treat the dir as theirs, and so does _remove_ours
        (self.state / ".nspawn-machines").touch()
        self.key = self.state / "id_ed25519"
        # made here, before any boot: parallel boots would otherwise race on the recipe's ssh-keygen
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scitq-test", "-f", str(self.key)],
                       check=True, capture_output=True, timeout=30)
        self.env = {"NSPAWN_STATE": str(self.state), "NSPAWN_IMAGE": str(image), "NSPAWN_EXTRA": NSPAWN_EXTRA,
                    "NETNS_PREFIX": self.prefix, "NETNS_NET": self.net,
                    "NETNS_STATE": str(self.state / "netns")}
        self._lock = threading.Lock()
        self._namespaces = 0      # namespaces made by netns-hosts.sh up
        self._next = 0            # namespaces handed out to machines
        self._names: list[str] = []   # every machine a boot was tried for, booted or not: all are removed
        self.booted: list[Machine] = []
        self._network_up = False
        self._server: subprocess.Popen[bytes] | None = None
        self._server_log: IO[bytes] | None = None
        self.port = 0
        # who owns this run, so a later run can clean up after one that was killed before its teardown
        self._write_owner()

    # -- plumbing ------------------------------------------------------------------------------------

    def _write_owner(self) -> None:
        server = self._server.pid if self._server is not None else None
        info = {"pid": os.getpid(), "start": _start_time(os.getpid()), "env": self.env,
                "server": [server, _start_time(server)] if server else None}
        (self.state / OWNER_FILE).write_text(json.dumps(info))

    def _nspawn(self, args: list[str], timeout: float) -> str:
        return _recipe(NSPAWN_SCRIPT, args, self.env, timeout)

    def _netns(self, args: list[str], timeout: float = 60) -> str:
        return _recipe(NETNS_SCRIPT, args, self.env, timeout)

    @property
    def repo_url(self) -> str:
        """The local apt repository as the machines reach it."""
        return f"http://{self.bridge}:{self.port}"

    def start(self) -> Machines:
        """Bring the bridge up, then serve the repository on it (the address exists only now)."""
        self._network_up = True   # before `up`: a half-made network is taken down too
        self._netns(["up", "1"])
        self._namespaces = 1
        self._serve_repo()
        return self

    def _serve_repo(self) -> None:
        log_path = self.state / "http.log"
        for _ in range(5):
            with socket.socket() as s:
                s.bind((self.bridge, 0))
                self.port = s.getsockname()[1]
            self._server_log = open(log_path, "ab")
            self._server = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", self.bridge, str(self.port),
                 "--directory", str(self.repo)],
                stdin=subprocess.DEVNULL, stdout=self._server_log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self._server.poll() is None:
                try:
                    with socket.create_connection((self.bridge, self.port), timeout=1):
                        self._write_owner()
                        return
                except OSError:
                    time.sleep(0.05)
            # the port was taken between the probe and the bind: try another one
            self._stop_server()
        raise RuntimeError(f"the apt repository server did not start: see {log_path}")

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait(timeout=10)
            self._server = None
        if self._server_log is not None:
            self._server_log.close()
            self._server_log = None

    def _take_namespace(self, name: str) -> str:
        with self._lock:
            if name in self._names:
                raise ValueError(f"machine {name} already booted in this session")
            self._names.append(name)
            self._next += 1
            index = self._next
            # `up N` skips the namespaces that exist, so asking for more only adds the new ones
            if index > self._namespaces:
                self._netns(["up", str(index)])
                self._namespaces = index
            return f"{self.prefix}{index}"

    # -- public ----------------------------------------------------------------------------------------

    def boot(self, name: str) -> Machine:
        """Boot a fresh machine named `<prefix>-<name>` (thread-safe); returns once sshd answers."""
        # it becomes the hostname too
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name):
            raise ValueError(f"bad machine name {name!r} (lowercase letters, digits and '-', at most 40)")
        full = f"{self.prefix}-{name}"
        netns = self._take_namespace(full)
        try:
            out = self._nspawn(["boot", full, netns], timeout=180)
        except RuntimeError as e:
            # the console log goes with the state dir at teardown: keep its tail in the error
            console = self.state / full / "console.log"
            tail = _tail(console.read_text(errors="replace")) if console.is_file() else "(no console log)"
            raise RuntimeError(f"{e}\n--- console of {full}:\n{tail}") from e
        # the last line is "NAME ADDR PID" (ssh-keygen talks before it on a first boot)
        fields = out.strip().splitlines()[-1].split() if out.strip() else []
        assert len(fields) >= 2 and fields[0] == full, f"unexpected answer of nspawn-machine.sh boot: {out!r}"
        machine = Machine(self, full, netns, fields[1])
        with self._lock:
            self.booted.append(machine)
        return machine

    def boot_many(self, names: list[str]) -> list[Machine]:
        """Boot several machines in parallel; returned in the order of `names`."""
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            return list(pool.map(self.boot, names))

    def close(self) -> None:
        """Delete every machine booted here, take the network down, stop the repository server."""
        errors: list[str] = []
        for name in self._names:
            if not (self.state / name).exists():   # its boot failed before the recipe made it
                continue
            try:
                self._nspawn(["rm", name], timeout=120)
            except Exception as e:  # noqa: BLE001 - go on removing the rest, report at the end
                errors.append(str(e))
        self._names.clear()
        self.booted.clear()
        self._stop_server()
        if self._network_up:
            try:
                self._netns(["down"])
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
            self._network_up = False
        if errors:
            # a machine may still run from it: keep the state dir, and say where it is
            raise RuntimeError(f"machines teardown (state kept in {self.state}): " + "\n".join(errors))
        if self.state.is_dir():
            _remove_ours(self.state)


@pytest.fixture(scope="session")
def machines() -> Iterator[Machines]:
    """The session's Machines (built image and repository reused; see the module docstring)."""
    reason = unavailable_reason()
    if reason:
        skip_or_fail(reason)
    image, repo = prepare()
    reap_abandoned()
    m = Machines(image, repo)
    try:
        m.start()
        yield m
    finally:
        m.close()


# The test files whose tests all run on one xdist worker, so they share one Machines session (one
# network, one repository server) instead of booting machines on every worker of a 2-core host.
MACHINE_TEST_FILES = re.compile(r"tests/e2e/test_\w*machines\w*\.py::")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup`, with the machine test files grouped by path as well as by mark.

    The xdist_group mark alone does not group anything with pytest 9.2 + xdist 3.8: xdist tags the
    group by rewriting `item._nodeid`, which pytest 9.2's structured node ids ignore (pytest-xdist
    issue #1386). The controller sees only node ids, so the files are recognised by name."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class MachineGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if MACHINE_TEST_FILES.match(nodeid):
                return "machines"
            return super()._split_scope(nodeid)

    return MachineGroupScheduling(config, log)  # type: ignore[arg-type]


def _main(argv: list[str]) -> int:
    if argv[1:] != ["prepare"]:
        print("usage: python -m tests.support.machines prepare", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        if os.environ.get("SCITQ_TEST_REQUIRE_MACHINES") == "1":
            print(f"nspawn machines are required (SCITQ_TEST_REQUIRE_MACHINES=1): {reason}", file=sys.stderr)
            return 1
        print(f"no nspawn machines: {reason} (their tests will skip)")
        return 0
    image, repo = prepare()

    def how(what: str) -> str:
        took = TIMINGS.get(what)
        return "reused" if took is None else f"built in {took:.0f} s"
    print(f"machine image {image} ({how('image')}), apt repository {repo.name} ({how('repo')})")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
