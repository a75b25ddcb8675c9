"""File roots: the local folders `file://` URIs may name.

A task's `file://` input, resource or output is a path on the worker's host,
copied by a worker that may run as root. The server accepts such URIs only
under `[server] file_roots` (a lexical check: the server cannot see the
workers' file systems), and each worker checks them again against its own
`[worker] file_roots` after resolving symlinks (`resolve`). Both default to
no root at all, so every `file://` URI is refused until an admin names the
folders tasks may use. Paths are compared component by component, never as
string prefixes (`/data` does not contain `/database`).
"""
from __future__ import annotations

import os
from typing import Iterable

from .errors import ConfigError


def parse_roots(text: str, option: str) -> tuple[str, ...]:
    """The roots of a comma-separated option value, normalised (`/data/`, `/data/.` -> `/data`).
    Raises ConfigError naming `option` for a relative path or a `..` component."""
    roots: list[str] = []
    for raw in text.split(","):
        path = raw.strip()
        if not path:
            continue
        if not path.startswith("/"):
            raise ConfigError(f"{option}: {path!r} is not an absolute path (comma-separated absolute paths)")
        if ".." in path.split("/"):
            raise ConfigError(f"{option}: {path!r} holds a '..' component")
        norm = os.path.normpath(path)
        if norm.startswith("//"):  # POSIX keeps a leading '//'; it means '/' here
            norm = "/" + norm.lstrip("/")
        if norm not in roots:
            roots.append(norm)
    return tuple(roots)


def components(path: str) -> list[str]:
    """The components of an absolute path, `.` and empty ones dropped (`/a//b/./c/` -> [a, b, c])."""
    return [p for p in path.split("/") if p not in ("", ".")]


def contains(root: str, path: str) -> bool:
    """Whether `path` is `root` or below it, comparing whole components (no `..` resolution:
    callers refuse `..` before asking)."""
    r = components(root)
    return components(path)[:len(r)] == r


def lexically_under(path: str, roots: Iterable[str]) -> bool:
    """Whether an absolute path without `..` lies under one of `roots` as written (no I/O)."""
    if ".." in path.split("/"):
        return False
    return any(contains(root, path) for root in roots)


def describe(roots: Iterable[str], option: str) -> str:
    """`option` and its value, for error messages."""
    roots = list(roots)
    return f"{option}: {', '.join(roots)}" if roots else f"{option} is empty, so every file:// URI is refused"


def resolve(path: str, roots: Iterable[str]) -> str | None:
    """The real path (symlinks resolved) of `path` when it lies under the real path of one of
    `roots`, else None. A path that does not exist yet (an output folder) resolves through its
    existing parents, so a symlink anywhere on the way out of the roots is caught too."""
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    real = os.path.realpath(path)
    for root in roots:
        if contains(os.path.realpath(root), real):
            return real
    return None
