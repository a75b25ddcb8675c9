"""scitq.pyz as shipped: built by build_zipapp.py, run by a bare interpreter.

Every run of the archive uses `-I -S`: no user site, no site-packages, no PYTHON*
variables, so whatever imports must come from the archive itself (a venv's packages
would otherwise hide a missing dependency).
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path


import pytest

from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build_zipapp.py"
ISOLATED = ["-I", "-S"]
# What the worker role must never load (design §3: role-specific dependencies are lazy).
SERVER_ONLY = ("paramiko", "pg8000", "waitress")

pytestmark = pytest.mark.slow


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_zipapp", BUILD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_") and k != "SOURCE_DATE_EPOCH"}
    env["SCITQ_CONFIG"] = os.devnull  # never the machine's /etc/scitq.conf
    env.update(extra)
    return env


def build(output: Path, **env: str) -> subprocess.CompletedProcess:
    """Run build_zipapp.py as a user would, in a subprocess."""
    return subprocess.run([sys.executable, str(BUILD), "--output", str(output)], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def pyz_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two builds of the same tree (the second from the wheel cache the first filled)."""
    out = tmp_path_factory.mktemp("pyz")
    paths = out / "first" / "scitq.pyz", out / "second" / "scitq.pyz"
    for path in paths:
        done = build(path)
        assert done.returncode == 0, done.stdout + done.stderr
    return paths


@pytest.fixture(scope="session")
def pyz(pyz_pair: tuple[Path, Path]) -> Path:
    return pyz_pair[0]


def run_pyz(pyz: Path, *args: str, python: str = sys.executable, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([python, *ISOLATED, str(pyz), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_code(pyz: Path, code: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run `code` with only the archive importable (sys.argv[1] is its path)."""
    return subprocess.run([python, *ISOLATED, "-c", code, str(pyz)], env=_env(), capture_output=True, text=True,
                          timeout=60)


def pythons() -> list[str]:
    """The interpreter running the tests, plus a CPython 3.10 when this machine has one."""
    found = [sys.executable]
    candidates = [shutil.which("python3.10"), "/usr/bin/python3.10",
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                   capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if probe.stdout.strip() == "True":  # a pyenv shim without that version prints an error instead
            found.append(candidate)
            break
    return found


# --- the build ------------------------------------------------------------------------------------

def test_two_builds_give_identical_bytes(pyz_pair: tuple[Path, Path]) -> None:
    first, second = (p.read_bytes() for p in pyz_pair)
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()


def test_archive_is_an_executable_zipapp(pyz: Path) -> None:
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env -S python3 -S\n")
    assert os.stat(pyz).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(pyz) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        main = zf.read("__main__.py").decode()
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos if not i.is_dir()} == {0o100644}
    assert "from scitq_app.cli import main" in main and "sys.exit(main())" in main


def test_archive_holds_no_machine_specific_file(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib", ".pyc")) or "__pycache__" in n]
    dist_info = [n for n in names if ".dist-info/" in n]
    assert not [n for n in dist_info if n.rsplit("/", 1)[-1] in ("RECORD", "INSTALLER", "REQUESTED",
                                                                 "direct_url.json", "WHEEL")]
    assert any(re.fullmatch(r"scramp-[\d.]+\.dist-info/METADATA", n) for n in names)
    assert not [n for n in names if n.startswith(("bin/", "_yaml/", "paramiko/", "pip/", "tabulate"))]


def test_archive_holds_scitq_and_its_sql(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        names = set(zf.namelist())
    sources = {("scitq_app/" + p.relative_to(ROOT / "scitq_app").as_posix())
               for p in (ROOT / "scitq_app").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
               and not p.name.endswith(builder.SKIPPED_SOURCE_SUFFIXES)}
    assert sources <= names
    assert any(n.startswith("scitq_app/store/sql/") and n.endswith(".sql") for n in names)


def test_source_date_epoch_sets_the_timestamps(tmp_path: Path) -> None:
    out = tmp_path / "scitq.pyz"
    done = build(out, SOURCE_DATE_EPOCH="1700000000")  # 2023-11-14 22:13:20 UTC
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(out) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    assert re.search(r"sha256 [0-9a-f]{64}", done.stdout)


def test_build_refuses_a_dist_that_excludes_python_310(tmp_path: Path) -> None:
    """A pinned wheel whose Requires-Python is >=3.11 fails the build with a clear message."""
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = cache / "needs311-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("needs311/__init__.py", "")
        zf.writestr("needs311-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: needs311\nVersion: 1.0\nRequires-Python: >=3.11\n")
    lock = tmp_path / "lock.txt"
    lock.write_text(f"needs311==1.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n")
    done = subprocess.run([sys.executable, str(BUILD), "--lock", str(lock), "--cache", str(cache), "--offline",
                           "--output", str(tmp_path / "x.pyz")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "needs311==1.0 requires Python >=3.11, which excludes 3.10" in done.stderr
    assert not (tmp_path / "x.pyz").exists()


@pytest.mark.parametrize("spec, version, expected", [
    (">=3.9", "3.10.0", True), (">=3.11", "3.10.0", False), ("!=3.0.*,!=3.1.*,>=2.7", "3.10.0", True),
    ("<3.13", "3.13.0", False), ("~=3.10", "3.14.0", True), ("~=3.10.1", "3.11.0", False),
    ("==3.10.*", "3.10.0", True), (">=3.9.0", "3.10.0", True), (">=1.4.5", "1.4.17", True),
])
def test_specifier_admits(spec: str, version: str, expected: bool) -> None:
    assert builder.specifier_admits(spec, version) is expected


@pytest.mark.parametrize("marker, python, expected", [
    ("python_version < '3.11'", "3.10.0", True), ("python_version < '3.11'", "3.12.0", False),
    ("platform_system == 'Windows'", "3.10.0", False), ("extra == 'test'", "3.10.0", False),
    ('implementation_name != "PyPy" and python_version >= "3.9"', "3.10.0", True),
])
def test_marker_applies(marker: str, python: str, expected: bool) -> None:
    assert builder.marker_applies(marker, python) is expected


# --- running it -----------------------------------------------------------------------------------

def test_isolated_flags_hide_every_site_package() -> None:
    """Guard for the tests below: with -I -S, the test venv's packages are invisible."""
    done = subprocess.run([sys.executable, *ISOLATED, "-c", "import bottle"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'bottle'" in done.stderr


def test_help_and_version_are_the_clis_own_texts(pyz: Path) -> None:
    """The archive answers them from its __main__.py, before loading the CLI: the same texts."""
    import io

    from scitq_app import __version__
    from scitq_app.cli import run
    for flag in ("--help", "-h", "--version"):
        out = io.StringIO()
        assert run([flag], out=out) == 0
        done = run_pyz(pyz, flag)
        assert (done.returncode, done.stdout, done.stderr) == (0, out.getvalue(), ""), flag
    assert out.getvalue() == f"scitq {__version__}\n"
    assert run_pyz(pyz, "--version", "x").returncode == 2, "anything else goes to the CLI"


def test_run_by_its_hash_bang_short_commands_skip_site_and_the_others_load_it(pyz: Path, tmp_path: Path) -> None:
    """`#!/usr/bin/env -S python3 -S`: the client commands start without `site` (a quarter of the
    interpreter's start); the services and server-host commands get it back, sitecustomize and
    site-packages included, as when the systemd units run `python3 scitq.pyz`."""
    (tmp_path / "sitecustomize.py").write_text("import os\nopen(os.environ['MARKER'], 'a').write('site\\n')\n")
    marker = tmp_path / "marker"
    env = _env(PYTHONPATH=str(tmp_path), MARKER=str(marker), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    def run_as_installed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(pyz), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    from scitq_app import __version__
    done = run_as_installed("--version")
    assert (done.returncode, done.stdout) == (0, f"scitq {__version__}\n"), done.stderr
    done = run_as_installed("task", "list", "-s", "http://127.0.0.1:9")
    assert (done.returncode, done.stderr) == (3, "scitq: cannot reach the scitq server at http://127.0.0.1:9: "
                                              "Connection refused\n")
    assert not marker.exists(), "a client command started without site"
    done = run_as_installed("db", "status", "--database", f"sqlite:///{tmp_path}/scitq.db")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "site\n", "db (a server-host command) started with site"


def test_yaml_runs_in_pure_python_mode(pyz: Path) -> None:
    done = run_code(pyz, "import sys; sys.path.insert(0, sys.argv[1]); import yaml; "
                         "print(yaml.__with_libyaml__, yaml.__file__.startswith(sys.argv[1]), "
                         "yaml.safe_load('a: [1, 2]'))")
    assert done.stdout.split(" ", 2) == ["False", "True", "{'a': [1, 2]}\n"], done.stderr


def test_worker_role_loads_no_server_dependency(pyz: Path) -> None:
    code = f"""
import json, sys
sys.path.insert(0, sys.argv[1])
import scitq_app.cli
scitq_app.cli.commands()
try:
    import scitq_app.worker
except ModuleNotFoundError as e:  # before the worker module exists, its link to the server
    if e.name != "scitq_app.worker":
        raise
    import scitq_app.client
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {list(SERVER_ONLY)!r})))
"""
    done = run_code(pyz, code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


class Server:
    """`scitq.pyz server` in a subprocess; readiness is its 'listening' line, not a poll."""

    def __init__(self, pyz: Path, python: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [python, *ISOLATED, str(pyz), "server", "--port", str(self.port), "--database",
             f"sqlite:///{workdir}/scitq.db"], cwd=workdir, env=_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Block until the server writes `text` on stderr (fails if it exits first)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(self.seen)}") from None
            if line is None:
                raise AssertionError(f"server exited ({self.proc.wait()}) before {text!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return

    def stop(self) -> int:
        """SIGTERM (a clean stop), then the exit code; the stderr lines stay readable."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
            assert self.proc.stderr is not None
            self.proc.stderr.close()


@pytest.fixture(params=pythons(), ids=lambda p: "python" + ("3.10" if "3.10" in p else "-current"))
def python(request: pytest.FixtureRequest) -> str:
    return request.param


def test_server_launch_list_and_worker_from_the_archive_alone(pyz: Path, python: str, tmp_path: Path) -> None:
    server = Server(pyz, python, tmp_path)
    try:
        server.wait_for("server listening on")
        launched = run_pyz(pyz, "-s", server.url, "launch", "--", "echo", "hi", python=python)
        assert launched.returncode == 0, launched.stderr
        task_id = int(launched.stdout.strip())
        listed = run_pyz(pyz, "-s", server.url, "task", "list", "--json", python=python)
        assert listed.returncode == 0, listed.stderr
        assert [(t["id"], t["command"], t["status"]) for t in json.loads(listed.stdout)] == \
            [(task_id, "echo hi", "pending")]
        # the CLI found the server's admin token by itself; the worker joins with a join token
        joined = run_pyz(pyz, "-s", server.url, "worker", "join-token", python=python)
        assert joined.returncode == 0, joined.stderr
        # the real worker role, run through the archive's __main__, reporting what it loaded
        worker = subprocess.run(
            [python, *ISOLATED, "-c", "import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             f"print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r}), code)",
             str(pyz), "-s", server.url, "worker", "run", "--once", "--name", "pyz-e2e", "--workdir",
             str(tmp_path / "work")], cwd=tmp_path, env=_env(SCITQ_WORKER_TASK_USER="root",
                                              SCITQ_WORKER_JOIN_TOKEN=joined.stdout.strip()), capture_output=True,
            text=True, timeout=120)
        assert worker.stdout.strip().splitlines()[-1] == "LOADED [] 0", worker.stdout + worker.stderr
        shown = run_pyz(pyz, "-s", server.url, "task", "show", str(task_id), "--json", python=python)
        assert json.loads(shown.stdout)["status"] == "succeeded", shown.stdout + shown.stderr
    finally:
        code = server.stop()
    assert code == 0, "".join(server.seen)  # SIGTERM is a clean stop
