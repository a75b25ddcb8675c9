"""The library form: `pip wheel .` builds a wheel with every file of the package.

The wheel is built from a copy of the project (so no build/ or *.egg-info lands in the
working tree, and concurrent runs do not meet) and inspected as a zip, not installed.
"""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a source distribution of the project holds (besides scitq_app/).
PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("project")
    out = tmp_path_factory.mktemp("wheel")
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "scitq_app", src / "scitq_app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--disable-pip-version-check",
                           "-q", "-w", str(out)], cwd=src, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(out.glob("scitq-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def package_files() -> set[str]:
    return {"scitq_app/" + p.relative_to(ROOT / "scitq_app").as_posix()
            for p in (ROOT / "scitq_app").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and not p.name.startswith(".")}


def test_wheel_holds_the_sql_resources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {n for n in names if n.endswith(".sql")}
    assert "scitq_app/store/sql/queries.sql" in sql
    assert any(n.startswith("scitq_app/store/sql/migrations/") for n in sql)
    source_sql = {n for n in package_files() if n.endswith(".sql")}
    assert source_sql <= sql, f"missing from the wheel: {sorted(source_sql - sql)}"


def test_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    """A subpackage or data file left out of pyproject.toml's lists shows up here."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = package_files() - names
    assert not missing, f"pyproject.toml does not package: {sorted(missing)}"


def test_wheel_declares_the_scitq_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        entry_points = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points[0]).decode())
    assert parser["console_scripts"]["scitq"] == "scitq_app.cli:main"


def test_wheel_metadata_requires_python_310(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(metadata).decode()
    assert "Requires-Python: >=3.10" in text
