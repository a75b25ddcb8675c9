"""The README documents what the code offers: every configuration option and every command."""
from __future__ import annotations

import os
import re

from scitq_app.cli import commands
from scitq_app.config import OPTIONS, env_name

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_the_readme_starts_with_the_run_and_the_test_commands():
    head = _readme().split("---", 1)[0]
    assert "./quickstart.sh" in head and "tests/run.sh" in head


def test_every_configuration_option_is_in_the_readme_table_with_its_variable():
    text = _readme()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `\[(\w+\] \w+)`.*$", text, flags=re.M)}
    for (section, key) in OPTIONS:
        row = rows.get(f"{section}] {key}")
        assert row is not None, f"[{section}] {key} is missing from README's configuration table"
        assert env_name(section, key) in row


def test_every_command_is_mentioned_in_the_readme():
    text = _readme()
    for command in commands():
        assert f"scitq {command}" in text or f"`{command}`" in text, command
