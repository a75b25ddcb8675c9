"""The CLI's cache of parsed usages (`cli/context.py: cached_docopt`) answers exactly what
docopt-ng answers, for every usage line of every command, from its first call (parsed and
stored) and from the cache after; what it cannot answer is docopt's own call and error."""
from __future__ import annotations

import pickle
from pathlib import Path

import docopt as docopt_ng
import pytest

from scitq_app.cli import COMMON_OPTIONS, __doc__ as TOP_DOC, commands
from scitq_app.cli.context import cached_docopt


def usage_lines(doc: str) -> list[list[str]]:
    """Each usage line of a doc as its words after `scitq` (continuation lines joined)."""
    body = doc.split("Usage:", 1)[1].split("\n\n", 1)[0]
    lines: list[str] = []
    for raw in body.splitlines():
        if raw.strip().startswith("scitq "):
            lines.append(raw.strip())
        elif raw.strip() and lines:
            lines[-1] += " " + raw.strip()
    return [line.split()[1:] for line in lines]


def argv_for(words: list[str]) -> list[str]:
    """The shortest argv a usage line accepts: its leading commands, then a value for each
    required argument up to the first optional or alternative part."""
    argv: list[str] = []
    for word in words:
        if word.startswith(("[", "(", "-")) or "|" in word:
            break
        argv.append("7" if word.startswith("<") else word)
    return argv


def cases() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, (doc, _) in commands().items():
        for words in usage_lines(doc):
            argv = argv_for(words)
            found.append((name, argv))
            if "[--json]" in words:
                found.append((name, argv + ["--json"]))
            found.append((name, argv + ["--no-such-option"]))   # docopt's error
            found.append((name, argv + ["extra", "words"]))      # unmatched
        found.append((name, [name]))                              # missing subcommand/argument
    return found


def outcome(call) -> tuple[str, object]:
    try:
        return "parsed", dict(call())
    except docopt_ng.DocoptExit as e:
        return "exit", str(e)


@pytest.mark.parametrize("name,argv", cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_cached_parse_equals_docopts(name: str, argv: list[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    doc = commands()[name][0].rstrip() + "\n" + COMMON_OPTIONS
    expected = outcome(lambda: docopt_ng.docopt(doc, argv=argv, default_help=False, version=None))
    first = outcome(lambda: cached_docopt(doc, argv, cache=str(tmp_path)))
    assert first == expected
    assert len(list(tmp_path.glob("usage-*.pickle"))) == 1
    if expected[0] == "parsed":  # a match is answered from the cache, without docopt's own parse
        monkeypatch.setattr(docopt_ng, "docopt", lambda *a, **k: pytest.fail("parsed again"))
    assert outcome(lambda: cached_docopt(doc, argv, cache=str(tmp_path))) == expected


def test_every_command_has_usage_lines_to_check() -> None:
    assert all(usage_lines(doc) for doc, _ in commands().values())
    assert len(cases()) > 150


@pytest.mark.parametrize("argv", [["task", "list"], ["-s", "http://x:1", "task", "list", "--json"],
                                  ["--log-level", "debug", "batch"], ["--version"], ["-t"], []])
def test_top_level_options_first_parse(argv: list[str], tmp_path: Path) -> None:
    expected = outcome(lambda: docopt_ng.docopt(TOP_DOC, argv=argv, default_help=False, version=None,
                                                options_first=True))
    for _ in range(2):
        assert outcome(lambda: cached_docopt(TOP_DOC, argv, options_first=True, cache=str(tmp_path))) == expected


def test_an_entry_for_another_text_or_a_damaged_one_is_parsed_again(tmp_path: Path) -> None:
    doc, _ = commands()["batch"]
    cached_docopt(doc, ["batch", "list"], cache=str(tmp_path))
    (entry,) = tmp_path.glob("usage-*.pickle")
    changed = doc.replace("scitq batch list", "scitq batch list [--newer]")
    assert dict(cached_docopt(changed, ["batch", "list", "--newer"], cache=str(tmp_path)))["--newer"] is True
    # a checksum collision: the entry named for `changed` holds another text, which is not used
    (collide,) = [p for p in tmp_path.glob("usage-*.pickle") if p != entry]
    collide.write_bytes(entry.read_bytes())
    assert dict(cached_docopt(changed, ["batch", "list", "--newer"], cache=str(tmp_path)))["--newer"] is True
    entry.write_bytes(b"\x80\x05garbage")
    assert dict(cached_docopt(doc, ["batch", "list"], cache=str(tmp_path)))["list"] is True
    assert pickle.loads(entry.read_bytes())[0] == doc  # parsed again and stored whole
