"""The CLI's bytecode cache (scitq_app/bytecode.py) with a real scitq.pyz: modules from
the archive are compiled once per user and read back after, resources still come from the
archive, and the cache is left alone when it is not the user's own or bytecode is off.
Figures: bench/startup.py."""
from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("startup") / "scitq.pyz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}
    done = subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "--output", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def run(pyz: Path, cache: Path, *args: str, isolated: bool = True, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCITQ_", "PYTHON"))}
    base.update(SCITQ_CONFIG=os.devnull, XDG_CACHE_HOME=str(cache), **env)
    flags = ["-I", "-S"] if isolated else ["-S"]
    return subprocess.run([sys.executable, *flags, str(pyz), *args], env=base, capture_output=True, text=True,
                          timeout=60, cwd=str(cache.parent))


def entries(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in cache.rglob("*.pyc")}


def test_modules_are_compiled_once_then_read_from_the_cache(pyz, tmp_path):
    cache = tmp_path / "cache"
    first = run(pyz, cache, "config", "show", "--json")
    assert first.returncode == 0, first.stderr
    made = entries(cache)
    assert {"scitq_app.cli.context.pyc", "scitq_app.config.pyc", "docopt.pyc", "scitq_app.cli.admin.pyc"} <= set(made)
    assert all(p.parent == made["docopt.pyc"].parent for p in made.values())
    assert made["docopt.pyc"].parent.parent.name == sys.implementation.cache_tag
    assert oct(made["docopt.pyc"].parent.stat().st_mode & 0o777) == "0o700"
    again = run(pyz, cache, "config", "show", "--json")
    assert (again.returncode, again.stdout) == (0, first.stdout), again.stderr
    # what runs the second time is the cached code: a planted entry is what executes
    assert run(pyz, cache, "task", "lst").returncode == 2  # imports cli.usage, now cached
    entry = entries(cache)["scitq_app.cli.usage.pyc"]
    entry.write_bytes(marshal.dumps(compile("raise SystemExit('from the cache')", "planted", "exec")))
    planted = run(pyz, cache, "task", "lst")
    assert planted.stderr.strip() == "from the cache", planted.stderr


def test_a_new_archive_replaces_the_entries_of_the_old_one(pyz, tmp_path):
    cache = tmp_path / "cache"
    copy = tmp_path / "scitq.pyz"
    copy.write_bytes(pyz.read_bytes())
    assert run(copy, cache, "task", "lst").returncode == 2
    old = {p.parent for p in entries(cache).values()}
    os.utime(copy, (1_900_000_000, 1_900_000_000))   # as a new release copied over it
    assert run(copy, cache, "task", "lst").returncode == 2
    new = {p.parent for p in entries(cache).values()}
    assert len(old) == len(new) == 1 and old != new and not any(d.exists() for d in old)


def test_services_and_server_host_commands_leave_the_home_alone(pyz, tmp_path):
    cache = tmp_path / "cache"
    r = run(pyz, cache, "db", "status", "--database", f"sqlite:///{tmp_path}/scitq.db")
    assert r.returncode == 0, r.stderr
    r = run(pyz, cache, "worker", "run", "--once", "-s", "http://127.0.0.1:9")
    assert r.returncode != 0
    assert not cache.exists(), "db, token, server, dispatcher and worker run do not write the cache"


def test_no_cache_when_bytecode_is_off_or_the_directory_is_not_private(pyz, tmp_path):
    cache = tmp_path / "cache"
    r = run(pyz, cache, "task", "lst", isolated=False, PYTHONDONTWRITEBYTECODE="1")
    assert r.returncode == 2 and not cache.exists()
    (cache / "scitq").mkdir(parents=True)
    (cache / "scitq").chmod(0o777)
    r = run(pyz, cache, "task", "lst")
    assert r.returncode == 2 and r.stderr.startswith("scitq task: unknown subcommand 'lst'"), r.stderr
    assert entries(cache) == {}, "a directory others can write to is not trusted"


def test_the_cli_package_and_its_parsed_usages_come_from_the_cache(pyz, tmp_path):
    """__main__.py installs the cache before the CLI's package loads (only scitq_app/__init__.py and
    scitq_app/bytecode.py are compiled at every start), and each command's usage is parsed once."""
    cache = tmp_path / "cache"
    first = run(pyz, cache, "task", "list", "--json", "-s", "http://127.0.0.1:9")
    assert first.returncode == 3, first.stderr
    made = entries(cache)
    assert {"scitq_app.cli.pyc", "scitq_app.cli.tasks.pyc"} <= set(made)
    assert not {"scitq_app.pyc", "scitq_app.bytecode.pyc"} & set(made)
    usages = sorted(made["scitq_app.cli.pyc"].parent.glob("usage-*.pickle"))
    assert len(usages) == 2, "the top-level usage and task's"
    for entry in usages:  # damaged entries: parsed again, same answer
        entry.write_bytes(b"not a pickle")
    again = run(pyz, cache, "task", "list", "--json", "-s", "http://127.0.0.1:9")
    assert (again.returncode, again.stderr) == (3, first.stderr)
    assert all(entry.read_bytes() != b"not a pickle" for entry in usages)
