"""Extracting the archives of resources (`|untar`, `|unzip`) without writing outside their folder.

A worker may extract as root, so an archive is hostile until checked. Every
member is checked by `Members` before anything is written, on every Python:
  - its name is relative, without `..`, and goes through no symlink or hard
    link (neither one made earlier in this archive nor one already on disk:
    tar writes through a symlinked directory, and a chain such as `sub/l -> ..`,
    `sub/l/l2 -> ..`, `sub/l/l2/x` climbs out one link at a time);
  - a symlink's or hard link's target, walked component by component from
    where the kernel would start, stays inside the folder and goes through no
    link either (so resolving it later cannot leave the folder);
  - it is a directory, a regular file or such a link: device files and FIFOs
    are refused.
Tar archives are then extracted with the `data` filter when this Python has
it (3.11.4+, 3.10.12+): a second, independent check. Debian bookworm's Python
(3.11.2) has none, so the members are also stripped of what the filter would
strip (set-id and group/other write bits, their owner: a root worker would
otherwise give files the archive's uid) before `extractall`.
Zip entries flagged as symlinks (Unix mode in the external attributes) are
made as symlinks, after the same check; zipfile itself writes only files.
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from .errors import StorageError


class UnsafeArchive(StorageError):
    """An archive holds a member that would land outside its folder."""

    kind = "unsafe_archive"


class Members:
    """The member checker of one archive extracted into `root` (see the module docstring)."""

    def __init__(self, root: str, archive: str = "archive") -> None:
        self.root = os.path.realpath(root)
        self.archive = archive
        self.links: set[tuple[str, ...]] = set()  # symlinks and hard links this archive made so far
        self.kinds: dict[tuple[str, ...], str] = {}

    def _refuse(self, name: str, why: str) -> UnsafeArchive:
        return UnsafeArchive(f"{self.archive}: member {name!r} {why}: the archive is refused, nothing extracted")

    def _parts(self, name: str) -> tuple[str, ...]:
        if not name or "\x00" in name:
            raise self._refuse(name, "has an empty name or a NUL byte")
        if name.startswith("/") or os.path.isabs(name):
            raise self._refuse(name, "has an absolute path")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self._refuse(name, "has a '..' component")
        return parts

    def _is_link(self, parts: tuple[str, ...]) -> bool:
        """A link made earlier in this archive, or one already on disk (an earlier archive's)."""
        return parts in self.links or os.path.islink(os.path.join(self.root, *parts))

    def _walk(self, name: str, start: tuple[str, ...], target: str, kind: str) -> tuple[str, ...]:
        """Walk `target` from `start` as the kernel would; refuse leaving the folder or any link on the way."""
        if not target or "\x00" in target:
            raise self._refuse(name, f"is a {kind} without a target")
        if target.startswith("/"):
            raise self._refuse(name, f"is a {kind} to an absolute path ({target!r})")
        here = list(start)
        pieces = [p for p in target.split("/") if p not in ("", ".")]
        for i, p in enumerate(pieces):
            if p == "..":
                if not here:
                    raise self._refuse(name, f"is a {kind} pointing outside the folder ({target!r})")
                here.pop()
                continue
            here.append(p)
            last = i == len(pieces) - 1
            # a link in the middle of the target could point anywhere once followed; a symlink's final
            # component may itself be a (checked) symlink, a hard link's may not (link() follows it)
            if (not last or kind == "hard link") and self._is_link(tuple(here)):
                raise self._refuse(name, f"is a {kind} whose target goes through another link ({target!r})")
        return tuple(here)

    def check(self, name: str, kind: str, target: str = "") -> tuple[str, ...]:
        """Check one member: `kind` is dir, file, symlink, hardlink or other (refused). Members are
        checked in archive order; returns the member's path components."""
        parts = self._parts(name)
        if not parts:
            if kind == "dir":
                return parts  # "./": the folder itself
            raise self._refuse(name, "names the folder itself")
        for i in range(1, len(parts) + 1):
            if self._is_link(parts[:i]):
                raise self._refuse(name, "goes through a link made earlier" if i < len(parts)
                                   else "replaces a link made earlier")
        if kind == "other":
            raise self._refuse(name, "is a device file, a FIFO or another special file")
        if kind == "symlink":
            self._walk(name, parts[:-1], target, "symlink")
        elif kind == "hardlink":  # a tar hard link's target is relative to the archive's root
            dest = self._walk(name, (), target, "hard link")
            if not dest or self.kinds.get(dest, "file") != "file" or os.path.isdir(os.path.join(self.root, *dest)):
                raise self._refuse(name, f"is a hard link to something that is not a file ({target!r})")
        if kind in ("symlink", "hardlink"):
            self.links.add(parts)
        self.kinds[parts] = kind
        return parts


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isfile():
        return "file"
    return "other"  # character or block device, FIFO, anything tarfile does not know


def extract_tar(path: str, root: str) -> None:
    """Extract the tar archive `path` into `root`; raise UnsafeArchive (nothing extracted) when a
    member would land outside it (see the module docstring)."""
    label = os.path.basename(path)
    with tarfile.open(path, "r:*") as tar:
        members = tar.getmembers()
        check = Members(root, label)
        for m in members:
            check.check(m.name, _tar_kind(m), m.linkname)
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is not None:
            try:
                tar.extractall(root, members=members, filter=data_filter)
            except tarfile.FilterError as e:
                raise UnsafeArchive(f"{label}: {e}: the archive is refused") from None
            return
        uid, gid = os.getuid(), os.getgid()
        for m in members:
            # what the data filter does, and more: no set-id or group/other write bit, and the
            # extracting user's own ids (tarfile chowns to the archive's when run as root)
            if m.isdir():
                m.mode = (m.mode & 0o755) | 0o700
            elif m.isfile():
                m.mode = (m.mode & 0o755) | 0o600
            m.uid, m.gid, m.uname, m.gname = uid, gid, "", ""
        tar.extractall(root, members=members, numeric_owner=True)  # noqa: S202 - every member checked above


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_IFMT(mode):  # a Unix mode in the high bits (zips made on Windows hold none)
        if stat.S_ISLNK(mode):
            return "symlink"
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return "other"
    return "file"


def extract_zip(path: str, root: str) -> None:
    """Extract the zip archive `path` into `root`; raise UnsafeArchive (nothing extracted) when an
    entry would land outside it. Symlink entries become symlinks (checked like tar's)."""
    label = os.path.basename(path)
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        check = Members(root, label)
        plan: list[tuple[zipfile.ZipInfo, str, tuple[str, ...], str]] = []
        for info in infos:
            kind = _zip_kind(info)
            target = ""
            if kind == "symlink":
                if info.file_size > 4096:
                    raise UnsafeArchive(f"{label}: member {info.filename!r} is a symlink with a "
                                        f"{info.file_size}-byte target: the archive is refused")
                target = z.read(info).decode("utf-8", "surrogateescape")
            plan.append((info, kind, check.check(info.filename, kind, target), target))
        for info, kind, parts, target in plan:
            dest = os.path.join(root, *parts)
            if kind == "symlink":
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.symlink(target, dest)
            elif parts:
                z.extract(info, root)  # the name was checked: zipfile's own cleaning leaves it as is
