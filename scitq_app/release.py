"""A scitq.pyz release: which one runs, its hash and version, and installing another in
install.sh's layout, which a fleet upgrade (`scitq worker upgrade`) and install.sh share:

    LIB/scitq.pyz -> LIB/releases/scitq-<first 16 hex of its sha256>.pyz

The link is swapped atomically; the three newest releases are kept (older ones cannot be in use
any more), and a process already running keeps its own release file open.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from typing import TYPE_CHECKING

from .errors import ConfigError, Conflict, ReleaseError

if TYPE_CHECKING:
    from .client import Server

KEEP = 3  # releases kept beside the current one's link


def running_pyz() -> str | None:
    """The path this process runs scitq.pyz from (as invoked: the install.sh link when it ran
    through it), or None when it runs from source."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return here if os.path.isfile(here) and zipfile.is_zipfile(here) else None


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_VERSION = re.compile(rb'^__version__ = "([^"]+)"', re.M)


def version_of(path: str) -> str:
    """The __version__ a scitq.pyz declares (read from the archive, nothing run)."""
    try:
        with zipfile.ZipFile(path) as z:
            m = _VERSION.search(z.read("scitq_app/__init__.py"))
    except (OSError, KeyError, zipfile.BadZipFile):
        m = None
    if m is None:
        raise ConfigError(f"{path} is not a scitq.pyz (no scitq_app/__init__.py with a __version__)", path=path)
    return m.group(1).decode("utf-8", "replace")


def layout(link: str) -> str:
    """The releases folder of an install.sh layout whose `link` (LIB/scitq.pyz) this process
    runs through; ReleaseError when it is not one (a pyz copied by hand is upgraded by hand)."""
    target = os.path.realpath(link)
    releases = os.path.join(os.path.dirname(link), "releases")
    if not (os.path.islink(link) and os.path.dirname(target) == os.path.realpath(releases)):
        raise ReleaseError(f"{link} is not install.sh's link into {releases}/: upgrade this host with "
                           "install.sh (or copy the new pyz by hand)")
    return releases


def install(data: bytes, sha256: str, link: str, python: str = sys.executable) -> str:
    """Install `data` (a scitq.pyz whose sha256 must be `sha256`) as the release `link` points
    to; return its path. The file is checked (hash, and that it runs: `--version`) before the
    link moves; a failure changes nothing."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ReleaseError("the scitq.pyz received does not match its sha256: not installed")
    releases = layout(link)
    final = os.path.join(releases, f"scitq-{sha256[:16]}.pyz")
    tmp = final + f".{os.getpid()}.new"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        check = subprocess.run([python, tmp, "--version"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise ReleaseError(f"the new scitq.pyz does not run here: {(check.stderr or check.stdout).strip()[:200]}")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    swap = link + f".{os.getpid()}.new"
    os.symlink(final, swap)
    os.replace(swap, link)
    _prune(releases, keep=final)
    return final


def _prune(releases: str, keep: str) -> None:
    found = sorted((os.path.join(releases, n) for n in os.listdir(releases)
                    if n.startswith("scitq-") and n.endswith(".pyz")), key=os.path.getmtime, reverse=True)
    for old in found[KEEP:]:
        if old != keep:
            try:
                os.unlink(old)
            except OSError:
                pass


def upgrade_from(client: "Server") -> str | None:
    """Make the server's scitq.pyz the release this host's link points to (downloaded over the
    worker's own authenticated channel, its sha256 checked); return its version, or None when
    this process runs it already. The caller then drains and exits for a restart on it."""
    running = running_pyz()
    if running is None:
        raise ReleaseError("this worker runs from source, not from a scitq.pyz: upgrade it by hand")
    # the entry point runs the release file itself (realpath): the link is LIB/scitq.pyz beside releases/
    link = os.path.join(os.path.dirname(os.path.dirname(running)), "scitq.pyz")
    layout(link)
    info = client.pyz_info()
    if info["sha256"] == sha256_of(running):
        return None
    if sha256_of(os.path.realpath(link)) != info["sha256"]:
        meta, data = client.pyz()
        install(data, str(meta["sha256"]), link)
    return str(info["version"])


class Offered:
    """The scitq.pyz a server hands to its workers (`[server] pyz`, else the one it runs from):
    its version, sha256 and base64 content, computed once per file change. Conflict when there
    is none, or it cannot be read."""

    def __init__(self, path: str | None) -> None:
        import threading
        self.path = path or running_pyz()
        self._lock = threading.Lock()
        self._key: tuple[float, int] | None = None
        self._loaded: tuple[dict[str, object], str] = ({}, "")

    def _load(self) -> tuple[dict[str, object], str]:
        import base64
        if not self.path:
            raise Conflict("this server runs from source and [server] pyz is unset: it has no scitq.pyz to "
                           "hand out")
        with self._lock:
            try:
                st = os.stat(self.path)
                key = (st.st_mtime, st.st_size)
                if key != self._key:
                    with open(self.path, "rb") as f:
                        data = f.read()
                    info = {"version": version_of(self.path), "sha256": hashlib.sha256(data).hexdigest(),
                            "size": len(data)}
                    self._loaded = (info, base64.b64encode(data).decode("ascii"))
                    self._key = key
            except OSError as e:
                raise Conflict(f"the scitq.pyz to hand out ([server] pyz) cannot be read: {self.path}: "
                               f"{e.strerror}") from None
            except ConfigError as e:
                raise Conflict(e.message) from None
            return self._loaded

    def info(self) -> dict[str, object]:
        return dict(self._load()[0])

    def payload(self) -> dict[str, object]:
        info, data = self._load()
        return {**info, "data": data}
