"""scitq URIs: `SCHEME://path[|action...]`, parsed and validated without I/O.

SCHEME is an rclone remote name from the configuration the server hands to its
workers (s3, azure, gcs, sftp, ...) or one of the built-ins http, https, ftp,
file. A trailing `/` designates a folder. Resources may carry actions applied
after download: `|gunzip`, `|untar`, `|unzip`, `|mv:SUBDIR`.
A bad URI is refused when a task is submitted, not discovered on a worker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .errors import Invalid
from .roots import describe, lexically_under

BUILTIN_SCHEMES = frozenset({"http", "https", "ftp", "file"})
ACTIONS = frozenset({"gunzip", "untar", "unzip", "mv"})
MAX_LENGTH = 4096

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]*)://(.*)$", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Uri:
    raw: str
    scheme: str
    path: str            # everything after `://`, without actions
    actions: tuple[str, ...] = ()

    @property
    def folder(self) -> bool:
        return self.path.endswith("/")

    @property
    def builtin(self) -> bool:
        return self.scheme.lower() in BUILTIN_SCHEMES

    @property
    def location(self) -> str:
        """The URI without its actions."""
        return f"{self.scheme}://{self.path}"

    @property
    def basename(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def parse(value: object, field: str = "uri", *, allow_actions: bool = False,
          remotes: Iterable[str] | None = None, file_roots: Iterable[str] | None = None) -> Uri:
    """Parse and validate one URI; raise Invalid (naming `field`) when it is bad.

    `remotes`, when given, is the set of rclone remote names the server knows:
    a non-built-in scheme outside it is refused. `file_roots`, when given (the
    server's `[server] file_roots`; empty refuses every file:// URI), are the only
    folders a file:// URI may name. None (the CLI, `scitq fetch`) checks no roots.
    """
    if not isinstance(value, str):
        raise Invalid(f"must be a URI string, not {type(value).__name__}", field=field)
    if not value:
        raise Invalid("must not be empty", field=field)
    if len(value) > MAX_LENGTH:
        raise Invalid(f"is longer than {MAX_LENGTH} characters", field=field)
    if _CONTROL.search(value):
        if "\x00" in value:
            raise Invalid("contains a NUL byte", field=field)
        raise Invalid("contains a control character", field=field)
    m = _SCHEME.match(value)
    if not m:
        raise Invalid(f"{value!r} is not a URI: expected SCHEME://path (e.g. s3://bucket/file)", field=field)
    scheme, rest = m.group(1), m.group(2)
    parts = rest.split("|")
    path, action_texts = parts[0], parts[1:]
    if action_texts and not allow_actions:
        raise Invalid(f"{value!r}: |actions are only allowed on resources", field=field)
    actions = tuple(_check_action(a, value, field) for a in action_texts)
    if not path or path == "/":
        raise Invalid(f"{value!r} has no path after {scheme}://", field=field)
    _check_path(scheme, path, value, field)
    if remotes is not None and scheme.lower() not in BUILTIN_SCHEMES and scheme not in _as_set(remotes):
        raise Invalid(f"{value!r}: unknown storage remote {scheme!r} (not in the server's rclone config)",
                      field=field)
    if file_roots is not None and scheme.lower() == "file" and not lexically_under(path, file_roots):
        raise Invalid(f"{value!r}: file:// URIs must lie under one of the server's file roots "
                      f"({describe(file_roots, '[server] file_roots')})", field=field, rule="file_roots")
    return Uri(value, scheme, path, actions)


def _as_set(names: Iterable[str]) -> frozenset[str] | set[str]:
    # a bulk request's tasks share one frozenset (schema.LazyItems): not copied for each URI
    return names if isinstance(names, (set, frozenset)) else set(names)


def _check_path(scheme: str, path: str, value: str, field: str) -> None:
    lower = scheme.lower()
    if lower == "file":
        if not path.startswith("/"):
            raise Invalid(f"{value!r}: file URIs need an absolute path (file:///dir/file)", field=field)
    elif path.startswith("/"):
        raise Invalid(f"{value!r}: unexpected '/' after {scheme}://", field=field)
    authority = path.split("/", 1)[0]
    if "@" in authority and (lower in BUILTIN_SCHEMES or ":" in authority):
        raise Invalid(f"{value!r}: credentials must not be embedded in URIs; put them in the rclone config",
                      field=field)
    segments = path.split("/")
    if ".." in segments:
        raise Invalid(f"{value!r}: '..' path segments are not allowed", field=field)
    if "//" in path.rstrip("/")[1 if lower == "file" else 0:]:
        raise Invalid(f"{value!r}: empty path segment ('//')", field=field)


def _check_action(text: str, value: str, field: str) -> str:
    name, _, arg = text.partition(":")
    if name not in ACTIONS:
        raise Invalid(f"{value!r}: unknown action |{text} (known: |gunzip |untar |unzip |mv:DIR)", field=field)
    if name == "mv":
        if not arg or arg.startswith("/") or ".." in arg.split("/"):
            raise Invalid(f"{value!r}: |mv needs a relative folder without '..' (|mv:sub/dir)", field=field)
        return f"mv:{arg}"
    if arg:
        raise Invalid(f"{value!r}: |{name} takes no argument", field=field)
    return name


# --- the grammar parse() enforces, as a regular expression for the OpenAPI document -----------
# Python's re and ECMA read it alike; schemathesis generates valid and invalid URIs from it, so it
# must accept exactly what parse() accepts (for file:// under configured roots: a subset, see below).
_C = r"\x00-\x1f\x7f"
_BUILTIN_RE = "(?:[Hh][Tt][Tt][Pp][Ss]?|[Ff][Tt][Pp])"   # schemes compare case-insensitively
_FILE_RE = "[Ff][Ii][Ll][Ee]"
_REMOTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+.-]*")


def _segment(exclude: str = "") -> str:
    """A non-empty path segment other than `..` (characters other than / | controls and `exclude`)."""
    ch = f"[^/|{_C}{exclude}]"
    first = f"[^./|{_C}{exclude}]"
    return f"(?:{first}{ch}*|\\.(?:{first}{ch}*)?|\\.\\.{ch}+)"


def uri_pattern(*, allow_actions: bool = False, remotes: Iterable[str] | None = None,
                file_roots: Iterable[str] | None = None) -> str:
    """The regular expression of the URIs parse() accepts with these arguments. Under configured
    file roots it states `file:///ROOT/...` as written, a subset of what parse() accepts (which
    also reads `/ROOT/./x` or `//ROOT/x` as under ROOT)."""
    seg = _segment()
    rest = f"(?:/{seg})*/*"   # no empty segment but trailing slashes
    alternatives = [f"{_BUILTIN_RE}://{_segment('@')}{rest}"]   # no credentials before the first /
    if remotes is None:
        names = "[A-Za-z][A-Za-z0-9_+.-]*"
    else:
        usable = sorted(r for r in remotes if _REMOTE_NAME.fullmatch(r) and r.lower() not in BUILTIN_SCHEMES)
        names = "(?:" + "|".join(re.escape(r) for r in usable) + ")" if usable else ""
    if names:
        # a remote's authority may hold @ or : but not both (user:password@host)
        alternatives.append(f"{names}://(?:{_segment('@')}|{_segment(':')}){rest}")
    if file_roots is None:
        alternatives.append(f"{_FILE_RE}://(?:/(?:/?{seg}(?:/{seg})*/*|/+))")
    else:
        for root in file_roots:
            prefix = "".join("/" + re.escape(c) for c in root.split("/") if c not in ("", "."))
            alternatives.append(f"{_FILE_RE}://{prefix}{rest}" if prefix else
                                f"{_FILE_RE}://(?:/(?:/?{seg}(?:/{seg})*/*|/+))")
    actions = ""
    if allow_actions:
        arg = f"{seg}(?:/(?:{seg})?)*"
        actions = f"(?:\\|(?:(?:gunzip|untar|unzip):?|mv:{arg}))*"
    return "^(?:" + "|".join(alternatives) + ")" + actions + "$"


def parse_list(values: object, field: str, *, allow_actions: bool = False,
               remotes: Iterable[str] | None = None, file_roots: Iterable[str] | None = None) -> list[Uri]:
    """Parse a list of URIs (a single string counts as a one-element list)."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise Invalid("must be a list of URIs", field=field)
    return [parse(v, f"{field}[{i}]", allow_actions=allow_actions, remotes=remotes, file_roots=file_roots)
            for i, v in enumerate(values)]


def parse_output(value: object, field: str = "output", remotes: Iterable[str] | None = None,
                 file_roots: Iterable[str] | None = None) -> Uri:
    """An output is a folder: a missing trailing '/' is added."""
    uri = parse(value, field, remotes=remotes, file_roots=file_roots)
    if not uri.folder:
        uri = Uri(uri.raw + "/", uri.scheme, uri.path + "/")
    return uri


_SECTION = re.compile(r"^\s*\[([^\]\r\n]+)\]\s*$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")


def rclone_remotes(text: str) -> dict[str, str]:
    """The remotes an rclone config defines: name -> backend type ("" when unset).

    Reads only section headers and `type =` lines, so it never needs (or keeps)
    a secret. An encrypted rclone config defines no readable remote."""
    remotes: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1).strip()
            remotes.setdefault(current, "")
            continue
        k = _KEY.match(line)
        if current is not None and k and k.group(1).lower() == "type":
            remotes[current] = k.group(2)
    return remotes
