"""Which `container_options` a task may give its container engine.

A task's `container_options` are added to the worker's `create` (docker,
podman) or `exec` (apptainer) command line, which the worker runs as root: an
option that mounts a host path, adds a privilege or joins a host namespace
hands the host to whoever can submit a task. So options are a policy, checked
twice:

- the server keeps an **allow-list** (`[server] container_options`): a task
  whose options name anything else is refused at submission (422);
- each worker keeps a **deny-list** (`[worker] container_deny`) and fails a
  task whose options match it (class `staging`), whatever the server allowed.

Both lists are written as options: `--name` matches the option with any value,
`--name=GLOB` only the values matching the shell-style pattern (`--network=none`,
`--network=container:*`). Short aliases and `--opt=value` / `--opt value` /
`-oVALUE` / combined short flags (`-it`) are read the way docker's and
podman's parser reads them, so that an option cannot hide from a list behind
another spelling.
"""
from __future__ import annotations

import fnmatch
import functools
import re
import shlex
from dataclasses import dataclass
from typing import Iterable

# the defaults live in config.py with every option's (re-exported for the modules that apply them)
from .config import DEFAULT_ALLOW, DEFAULT_DENY  # noqa: F401
from .errors import ConfigError, Invalid

# Options that take a value (docker, podman, apptainer); the others are flags (or unknown).
_VALUED = frozenset("""
    add-host annotation attach authfile blkio-weight blkio-weight-device cap-add cap-drop cert-dir cgroup-parent
    cgroupns cgroups chrootdirs cidfile conmon-pidfile cpu-period cpu-quota cpu-rt-period cpu-rt-runtime cpu-shares
    cpus cpuset-cpus cpuset-mems decryption-key device device-cgroup-rule device-read-bps device-read-iops
    device-write-bps device-write-iops dns dns-option dns-search domainname entrypoint env env-file expose
    gidmap gpus group-add group-entry health-cmd health-interval health-retries health-start-period
    health-timeout hooks-dir hostname hostuser init-path ip ip6 ipc isolation kernel-memory label label-file
    link link-local-ip log-driver log-opt mac-address memory memory-reservation memory-swap memory-swappiness
    mount name network network-alias oom-score-adj os passwd-entry personality pid pidfile pids-limit platform
    pod pod-id-file preserve-fds publish pull restart rootfs runtime sdnotify seccomp-policy secret security-opt
    shm-size shm-size-systemd stop-signal stop-timeout storage-opt subgidname subuidname sysctl systemd timeout
    tmpfs ulimit umask unsetenv user userns uts uidmap variant volume volume-driver volumes-from workdir
    bind home add-caps drop-caps apply-cgroups overlay security pwd scratch app network-args hostname dns
""".split())

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")

# Short aliases (docker and podman create): letter -> long name.
_SHORT = {"a": "attach", "c": "cpu-shares", "e": "env", "h": "hostname", "i": "interactive", "l": "label",
          "m": "memory", "p": "publish", "P": "publish-all", "q": "quiet", "t": "tty", "u": "user",
          "v": "volume", "w": "workdir", "B": "bind"}

# One option, several names: lists and checks use the first.
_ALIASES = {"net": "network"}


class PolicyError(Invalid):
    """A container option is not allowed."""


@dataclass(frozen=True)
class Option:
    """One option as the engine reads it: its long name (no dashes), its value (None for a
    flag given no value) and how the task wrote it."""

    name: str
    value: str | None
    written: str


@dataclass(frozen=True)
class Rule:
    """`--name` (any value) or `--name=GLOB`."""

    name: str
    pattern: str | None = None

    def matches(self, option: Option) -> bool:
        if option.name != self.name:
            return False
        return self.pattern is None or fnmatch.fnmatchcase(option.value or "", self.pattern)

    def __str__(self) -> str:
        return f"--{self.name}" + (f"={self.pattern}" if self.pattern is not None else "")


def _canonical(name: str) -> str:
    return _ALIASES.get(name, name)


def parse_rules(text: str, where: str) -> tuple[Rule, ...]:
    """Read an allow- or deny-list (options separated by spaces or commas); ConfigError naming
    `where` when an entry is not `--name` or `--name=GLOB`."""
    rules = []
    for entry in text.replace(",", " ").split():
        name, eq, pattern = entry[2:].partition("=")
        if entry.startswith("--") and _NAME.fullmatch(name):
            rules.append(Rule(_canonical(name), pattern if eq else None))
        elif len(entry) == 2 and entry[0] == "-" and entry[1] in _SHORT:
            rules.append(Rule(_SHORT[entry[1]]))
        else:
            raise ConfigError(f"{where}: {entry!r} is not an option (write --name or --name=PATTERN)")
    return tuple(rules)


def split_options(text: str | None, field: str = "container_options", strict: bool = True) -> list[Option]:
    """The options in `text` as the engine would read them.

    `strict` (the server) refuses what is not an option (a positional argument,
    `--`, a valued option with no value): the worker puts the image after these
    options, so anything else would change what runs. Not strict (a worker
    scanning for denied options) reads an unknown option as a flag, so that the
    word after it is checked as an option too rather than skipped as its value."""
    if not text:
        return []  # most tasks: no shlex to build for each task of a bulk request
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise Invalid(f"cannot be split into arguments ({e})", field=field) from None
    out: list[Option] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--" or not word.startswith("-") or word == "-":
            if strict:
                raise PolicyError(f"{word!r} is not an option: container_options holds only options (the image "
                                  "and the command are fields of their own)", field=field)
            continue
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name = _canonical(name)
            if not eq and name in _VALUED:
                if i >= len(words):
                    if strict:
                        raise PolicyError(f"{word} needs a value", field=field)
                    value = ""
                else:
                    value = words[i]
                    i += 1
            out.append(Option(name, value if (eq or name in _VALUED) else None, word))
            continue
        # Short flags, possibly combined (-it) and the last with its value (-v/x:/y, -v=/x, -v /x).
        letters = word[1:]
        j = 0
        while j < len(letters):
            letter = letters[j]
            j += 1
            name = _SHORT.get(letter, letter)
            if name in _VALUED:
                value = letters[j:]
                if value.startswith("="):
                    value = value[1:]
                if not value:
                    if i >= len(words):
                        if strict:
                            raise PolicyError(f"-{letter} needs a value", field=field)
                    else:
                        value = words[i]
                        i += 1
                out.append(Option(name, value, f"-{letter}"))
                break
            out.append(Option(name, None, f"-{letter}"))
    return out


def _shown(option: Option) -> str:
    """The option as the task wrote it, with its value."""
    if option.value is None or "=" in option.written:
        return option.written
    return f"{option.written} {option.value}"


# --- the allow-list as a regular expression, for the OpenAPI document ----------------------------
# The server refuses container_options this pattern does not match (check_allowed), so the document
# states exactly what a server accepts. It reads options as split_options does, in the spellings
# people write: `--name VALUE`, `--name=VALUE`, `-e VALUE`, `-eVALUE`, values quoted with ' or "
# but no backslash escapes (one spelling less for an option to hide behind).
_SP = "[ \\t\\r\\n]"                                   # what shlex splits on
_CTRL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"             # refused in any text (schema._check_text)
_U = f"[^ \\t\\r\\n'\"\\\\{_CTRL}]"                    # an unquoted character of a word
_WORD = f"(?:{_U}|'[^'{_CTRL}]*'|\"[^\"\\\\{_CTRL}]*\")"
_U_NOEQ = f"[^= \\t\\r\\n'\"\\\\{_CTRL}]"


def _glob_re(pattern: str) -> str:
    """fnmatch's glob as a regex over unquoted characters."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(f"{_U}*")
        elif c == "?":
            out.append(_U)
        elif c == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _rule_re(rule: Rule) -> str:
    if rule.name == "env":
        value = f"{_WORD}*={_WORD}*"   # NAME=VALUE: a bare name would copy the worker's variable
    elif rule.pattern is not None:
        value = _glob_re(rule.pattern)
    else:
        value = f"{_WORD}+"
    longs = [rule.name] + [a for a, c in _ALIASES.items() if c == rule.name]
    shorts = [letter for letter, name in _SHORT.items() if name == rule.name]
    alternatives = []
    for name in longs:
        if rule.name in _VALUED:
            empty = "" if rule.pattern is not None or rule.name == "env" else "?"
            alternatives.append(f"--{re.escape(name)}(?:=(?:{value}){empty}|{_SP}+{value})")
        else:
            alternatives.append(f"--{re.escape(name)}" + (f"=(?:{value})" if rule.pattern is not None
                                                           else f"(?:={_WORD}*)?"))
    for letter in shorts:
        if rule.name in _VALUED and rule.pattern is None:
            # -eVALUE, -e=VALUE or -e VALUE; a value written right after the letter does not start
            # with '=' (split_options drops one '=' there)
            attached = f"{_U_NOEQ}{_WORD}*={_WORD}*" if rule.name == "env" else f"{_U_NOEQ}{_WORD}*"
            alternatives.append(f"-{letter}(?:={value}|{attached}|{_SP}+{value})")
        elif rule.pattern is None:
            alternatives.append(f"-{letter}")
    return "|".join(alternatives)


@functools.lru_cache(maxsize=8)
def _pattern(rules: tuple[Rule, ...]) -> str:
    return options_pattern(rules)


def options_pattern(allow: Iterable[Rule]) -> str:
    """The regular expression of the container_options an allow-list accepts."""
    rules = tuple(allow)
    if not rules:
        return f"^{_SP}*$"
    option = "(?:" + "|".join(_rule_re(r) for r in rules) + ")"
    return f"^{_SP}*(?:{option}(?:{_SP}+{option})*)?{_SP}*$"


def check_allowed(text: str | None, allow: Iterable[Rule], field: str = "container_options") -> None:
    """Refuse (PolicyError, a 422) the first option no rule of the server's allow-list matches."""
    rules = tuple(allow)
    for option in split_options(text, field):
        if option.name == "env" and option.value is not None and "=" not in option.value:
            # `-e NAME` copies the engine's own variable: the worker's environment is not the task's.
            raise PolicyError(f"-e/--env {option.value}: give NAME=VALUE (a bare name would copy the "
                              "worker's own variable)", field=field)
        if not any(rule.matches(option) for rule in rules):
            allowed = " ".join(str(r) for r in rules) or "none"
            raise PolicyError(f"{_shown(option)} is not allowed by this server's [server] container_options "
                              f"(allowed: {allowed})", field=field, option=option.written)
    # Every option is allowed: the text must also be written as the API document's pattern states (the
    # spellings above, values quoted with ' or " but no backslash), so that the document is exact.
    if text and not re.match(_pattern(rules), text):
        raise PolicyError("is not written as the API document's pattern states (options of [server] "
                          f"container_options: {' '.join(str(r) for r in rules) or 'none'}; values may be quoted, "
                          "without backslashes)", field=field)


def denied(text: str | None, deny: Iterable[Rule]) -> str | None:
    """The first option of `text` matching the worker's deny-list (as the task wrote it), or
    None. Text that cannot be split is reported as denied: the engine would not run it either."""
    try:
        options = split_options(text, strict=False)
    except Invalid:
        return text or ""
    rules = tuple(deny)
    for option in options:
        if any(rule.matches(option) for rule in rules):
            return _shown(option)
    return None
