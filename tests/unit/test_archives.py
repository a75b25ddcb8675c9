"""|untar and |unzip never write outside their folder, whatever the Python: every hostile case of
tests/support/archives.py, in this process and under Debian's /usr/bin/python3 (3.11.2, which has
no tarfile data filter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.archives import cases
from tests.support.system import need

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTILE = sorted(n for n in cases("/x") if not n.endswith("_honest"))
DEBIAN_PYTHON = "/usr/bin/python3"


def _run(python: str, base: str, names: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([python, "-m", "tests.support.archives", base, *names], capture_output=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _assert_refused(name: str, outcome: dict) -> None:
    assert outcome["refused"], f"{name}: extracted on Python {outcome['python']}: {outcome['inside']}"
    assert outcome["changed_outside"] == [], f"{name}: wrote outside on Python {outcome['python']}"
    assert "the archive is refused" in outcome["message"]
    extracted = {k for k in outcome["inside"] if not k.endswith((".tar", ".zip"))}
    # the first of two archives is honest on its own and stays extracted; the refused one leaves nothing
    expected = {"sub", "sub/l"} if name == "tar_chained_symlinks_across_two_archives" else set()
    assert extracted == expected, f"{name}: something was extracted before the refusal"


def _assert_honest(outcome: dict) -> None:
    inside = outcome["inside"]
    assert not outcome["refused"] and outcome["changed_outside"] == [], outcome
    assert inside["pkg/lib/libx.so"]["link"] == "libx.so.1" and inside["pkg/lib/libx.so.1"]["link"] is None


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(name, tmp_path):
    from tests.support.archives import run_case
    _assert_refused(name, run_case(str(tmp_path), name))


def test_honest_archives_keep_their_inner_symlinks_and_hard_links(tmp_path):
    from tests.support.archives import run_case
    tar = run_case(str(tmp_path), "tar_honest")
    _assert_honest(tar)
    inside = tar["inside"]
    assert inside["pkg/bin/tool"]["link"] == "../lib/libx.so" and inside["pkg/top"]["link"] == ".."
    assert inside["pkg/bin/run"]["mode"] & 0o7000 == 0, "set-id bits are stripped"
    assert inside["pkg/bin/run"]["uid"] == os.getuid(), "files belong to the extracting user, not the archive's"
    _assert_honest(run_case(str(tmp_path), "zip_honest"))


def test_the_checks_hold_under_debians_python_without_the_data_filter(tmp_path):
    need(os.path.exists(DEBIAN_PYTHON), "no /usr/bin/python3 on this machine")
    outcomes = _run(DEBIAN_PYTHON, str(tmp_path), [])
    some = next(iter(outcomes.values()))
    if some["python"] == ".".join(map(str, sys.version_info[:3])) and some["data_filter"]:
        pytest.skip(f"{DEBIAN_PYTHON} is this same Python with the data filter: nothing more to show")
    for name in HOSTILE:
        _assert_refused(name, outcomes[name])
    _assert_honest(outcomes["tar_honest"])
    run = outcomes["tar_honest"]["inside"]["pkg/bin/run"]
    assert run["mode"] & 0o7000 == 0 and run["uid"] == os.getuid()
    _assert_honest(outcomes["zip_honest"])
