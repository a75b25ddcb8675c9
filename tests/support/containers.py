"""Real container engines for tests: podman (the system's), docker (a private throwaway dockerd),
images made from the host's static busybox (no registry is reachable), and a private registry
(Debian's docker-registry, with a password) to pull from.

Everything made here has a random name and is removed by the code that made it: images and
containers by name, directories only when they carry our marker file. The engines' global state
(other images, containers, /etc) is never touched.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid

from .postgres import free_port
from .processes import read_text, wait_for

MARKER = ".scitq-test-owned"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def suffix() -> str:
    return uuid.uuid4().hex[:8]


def static_busybox() -> str | None:
    """The host's statically linked busybox (Debian's busybox-static), which runs in any rootfs."""
    for path in BUSYBOX_PATHS:
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError:
            continue
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"ld-musl" not in head:
            return path
    return None


def busybox_rootfs_tar() -> bytes:
    """A ~2 MB root filesystem: busybox and its applets, /bin/bash as a wrapper of sh (so tasks
    with shell bash run), root in /etc/passwd, an empty /tmp, /proc /sys /dev mount points."""
    busybox = static_busybox()
    if busybox is None:
        raise RuntimeError("no static busybox: apt-get install busybox-static")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes | None = None, mode: int = 0o755, kind: bytes = tarfile.REGTYPE,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname, info.mtime = mode, kind, link, 1_700_000_000
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for d in ("bin", "etc", "proc", "sys", "dev", "root", "input", "output", "resource"):
            add(d, mode=0o755, kind=tarfile.DIRTYPE)
        add("tmp", mode=0o1777, kind=tarfile.DIRTYPE)
        with open(busybox, "rb") as f:
            add("bin/busybox", f.read())
        for applet in applets:
            if applet not in ("busybox", "bash"):
                add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("bin/bash", b'#!/bin/sh\nexec /bin/sh "$@"\n')
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        add("etc/group", b"root:x:0:\n", mode=0o644)
    return buf.getvalue()


def make_owned_dir(prefix: str) -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    open(os.path.join(d, MARKER), "w").close()
    return d


def remove_owned_dir(path: str) -> None:
    """rm -rf a directory this module made (it carries the marker), and nothing else."""
    path = os.path.realpath(path)
    tmp = os.path.realpath(tempfile.gettempdir())
    if os.path.dirname(path) != tmp or not os.path.isfile(os.path.join(path, MARKER)):
        raise RuntimeError(f"refusing to remove {path}: not made by the tests")
    with open("/proc/mounts") as f:
        mounts = f.read().splitlines()
    for line in reversed(mounts):
        mount = line.split()[1]
        if mount.startswith(path + "/"):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
    shutil.rmtree(path, ignore_errors=True)


class Engine:
    """One engine's CLI, with the environment and flags that make it work on these machines."""

    def __init__(self, name: str, env: dict[str, str] | None = None, global_flags: list[str] | None = None) -> None:
        self.name = name
        self.binary = shutil.which(name) or name
        self.env = {**os.environ, **(env or {})}
        self.global_flags = global_flags or []
        self.image = ""                          # the busybox image the tests imported
        self.worker_env: dict[str, str] = {}     # what a worker needs to use this engine

    def run(self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 120,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([self.binary, *self.global_flags, *args], input=input, capture_output=True,
                                env=self.env, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name} {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
        return result

    def works(self) -> bool:
        try:
            return self.run("version", check=False, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def import_image(self, name: str, rootfs_tar: bytes) -> str:
        self.run("import", *(["-q"] if self.name == "podman" else []), "-", name, input=rootfs_tar)
        return name

    def remove_image(self, name: str) -> None:
        self.run("rmi", "-f", name, check=False)

    def has_image(self, name: str) -> bool:
        return self.run("image", "inspect", name, check=False).returncode == 0

    def inspect(self, container: str) -> dict | None:
        result = self.run("container", "inspect", container, check=False)
        if result.returncode != 0:
            return None
        found = json.loads(result.stdout)
        return found[0] if found else None

    def status(self, container: str) -> str | None:
        info = self.inspect(container)
        return info["State"]["Status"] if info else None

    def containers(self, fragment: str) -> list[str]:
        """Names of all containers (any state) whose name contains `fragment`."""
        out = self.run("ps", "-a", "--filter", f"name={fragment}", "--format", "{{.Names}}").stdout.decode()
        return [n for n in out.split() if fragment in n]

    def remove_containers(self, fragment: str) -> None:
        for name in self.containers(fragment):
            self.run("rm", "-f", "-v", name, check=False)

    def memory_limits_work(self, image: str, cwd: str) -> bool:
        """Whether this kernel and engine enforce a container memory limit (cgroup memory controller).
        Run in `cwd`: podman's conmon 2.1.6 writes an `oom` file in its working directory."""
        result = self.run("run", "--rm", "--network=none", *self.run_flags(), "--memory", "32m", image,
                          "dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1", check=False, cwd=cwd)
        return result.returncode != 0

    def run_flags(self) -> list[str]:
        if self.name != "podman":
            return []
        import resource
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
        return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


class ThrowawayDockerd:
    """A private dockerd in a temp dir: its own data root, socket and containerd; no bridge, no
    iptables rules, default ulimits within the hard limits. Bounded by `timeout` so it can never
    outlive a test run."""

    def __init__(self, max_seconds: int = 1800) -> None:
        self.dir = make_owned_dir("scitq-dockerd-")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("dockerd") and shutil.which("docker") and shutil.which("containerd"))

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> "ThrowawayDockerd":
        import resource
        hn = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
        hu = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        hu = 32768 if hu == resource.RLIM_INFINITY else min(hu, 32768)
        d = self.dir
        self._log = open(os.path.join(d, "dockerd.log"), "ab")
        self.proc = subprocess.Popen(
            ["timeout", str(self.max_seconds), "dockerd", "--data-root", f"{d}/data", "--exec-root", f"{d}/exec",
             "--pidfile", f"{d}/dockerd.pid", "-H", self.host, "--iptables=false", "--ip6tables=false",
             "--bridge=none", "--ip-forward=false", "--ip-masq=false",
             "--default-ulimit", f"nofile={hn}:{hn}", "--default-ulimit", f"nproc={hu}:{hu}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        engine = Engine("docker", env={"DOCKER_HOST": self.host})
        try:
            wait_for(lambda: self.proc.poll() is not None or (os.path.exists(self.socket) and engine.works()),
                     60, 0.2, "dockerd to answer")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            log = read_text(os.path.join(d, "dockerd.log"))[-2000:]
            self.stop()
            raise RuntimeError(f"dockerd exited: {log}")
        return self

    def stop(self) -> None:
        pids = []
        for path in (f"{self.dir}/dockerd.pid", f"{self.dir}/exec/containerd/containerd.pid"):
            try:
                pids.append(int(read_text(path).strip()))
            except (OSError, ValueError):
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._log.close()
        remove_owned_dir(self.dir)


HTPASSWD_USER = "scitq-tester"


class Registry:
    """A private image registry on 127.0.0.1 (Debian's docker-registry) that wants a password."""

    def __init__(self) -> None:
        self.dir = make_owned_dir("scitq-registry-")
        self.port = free_port()
        self.user = HTPASSWD_USER
        self.password = "pw-" + uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        try:
            import bcrypt  # noqa: F401  (htpasswd entries must be bcrypt)
        except ImportError:
            return False
        return bool(shutil.which("docker-registry"))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Registry":
        import bcrypt
        d = self.dir
        with open(f"{d}/htpasswd", "w") as f:
            f.write(f"{self.user}:{bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
        with open(f"{d}/config.yml", "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n"
                    f"http:\n  addr: {self.host}\n  secret: {uuid.uuid4().hex}\n"
                    f"auth:\n  htpasswd:\n    realm: scitq-tests\n    path: {d}/htpasswd\n")
        # podman reads which registries are plain HTTP from this file (given through the environment)
        with open(f"{d}/registries.conf", "w") as f:
            f.write(f'[[registry]]\nlocation = "{self.host}"\ninsecure = true\n')
        self._log = open(f"{d}/registry.log", "ab")
        self.proc = subprocess.Popen(["timeout", "1800", "docker-registry", "serve", f"{d}/config.yml"],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        import urllib.error
        import urllib.request

        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
            except urllib.error.HTTPError as e:
                e.close()
                return e.code == 401
            except OSError:
                return False
            return True
        wait_for(up, 20, 0.1, "the registry to answer")
        return self

    @property
    def registries_conf(self) -> str:
        return f"{self.dir}/registries.conf"

    def push(self, engine: Engine, local: str, remote: str) -> None:
        """Copy a local image of `engine` to this registry as `remote` (HOST/REPO:TAG)."""
        auth = os.path.join(self.dir, f"auth-{engine.name}")
        os.makedirs(auth, exist_ok=True)
        pw = self.password.encode()
        if engine.name == "podman":
            flags = ["--authfile", f"{auth}/auth.json"]
            env = Engine("podman", env={**engine.env, "CONTAINERS_REGISTRIES_CONF": self.registries_conf})
            env.run("login", *flags, "-u", self.user, "--password-stdin", self.host, input=pw)
            env.run("push", *flags, local, f"docker://{remote}")
        else:
            docker = Engine("docker", env=engine.env, global_flags=["--config", auth])
            docker.run("login", "-u", self.user, "--password-stdin", self.host, input=pw)
            docker.run("tag", local, remote)
            docker.run("push", remote)
            docker.run("rmi", remote)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()
        remove_owned_dir(self.dir)


def engine_wrapper(directory: str, engine: Engine, log_path: str) -> str:
    """A `NAME` script in `directory` that logs its arguments to `log_path`, then runs the real
    engine: put `directory` first in a worker's PATH to count its pulls and logins."""
    path = os.path.join(directory, engine.name)
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log_path}"\nexec "{engine.binary}" "$@"\n')
    os.chmod(path, 0o755)
    return path
