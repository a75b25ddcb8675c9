"""scitq.pyz promises any CPython >= 3.10: no newer syntax, no newer stdlib names.

The parse uses `feature_version=(3, 10)`, which rejects newer grammar (`except*`,
PEP 695 type parameters, ...). The name scan catches what parses fine but fails at
import or call time on 3.10: standard-library names added in 3.11 or later.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scitq_app"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

# module -> names it gained after 3.10 (the ones a queue, a server or a CLI might reach for)
NEWER_NAMES: dict[str, set[str]] = {
    "datetime": {"UTC"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member", "nonmember",
             "global_enum", "show_flag_values"},
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "get_overloads",
               "clear_overloads", "override", "TypeAliasType", "ReadOnly", "TypeIs"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "itertools": {"batched"},
    "logging": {"getLevelNamesMapping"},
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def newer_names(tree: ast.AST) -> list[str]:
    """`line: what` for every use of a post-3.10 stdlib name in a parsed module."""
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> module, for `import datetime as dt`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NEWER_MODULES or a.name.split(".")[0] in NEWER_MODULES:
                    found.append(f"{node.lineno}: import {a.name}")
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in NEWER_MODULES:
                found.append(f"{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if a.name in NEWER_NAMES.get(node.module, ()):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and node.attr in NEWER_NAMES.get(module, ()):
                found.append(f"{node.lineno}: {module}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            found.append(f"{node.lineno}: {node.id}")
        elif type(node).__name__ == "TryStar":  # except* (only exists in the 3.11+ AST)
            found.append(f"{node.lineno}: except*")
    return found


def test_the_package_has_sources() -> None:
    assert len(SOURCES) > 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_parses_as_python_310(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    try:
        ast.parse(source, filename=str(path), feature_version=(3, 10))
    except SyntaxError as e:
        pytest.fail(f"{path.relative_to(PACKAGE.parent)}:{e.lineno}: not Python 3.10 syntax: {e.msg}")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_uses_no_stdlib_name_newer_than_310(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = newer_names(tree)
    assert not found, f"{path.relative_to(PACKAGE.parent)} uses names CPython 3.10 lacks: {found}"


@pytest.mark.parametrize("snippet", [
    "import datetime\ndatetime.UTC", "from datetime import UTC", "import datetime as dt\ndt.UTC",
    "from enum import StrEnum", "import enum\nenum.StrEnum", "import tomllib", "from tomllib import loads",
    "from typing import Self", "import typing\ntyping.Self", "raise ExceptionGroup('x', [])",
    "try:\n    pass\nexcept* ValueError:\n    pass",
])
def test_the_scan_catches(snippet: str) -> None:
    if "except*" in snippet and sys.version_info < (3, 11):
        pytest.skip("this interpreter cannot parse except* at all")
    assert newer_names(ast.parse(snippet)), snippet


@pytest.mark.parametrize("snippet", [
    "from datetime import timezone\ntimezone.utc", "import enum\nclass S(str, enum.Enum): pass",
    "from typing import Optional", "UTC = 1\nprint(UTC)",
])
def test_the_scan_allows(snippet: str) -> None:
    assert not newer_names(ast.parse(snippet)), snippet


def test_except_star_is_refused_by_the_310_parse() -> None:
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass", feature_version=(3, 10))
