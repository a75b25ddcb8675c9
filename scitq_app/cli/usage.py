"""Usage errors people can read: what was wrong, in the words they typed, and the usage
of the command they meant.

docopt reports a mismatch with its own objects (`found unmatched (duplicate?) arguments
[Argument(None, 'lst')]`). `explain` replaces that with one line naming the command
(`scitq task: unknown subcommand 'lst' (did you mean `list`?)`, `scitq task list: unknown
option --frob`) and attaches the usage lines of that command (only the verb's own lines when
the verb is known) as the error's `usage` data, which `cli.run` prints below the line.
This module is imported only on the error path and by `--help`.
"""
from __future__ import annotations

import re

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Sequence

_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def usage_lines(doc: str) -> list[str]:
    """The lines of the doc's `Usage:` section (continuation lines included)."""
    lines: list[str] = []
    inside = False
    for line in doc.splitlines():
        if line.strip().lower() == "usage:":
            inside = True
            continue
        if inside:
            if not line.strip():
                break
            lines.append(line)
    return lines


def verbs(doc: str, command: str) -> list[str]:
    """The subcommands a usage doc declares (`scitq task (pause | resume) ...` gives both)."""
    found: list[str] = []
    for line in usage_lines(doc):
        m = re.match(rf"\s*scitq {re.escape(command)} (\(([\w| -]+)\)|[\w-]+)", line)
        if not m:
            continue
        words = m.group(2).split("|") if m.group(2) else [m.group(1)]
        for w in (w.strip() for w in words):
            if w and w not in found and not w.startswith("-"):
                found.append(w)
    return found


def known_options(doc: str) -> set[str]:
    """Every option the doc mentions (its usage lines and option list)."""
    return set(_OPTION.findall(doc))


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice the user most likely meant (dashes aside: `--frob` is not close to `--from`)."""
    import difflib
    bare = {c.lstrip("-"): c for c in choices}
    match = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    if match:
        return bare[match[0]]
    prefixed = [c for c in choices if c.startswith(word)] if word else []
    return prefixed[0] if len(prefixed) == 1 else None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    match = closest(word, choices)
    return f" (did you mean `{match}`?)" if match else ""


def verb_usage(doc: str, command: str, verb: str | None) -> str:
    """The usage lines of one verb (with their continuation lines), else all of them."""
    lines = usage_lines(doc)
    if verb is None:
        return "\n".join(lines)
    picked: list[str] = []
    keep = False
    for line in lines:
        m = re.match(r"\s*scitq ", line)
        if m:
            head = line.split()[2:3]
            keep = bool(head) and (head[0] == verb or head[0].startswith("(") and
                                   verb in re.findall(r"[\w-]+", line.split(")")[0]))
        if keep:
            picked.append(line)
    return "\n".join(picked or lines)


def explain(doc: str, argv: Sequence[str], docopt_message: str) -> UsageError:
    """The UsageError for an argv (command first) docopt refused against `doc`."""
    command = argv[0]
    rest = list(argv[1:])
    names = verbs(doc, command)
    words = [a for a in rest if not a.startswith("-")]
    verb = words[0] if names and words and words[0] in names else None
    where = command + (f" {verb}" if verb else "")
    usage = verb_usage(doc, command, verb)
    known = known_options(doc)
    for arg in rest:
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-":
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and not any(k == flag or k.startswith(flag) for k in known):
                return UsageError(f"unknown option {flag}{_did_you_mean(flag, sorted(known))}",
                                  usage=usage, usage_of=where)
            if not flag.startswith("--") and flag[1:2].isalpha() and flag[:2] not in known:
                return UsageError(f"unknown option {flag}", usage=usage, usage_of=where)
    if names and verb is None:
        first = next((a for a in rest if not a.startswith("-")), None)
        if first is None:
            return UsageError(f"a subcommand is required ({', '.join(names)})", usage=usage, usage_of=where)
        return UsageError(f"unknown subcommand {first!r}{_did_you_mean(first, names)}", usage=usage, usage_of=where)
    first_line = docopt_message.strip().splitlines()[0] if docopt_message.strip() else ""
    m = re.match(r"(--?[\w-]+) (requires argument|must not have an argument|is not a unique prefix.*)", first_line)
    if m:
        what = {"requires argument": "needs a value", "must not have an argument": "takes no value"}.get(
            m.group(2), m.group(2))
        return UsageError(f"{m.group(1)} {what}", usage=usage, usage_of=where)
    if not (words[1:] if verb else words):
        return UsageError("missing arguments", usage=usage, usage_of=where)
    return UsageError(f"too many or misplaced arguments: {' '.join(rest)}", usage=usage, usage_of=where)


def explain_top(doc: str, argv: Sequence[str], docopt_message: str, commands: str) -> UsageError:
    """The UsageError for an argv the top-level usage refused (an option before the command)."""
    known = known_options(doc)
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and not any(k.startswith(flag) for k in known):
            return UsageError(f"unknown option {flag}{_did_you_mean(flag, sorted(known))}", usage=commands)
        if flag.startswith("-") and not flag.startswith("--") and flag[:2] not in known:
            return UsageError(f"unknown option {flag}", usage=commands)
    first_line = docopt_message.strip().splitlines()[0] if docopt_message.strip() else ""
    m = re.match(r"(--?[\w-]+) requires argument", first_line)
    if m:
        return UsageError(f"{m.group(1)} needs a value", usage=commands)
    return UsageError(f"these arguments do not fit: {' '.join(argv)}", usage=commands)


def unknown_command(word: str, commands: Sequence[str]) -> UsageError:
    return UsageError(f"unknown command {word!r}{_did_you_mean(word, sorted(commands))}; "
                      "`scitq --help` lists the commands")
