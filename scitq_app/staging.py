"""The worker's data staging: `RcloneStager` fills a task's input/ and
resource/ before it runs and uploads its output/ after, through the
`ResourceCache` and `storage.Rclone`."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import stat
import threading
import time
from typing import Any, Callable, Iterable

from .errors import MissingDependency, StorageError
from .job import Stager, StagingError
from .storage import (Deadline, Rclone, TransferCanceled, TransferError, TransferTimeout, apply_actions,
                      find_rclone, join, tree_files, tree_size)
from .roots import describe, resolve
from .uris import Uri, parse, parse_output, rclone_remotes

log = logging.getLogger(__name__)


# --- the worker's resource cache ----------------------------------------------------------

class ResourceCache:
    """Resources downloaded once per worker and shared, read-only, by its tasks.

    Layout under `root` (WORKDIR/.scitq/resources), one entry per resource URI
    *with* its actions (key = sha256 of the URI):
      KEY.lock        flock held while the entry is checked, downloaded, linked or evicted
      KEY/meta.json   the URI, the fingerprint of its source (size, mtime, hashes), times
      KEY/data/       the content with the |actions applied; tasks get hard links to its files
      KEY/used        its mtime is the entry's last use (least recently used are evicted first)
    The lock makes ten tasks asking for one resource at once wait for a single
    download. An entry is re-checked against its source (one `rclone lsjson`) when
    used more than `recheck` s after its last check, and downloaded again when the
    source changed. When the disk holding the cache is fuller than `limit` %,
    entries are removed least recently used first (running tasks keep their links)."""

    def __init__(self, root: str, rclone: Callable[[], Rclone], *, limit: float = 85.0, recheck: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 disk_usage: Callable[[str], Any] = shutil.disk_usage) -> None:
        self.root = root
        self.rclone = rclone
        self.limit = limit
        self.recheck = recheck
        self.clock = clock
        self.disk_usage = disk_usage
        self.downloads = 0
        self.hits = 0
        self.evictions = 0
        self._count_lock = threading.Lock()
        os.makedirs(root, mode=0o700, exist_ok=True)

    @staticmethod
    def key(uri: Uri) -> str:
        return hashlib.sha256(uri.raw.encode("utf-8")).hexdigest()[:32]

    def _locked(self, key: str, blocking: bool = True) -> Any:
        fd = os.open(os.path.join(self.root, key + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            return None
        return _Unlock(fd)

    def provide(self, uri: Uri, dest: str, *, deadline: Deadline | None = None,
                cancel: Any = None) -> bool:
        """Link the resource's files into `dest`, downloading it first when it is not
        cached or its source changed. True when it was downloaded."""
        key = self.key(uri)
        entry = os.path.join(self.root, key)
        data = os.path.join(entry, "data")
        lock = self._locked(key)
        downloaded = False
        try:
            meta = _read_json(os.path.join(entry, "meta.json"))
            fresh = False
            fingerprint: str | None = None
            if meta and os.path.isdir(data):
                if self.clock() - float(meta.get("checked", 0)) < self.recheck:
                    fresh = True
                else:
                    try:
                        fingerprint = self.fingerprint(uri, deadline, cancel)
                        fresh = fingerprint == meta.get("fingerprint") or fingerprint is None
                    except TransferError as e:
                        if e.not_found or isinstance(e, TransferCanceled):
                            raise
                        log.warning("resource %s: cannot check its source (%s); using the cached copy",
                                    uri.raw, e.message)
                        fresh = True
            if fresh:
                meta["checked"] = self.clock()
                with self._count_lock:
                    self.hits += 1
            else:
                if meta:
                    log.info("resource %s changed at its source: downloading it again", uri.raw)
                if fingerprint is None:
                    try:
                        fingerprint = self.fingerprint(uri, deadline, cancel)
                    except TransferError as e:
                        if e.not_found or isinstance(e, TransferCanceled):
                            raise
                        fingerprint = None  # e.g. an http server that answers GET but not HEAD
                self.evict()  # make room first when the disk is already too full
                started = time.monotonic()
                self._download(uri, entry, deadline, cancel)
                size = tree_size(data)
                meta = {"uri": uri.raw, "fingerprint": fingerprint, "size": size, "fetched": self.clock(),
                        "checked": self.clock()}
                downloaded = True
                with self._count_lock:
                    self.downloads += 1
                log.info("resource %s: downloaded %d bytes in %.1f s (download %d of this worker)", uri.raw,
                         size, time.monotonic() - started, self.downloads, extra={"action": "resource_download"})
            _write_json(os.path.join(entry, "meta.json"), meta)
            with open(os.path.join(entry, "used"), "w"):
                pass
            link_tree(data, dest)
        finally:
            lock.release()
        if downloaded:
            self.evict()
        return downloaded

    def fingerprint(self, uri: Uri, deadline: Deadline | None = None, cancel: Any = None) -> str | None:
        """What identifies the source's current content: sizes, mtimes and hashes."""
        rc = self.rclone()
        hashes = uri.scheme.lower() != "file"  # hashing local files would read them whole
        if uri.folder:
            listing = rc.lsjson(uri, recursive=True, files_only=True, hashes=hashes, deadline=deadline,
                                cancel=cancel) or []
            if not listing:
                raise TransferError(f"{uri.location}: not found (no file in this folder)", not_found=True)
            items = sorted([e.get("Path"), e.get("Size"), e.get("ModTime"), e.get("Hashes")] for e in listing)
        else:
            entry = rc.lsjson(uri, stat=True, hashes=hashes, deadline=deadline, cancel=cancel)
            if not entry or entry.get("IsDir"):
                raise TransferError(f"{uri.location}: not found", not_found=True)
            items = [[entry.get("Size"), entry.get("ModTime"), entry.get("Hashes")]]
        return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()

    def _download(self, uri: Uri, entry: str, deadline: Deadline | None, cancel: Any) -> None:
        os.makedirs(entry, mode=0o700, exist_ok=True)
        for n in os.listdir(entry):  # leftovers of a download interrupted by a crash
            if n.startswith((".tmp-", ".old-")):
                shutil.rmtree(os.path.join(entry, n), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=entry)
        try:
            self.rclone().download(uri, tmp, deadline=deadline, cancel=cancel)
            apply_actions(tmp, uri.actions)
            _read_only(tmp)
            data = os.path.join(entry, "data")
            if os.path.exists(data):
                old = tempfile.mkdtemp(prefix=".old-", dir=entry)
                os.rename(data, os.path.join(old, "data"))
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def entries(self) -> list[tuple[float, str]]:
        """(last use, key) of every complete entry, least recently used first."""
        out = []
        for n in os.listdir(self.root):
            entry = os.path.join(self.root, n)
            if n.endswith(".lock") or not os.path.isdir(entry):
                continue
            try:
                used = os.path.getmtime(os.path.join(entry, "used"))
            except OSError:
                used = 0.0
            out.append((used, n))
        return sorted(out)

    def used_percent(self) -> float:
        usage = self.disk_usage(self.root)
        return 100.0 * usage.used / usage.total if usage.total else 0.0

    def evict(self) -> int:
        """Remove least recently used entries while the disk is fuller than the limit."""
        removed = 0
        try:
            if self.used_percent() <= self.limit:
                return 0
            for _, key in self.entries():
                if self.used_percent() <= self.limit:
                    break
                lock = self._locked(key, blocking=False)
                if lock is None:
                    continue  # being downloaded or linked right now
                try:
                    shutil.rmtree(os.path.join(self.root, key), ignore_errors=True)
                finally:
                    lock.release()
                removed += 1
                log.info("resource cache: evicted entry %s (disk over %.0f %%)", key, self.limit,
                         extra={"action": "resource_evict"})
        except OSError as e:
            log.warning("resource cache: eviction failed: %s", e)
        with self._count_lock:
            self.evictions += removed
        return removed


class _Unlock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the flock


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _read_only(root: str) -> None:
    """Cached files are shared by hard links: make them read-only (directories stay writable
    so the cache can remove them)."""
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o555)


def link_tree(src: str, dest: str) -> None:
    """Hard-link every file of `src` into `dest` (copied when linking is impossible, e.g.
    across file systems); directories are made, symlinks recreated. Existing files are replaced."""
    for dirpath, dirs, names in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dest if rel == "." else os.path.join(dest, rel)
        os.makedirs(target_dir, exist_ok=True)
        for n in names:
            s, d = os.path.join(dirpath, n), os.path.join(target_dir, n)
            if os.path.lexists(d):
                os.unlink(d)
            if os.path.islink(s):
                os.symlink(os.readlink(s), d)
                continue
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)


# --- the worker's stager ------------------------------------------------------------------

# Backends without real directories: nothing to remove after a move.
BUCKET_TYPES = frozenset({"s3", "gcs", "google cloud storage", "azureblob", "b2", "swift", "oos", "qingstor",
                          "storj", "tardigrade"})
ATTEMPT_PREFIX = ".scitq-attempt-"
LOGS_DIR = ".scitq-logs"
UPLOAD_DIR = ".upload"  # in the execution's dir, next to output/: the worker's, not the task's


class _Either:
    """Set when either of two events is (the job's cancel, or a sibling transfer failing)."""

    def __init__(self, a: Any, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return bool(self.a is not None and self.a.is_set()) or self.b.is_set()

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.b.wait(min(left, 0.2))
        return True


class RcloneStager(Stager):
    """Stages a task's data with rclone, using the rclone config at `config_path`
    (the one the server hands to its workers).

    - inputs: downloaded into input/ before the task waits for a run slot (a file
      URI as input/NAME, a folder URI's content into input/), within the task's
      download_timeout or else a timeout scaled with the size rclone reports;
    - resources: through the `ResourceCache`, hard-linked into resource/;
    - file:// URIs: only under `file_roots` ([worker] file_roots), symlinks resolved
      (`roots.resolve`); rclone is given the resolved path. Outside: StagingError;
    - outputs: the regular files of output/ are hard-linked into a snapshot the task
      cannot write (`snapshot`: never following a symlink, even one swapped in while it
      runs), with the task's stdout/stderr logs in .scitq-logs/TASK/, and that snapshot
      is uploaded (rclone without --copy-links: it skips symlinks itself too) to
      OUTPUT/.scitq-attempt-TASK-EXECUTION/; on success that attempt
      is then moved server-side into OUTPUT/ (promoted) and the leftovers of the
      task's earlier attempts are removed, so a half-uploaded or failed attempt
      never looks like a result. A failed attempt's upload stays in its attempt
      folder for inspection (a note in stderr says where).
    rclone is found at first use; a worker without it runs tasks that move no data."""

    def __init__(self, workdir: str, config_path: str, *, rclone: str = "", retries: int = 3,
                 cache_limit: float = 85.0, recheck: float = 5.0, parallel: int = 4,
                 file_roots: Iterable[str] = ()) -> None:
        self.workdir = workdir
        self.file_roots = tuple(file_roots)
        self.config_path = config_path
        self.explicit = rclone
        self.retries = retries
        self.parallel = max(1, parallel)
        self.cache = ResourceCache(os.path.join(workdir, ".scitq", "resources"), self.rclone,
                                   limit=cache_limit, recheck=recheck)
        self._engine: Rclone | None = None
        self._missing: tuple[float, MissingDependency] | None = None
        self._lock = threading.Lock()
        self._types: tuple[tuple[float, int], dict[str, str]] | None = None
        self.counters = {"inputs": 0, "uploads": 0, "promotions": 0}

    # --- rclone -----------------------------------------------------------------
    def rclone(self) -> Rclone:
        """The rclone engine; MissingDependency (re-probed each minute) when there is none."""
        with self._lock:
            if self._engine is not None:
                return self._engine
            if self._missing is not None and time.monotonic() - self._missing[0] < 60:
                raise self._missing[1]
            try:
                path, version = find_rclone(self.explicit)
            except MissingDependency as e:
                if self._missing is None:
                    log.warning("%s; until then this worker can only run tasks that move no data", e.message,
                                extra={"action": "rclone"})
                self._missing = (time.monotonic(), e)
                raise
            self._engine = Rclone(path, version, self.config_path, retries=self.retries)
            log.info("rclone %s at %s", version, path, extra={"action": "rclone"})
            return self._engine

    def version(self) -> str | None:
        try:
            return self.rclone().version
        except MissingDependency:
            return None

    def stats(self) -> dict[str, Any]:
        return {"rclone": self.version(), "resource_downloads": self.cache.downloads,
                "resource_hits": self.cache.hits, "resource_evictions": self.cache.evictions,
                **{f"staged_{k}": v for k, v in self.counters.items()}}

    def remote_type(self, scheme: str) -> str:
        """The backend type of a remote in the rclone config ("" when unknown)."""
        try:
            st = os.stat(self.config_path)
            stamp = (st.st_mtime, st.st_size)
            if self._types is None or self._types[0] != stamp:
                with open(self.config_path, encoding="utf-8", errors="replace") as f:
                    self._types = (stamp, rclone_remotes(f.read()))
            return self._types[1].get(scheme, "")
        except OSError:
            return ""

    def _engine_or_fail(self) -> Rclone:
        try:
            return self.rclone()
        except MissingDependency as e:
            raise StagingError(e.message) from None

    def confine(self, kind: str, uri: Uri) -> Uri:
        """A file:// URI with its path resolved, when that lies under this worker's file roots;
        StagingError otherwise. Other URIs are returned as they are."""
        if uri.scheme.lower() != "file":
            return uri
        real = resolve(uri.path.rstrip("/") or "/", self.file_roots)
        if real is None:
            raise StagingError(f"{kind} {uri.raw}: outside this worker's file roots, symlinks resolved "
                               f"({describe(self.file_roots, '[worker] file_roots')})")
        path = real.rstrip("/") + "/" if uri.folder else real
        return Uri(uri.raw, uri.scheme, path, uri.actions)  # raw kept: messages and cache keys name the URI

    # --- in -----------------------------------------------------------------------
    def stage_in(self, execution: dict, dirs: dict[str, str], cancel: threading.Event) -> None:
        inputs = [self.confine("input", parse(u, "inputs")) for u in execution.get("inputs") or []]
        resources = [self.confine("resource", parse(u, "resources", allow_actions=True))
                     for u in execution.get("resources") or []]
        if execution.get("output"):  # refused before the command runs, not after
            self.confine("output", parse_output(execution["output"]))
        if not inputs and not resources:
            return
        rc = self._engine_or_fail()
        timeout = execution.get("download_timeout")
        deadline = Deadline.fixed(float(timeout)) if timeout else Deadline()
        started = time.monotonic()
        failed = threading.Event()
        stop = _Either(cancel, failed)
        jobs: list[tuple[str, Uri]] = [("input", u) for u in inputs] + [("resource", u) for u in resources]
        errors: list[str] = []

        def one(kind: str, uri: Uri) -> None:
            try:
                if kind == "input":
                    rc.download(uri, dirs["input"], deadline=deadline, cancel=stop)
                    with self._lock:
                        self.counters["inputs"] += 1
                else:
                    self.cache.provide(uri, dirs["resource"], deadline=deadline, cancel=stop)
            except TransferCanceled:
                if not failed.is_set():  # else a sibling's failure stopped it: that one is reported
                    errors.append(f"{kind} {uri.raw}: canceled")
            except (StorageError, OSError) as e:
                message = e.message if isinstance(e, StorageError) else f"{type(e).__name__}: {e}"
                if isinstance(e, TransferTimeout) and timeout:
                    message += f" (the task's download_timeout is {timeout} s)"
                if not message.startswith(uri.location):
                    message = f"{uri.raw}: {message}"
                errors.append(f"{kind} {message}")
                failed.set()

        if len(jobs) == 1:
            one(*jobs[0])
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=min(self.parallel, len(jobs)),
                                    thread_name_prefix=f"stage-{execution.get('id')}") as pool:
                for f in [pool.submit(one, kind, uri) for kind, uri in jobs]:
                    f.result()
        if errors:
            raise StagingError("; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""))
        log.info("execution %s: %d input(s) and %d resource(s) staged in %.2f s", execution.get("id"),
                 len(inputs), len(resources), time.monotonic() - started, extra={"action": "staged_in"})

    # --- out ----------------------------------------------------------------------
    def stage_out(self, execution: dict, dirs: dict[str, str], cancel: threading.Event,
                  succeeded: bool = True) -> list[str]:
        if not execution.get("output"):
            return []
        out = self.confine("output", parse_output(execution["output"]))
        rc = self._engine_or_fail()
        eid, tid = int(execution["id"]), execution.get("task_id", "x")
        name = f"{ATTEMPT_PREFIX}{tid}-{eid}"
        attempt = join(out, name + "/")
        upload = os.path.join(os.path.dirname(dirs["output"]), UPLOAD_DIR)
        try:
            files, skipped = snapshot(dirs["output"], upload, exclude_top=[LOGS_DIR])
            if skipped:
                _note(dirs, f"scitq: not uploaded (symlinks and special files are never followed): "
                            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}\n")
            self._link_logs(dirs, upload, tid)
            if not tree_files(upload):
                return []
            return self._upload(rc, upload, out, attempt, name, files, execution, dirs, cancel, succeeded)
        finally:
            shutil.rmtree(upload, ignore_errors=True)

    def _upload(self, rc: Rclone, upload: str, out: Uri, attempt: Uri, name: str, files: list[str],
                execution: dict, dirs: dict[str, str], cancel: threading.Event, succeeded: bool) -> list[str]:
        eid, tid = int(execution["id"]), execution.get("task_id", "x")
        started = time.monotonic()
        try:
            # no --copy-links: the snapshot holds no symlink, and rclone skips any it would meet
            rc.transfer(["copy", upload, rc.path(attempt), "--no-traverse"],
                        deadline=Deadline(), cancel=cancel, what=f"uploading to {attempt.location}")
            with self._lock:
                self.counters["uploads"] += 1
            if not succeeded:
                _note(dirs, f"scitq: the outputs of this failed attempt are in {attempt.location} "
                            "(not promoted to the output folder)\n")
                return files
            rc.transfer(["move", rc.path(attempt), rc.path(out), "--exclude", f"/{ATTEMPT_PREFIX}*/**",
                         "--delete-empty-src-dirs", "--no-traverse"],
                        deadline=Deadline(), cancel=cancel, what=f"promoting {attempt.location}")
            with self._lock:
                self.counters["promotions"] += 1
        except TransferError as e:
            raise StagingError(f"output {e.message}" if e.message.startswith(("uploading", "promoting"))
                               else f"output {out.location}: {e.message}") from None
        if self._has_dirs(out):
            rc.run(["rmdirs", rc.path(attempt)], check=False)
        if int(execution.get("attempt") or 1) > 1:
            self._remove_leftovers(rc, out, tid, name)
        log.info("execution %s: %d output file(s) uploaded to %s in %.2f s", eid, len(files), out.location,
                 time.monotonic() - started, extra={"action": "staged_out"})
        return files

    def _has_dirs(self, uri: Uri) -> bool:
        scheme = uri.scheme.lower()
        if scheme == "file" or scheme == "ftp":
            return True
        if scheme in ("http", "https"):
            return False
        return self.remote_type(uri.scheme).lower() not in BUCKET_TYPES

    def _remove_leftovers(self, rc: Rclone, out: Uri, tid: Any, keep: str) -> None:
        """Earlier attempts of this task that were interrupted (or failed) left an attempt folder."""
        try:
            listing = rc.lsjson(out, dirs_only=True) or []
            for e in listing:
                n = str(e.get("Name", ""))
                if n.startswith(f"{ATTEMPT_PREFIX}{tid}-") and n != keep:
                    rc.run(["purge", rc.path(join(out, n + "/"))], check=False)
                    log.info("removed %s, left by an earlier attempt of task %s", join(out, n).location, tid)
        except StorageError as e:
            log.warning("could not remove the earlier attempts of task %s in %s: %s", tid, out.location, e.message)

    @staticmethod
    def _link_logs(dirs: dict[str, str], upload: str, tid: Any) -> None:
        """The full stdout/stderr logs travel with the outputs (the database keeps only head and tail),
        into the snapshot: never into output/, where the task could have put a symlink to write through."""
        root = os.path.dirname(dirs["output"])
        logs = os.path.join(upload, LOGS_DIR, str(tid))
        for stream in ("stdout", "stderr"):
            src = os.path.join(root, f"{stream}.log")
            try:
                if not stat.S_ISREG(os.lstat(src).st_mode):
                    continue  # not the worker's log file: never follow a link out
            except FileNotFoundError:
                continue
            os.makedirs(logs, mode=0o700, exist_ok=True)
            _link_or_copy(src, os.path.join(logs, f"{stream}.log"))


def snapshot(output: str, dest: str, exclude_top: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Hard-link (or copy) the regular files under `output` into `dest`, made afresh, without ever
    following a symlink: `os.fwalk` enters no symlinked directory (nor `output` itself when it is
    one) and links are made with follow_symlinks=False, so a symlink swapped in by a process of the
    task still running is at worst linked as a symlink, which rclone skips. Returns (the files
    linked, the names skipped: symlinks and special files), relative, sorted."""
    if os.path.lexists(dest):
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        else:
            os.unlink(dest)
    os.mkdir(dest, 0o700)
    if os.path.islink(output) or not os.path.isdir(output):
        raise StagingError("output/ is not a directory (replaced by a symlink?): nothing uploaded")
    skip = set(exclude_top)
    files: list[str] = []
    skipped: list[str] = []
    for dirpath, dirs, names, dirfd in os.fwalk(output):
        rel = os.path.relpath(dirpath, output)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        target = dest if rel == "." else os.path.join(dest, rel)
        os.makedirs(target, mode=0o700, exist_ok=True)
        for d in list(dirs):
            if os.path.islink(os.path.join(dirpath, d)):
                skipped.append(prefix + d)
                dirs.remove(d)  # fwalk would not enter it anyway
        for n in names:
            try:
                mode = os.stat(n, dir_fd=dirfd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):
                skipped.append(prefix + n)
                continue
            try:
                os.link(n, os.path.join(target, n), src_dir_fd=dirfd, follow_symlinks=False)
            except OSError:  # another file system, or a link the kernel refuses: copy it, not following
                fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as fin, open(os.path.join(target, n), "xb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            files.append(prefix + n)
    return sorted(files), sorted(skipped)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.lexists(dst):
        os.unlink(dst)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)


def _note(dirs: dict[str, str], text: str) -> None:
    path = os.path.join(os.path.dirname(dirs["output"]), "stderr.log")
    try:
        with open(path, "ab") as f:
            f.write(text.encode("utf-8", "replace"))
    except OSError:
        pass
