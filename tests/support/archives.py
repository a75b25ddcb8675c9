"""Hostile (and honest) archives for the |untar and |unzip checks, runnable by any Python.

`python -m tests.support.archives DIR` (with the source tree on PYTHONPATH) runs
every case under DIR and prints one JSON object: case -> outcome. The unit tests
run it in-process and with Debian's /usr/bin/python3 (3.11.2, no tarfile data
filter), so the checks are shown to hold whatever the Python. No pytest here.

Each case extracts into BOX/a/b/res; BOX also holds `secret` and `a/secret`, files
a hard link could reach. The outcome records whether the action was refused, its
message, and every path under BOX outside res that changed (new, removed, or
different content): an escape shows up there.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import zipfile
from typing import Callable

SECRET = b"the secret bytes\n"


def _tar(path: str, members: list[tuple[str, str, object]]) -> None:
    """members: (name, kind, data or link target or mode); kind in file, dir, sym, hard, chr, suid."""
    with tarfile.open(path, "w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file" or kind == "suid":
                data = value if isinstance(value, bytes) else b"x"
                info.size = len(data)
                if kind == "suid":
                    info.mode = 0o4777
                    info.uid, info.gid, info.uname, info.gname = 1234, 1234, "nobody-here", "nobody-here"
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)


def _zip(path: str, members: list[tuple[str, str, object]]) -> None:
    """members: (name, kind, data or target); kind in file, sym, chr."""
    with zipfile.ZipFile(path, "w") as z:
        for name, kind, value in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: the mode is in the high bits of the external attributes
            mode = {"file": stat.S_IFREG | 0o644, "sym": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o666}[kind]
            info.external_attr = mode << 16
            data = value if isinstance(value, bytes) else str(value).encode()
            z.writestr(info, data)


def cases(box: str) -> dict[str, tuple[str, Callable[[str], None]]]:
    """case -> (action, writer of the archive(s) into the resource folder)."""
    abs_target = os.path.join(box, "abs-escape")
    return {
        "tar_absolute": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [(abs_target, "file", b"pwned")])),
        "tar_dotdot": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [("../../escaped", "file", b"pwned")])),
        "tar_chained_symlinks": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("sub", "dir", None), ("sub/l", "sym", ".."), ("sub/l/l2", "sym", ".."),
            ("sub/l/l2/x", "file", b"pwned")])),
        "tar_chained_symlinks_across_two_archives": ("untar", lambda d: (
            _tar(os.path.join(d, "a.tar"), [("sub/l", "sym", "..")]),
            _tar(os.path.join(d, "b.tar"), [("sub/l/l2", "sym", ".."), ("sub/l/l2/x", "file", b"pwned")]))),
        "tar_symlink_then_file_through_it": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("d", "sym", "../.."), ("d/x", "file", b"pwned")])),
        "tar_inside_symlink_then_file_through_it": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("sub", "dir", None), ("d", "sym", "sub"), ("d/x", "file", b"pwned")])),
        "tar_absolute_symlink_then_file": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("d", "sym", box), ("d/x", "file", b"pwned")])),
        "tar_symlink_out": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [("esc", "sym", "../../secret")])),
        "tar_hardlink_out_then_overwrite": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("h", "hard", "../../secret"), ("h", "file", b"pwned")])),
        "tar_hardlink_absolute": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("h", "hard", os.path.join(box, "secret")), ("h", "file", b"pwned")])),
        "tar_hardlink_through_symlink": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("s", "sym", "."), ("h", "hard", "s/../../../secret"), ("h", "file", b"pwned")])),
        "tar_device": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [("null", "chr", None)])),
        "zip_absolute": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [(abs_target, "file", b"pwned")])),
        "zip_dotdot": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [("../../escaped", "file", b"pwned")])),
        "zip_chained_symlinks": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [
            ("sub/l", "sym", ".."), ("sub/l/l2", "sym", ".."), ("sub/l/l2/x", "file", b"pwned")])),
        "zip_symlink_then_file_through_it": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [
            ("d", "sym", "../.."), ("d/x", "file", b"pwned")])),
        "zip_symlink_out": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [("esc", "sym", "/etc")])),
        "zip_device": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [("null", "chr", b"")])),
        "tar_honest": ("untar", lambda d: _tar(os.path.join(d, "x.tar"), [
            ("pkg", "dir", None), ("pkg/lib", "dir", None), ("pkg/lib/libx.so.1", "file", b"ELF"),
            ("pkg/lib/libx.so", "sym", "libx.so.1"), ("pkg/bin", "dir", None),
            ("pkg/bin/tool", "sym", "../lib/libx.so"), ("pkg/top", "sym", ".."),
            ("pkg/lib/copy", "hard", "pkg/lib/libx.so.1"), ("pkg/bin/run", "suid", b"#!/bin/sh\n")])),
        "zip_honest": ("unzip", lambda d: _zip(os.path.join(d, "x.zip"), [
            ("pkg/lib/libx.so.1", "file", b"ELF"), ("pkg/lib/libx.so", "sym", "libx.so.1")])),
    }


def _state(box: str, skip: str) -> dict[str, str]:
    out = {}
    for dirpath, dirs, names in os.walk(box):
        if os.path.abspath(dirpath) == skip:
            dirs[:] = []
            continue
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            if os.path.abspath(p) == skip:
                continue
            if os.path.islink(p):
                out[p] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[p] = "dir"
    return out


def run_case(base: str, name: str) -> dict:
    """Run one case in a fresh BOX under `base`; return its outcome."""
    from scitq_app.storage import ActionError, apply_actions

    box = os.path.join(base, name)
    res = os.path.join(box, "a", "b", "res")
    os.makedirs(res)
    for p in (os.path.join(box, "secret"), os.path.join(box, "a", "secret")):
        with open(p, "wb") as f:
            f.write(SECRET)
    action, write = cases(box)[name]
    write(res)
    before = _state(box, res)
    refused, message = False, ""
    try:
        apply_actions(res, [action])
    except ActionError as e:
        refused, message = True, e.message
    after = _state(box, res)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    inside = {}
    for dirpath, dirs, names in os.walk(res):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            inside[os.path.relpath(p, res)] = {"link": os.readlink(p) if os.path.islink(p) else None,
                                              "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid}
    return {"refused": refused, "message": message, "changed_outside": changed, "inside": inside,
            "python": ".".join(map(str, sys.version_info[:3])), "data_filter": hasattr(tarfile, "data_filter")}


def main(argv: list[str]) -> int:
    base = argv[1]
    names = argv[2:] or list(cases(base))
    print(json.dumps({n: run_case(base, n) for n in names}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
