"""install.sh and the systemd units, checked without changing the machine.

Here install.sh runs only with --dry-run (or fails on its arguments before acting); each dry-run
test also checks that nothing it would write appeared. Real installs on fresh Debian machines with
systemd are in test_install_machines.py.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.system import need

from scitq_app.config import load_config

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "install.sh"
UNITS = ROOT / "systemd"
PYZ_DEST = "/usr/local/lib/scitq/scitq.pyz"
TOUCHED = ["/etc/scitq.conf", "/etc/scitq", "/etc/nginx/sites-available/scitq", "/usr/local/lib/scitq", "/usr/local/bin/scitq", "/var/lib/scitq",
           "/etc/systemd/system/scitq-server.service", "/etc/systemd/system/scitq-worker.service"]


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def snapshot() -> dict[str, bool]:
    return {p: os.path.lexists(p) for p in TOUCHED}


@pytest.fixture
def fake_pyz(tmp_path: Path) -> Path:
    path = tmp_path / "scitq.pyz"
    path.write_bytes(b"#!/usr/bin/env python3\n")
    return path


def written_config(stdout: str) -> str | None:
    """The /etc/scitq.conf a dry run would write (None when the file already exists)."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("[dry-run] write /etc/scitq.conf"):
            body = []
            for text in lines[i + 1:]:
                if not text.startswith("    "):
                    break
                body.append(text[4:])
            return "\n".join(body) + "\n"
    assert "keeping the existing /etc/scitq.conf" in stdout
    return None


def assert_valid_config(text: str, tmp_path: Path) -> None:
    """scitq itself accepts the file (unknown keys are fatal at start)."""
    path = tmp_path / "scitq.conf"
    path.write_text(text)
    load_config(str(path), env={})


def test_bash_syntax() -> None:
    done = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shellcheck() -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: tests/run.sh installs it (apt-get install shellcheck)"
    done = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_help() -> None:
    done = install("--help")
    assert done.returncode == 0
    for usage in ("install.sh server [--database URL | --sqlite]", "install.sh worker --server URL --join-token TOKEN",
                  "install.sh uninstall [--purge]"):
        assert usage in done.stdout


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_dry_run_server(fake_pyz: Path, tmp_path: Path) -> None:
    before = snapshot()
    done = install("--dry-run", "server", "--pyz", str(fake_pyz))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert snapshot() == before
    assert not [ln for ln in out.splitlines() if ln.startswith("+ ")], "a dry run executed something"
    assert ("user scitq exists" if _user_exists("scitq") else "[dry-run] useradd --system") in out
    assert "/var/lib/scitq" in out
    linked = os.path.islink("/usr/local/bin/scitq") and os.readlink("/usr/local/bin/scitq") == str(PYZ_DEST)
    assert ("/usr/local/bin/scitq -> " if linked else f"[dry-run] ln -sfn {PYZ_DEST} /usr/local/bin/scitq") in out
    assert "/usr/local/lib/scitq/releases/scitq-" in out
    for unit in ("scitq-server.service", "scitq-server@.service", "scitq-dispatcher.service", "scitq.target"):
        assert f"{UNITS / unit} /etc/systemd/system/{unit}" in out
    assert "scitq-worker.service" not in out
    assert "[dry-run] scitq db upgrade (as user scitq)" in out
    assert "[dry-run] scitq token create --role admin" in out
    assert "[dry-run] write /etc/nginx/sites-available/scitq" in out
    assert "proxy_pass http://scitq_api;" in out
    assert upstream_ports(out) == [5000]
    config = written_config(out)
    if config is not None:
        assert "[dry-run] write /etc/scitq.conf (mode 640, owner root:scitq)" in out
        assert "tls_certificate = /etc/scitq/tls/scitq.crt" in config
        assert "database = ********" in config  # the generated password is never shown
        assert_valid_config(config.replace("database = ********", "database = sqlite:///x.db"), tmp_path)


def upstream_ports(out: str) -> list[int]:
    """The ports of the API processes in the nginx site a dry run would write."""
    block = out.split("upstream scitq_api {", 1)[1].split("}", 1)[0]
    return [int(m) for m in re.findall(r"server 127\.0\.0\.1:(\d+);", block)]


def test_dry_run_server_with_three_api_processes_puts_them_all_behind_nginx(fake_pyz: Path) -> None:
    done = install("--dry-run", "server", "--api-processes", "3", "--pyz", str(fake_pyz))
    assert done.returncode == 0, done.stderr
    assert upstream_ports(done.stdout) == [5000, 5001, 5002]
    assert "least_conn;" in done.stdout and "upstream=$upstream_addr" in done.stdout
    # nginx keeps connections to them open (one per request cost them ~1.1x the CPU)
    block = done.stdout.split("upstream scitq_api {", 1)[1].split("}", 1)[0]
    assert "keepalive 64;" in block and "keepalive_timeout 60s;" in block
    assert 'proxy_set_header Connection "";' in done.stdout


@pytest.mark.parametrize("args, message", [
    (["server", "--sqlite", "--api-processes", "2"], "--api-processes 2 needs PostgreSQL: SQLite takes one API process (drop --sqlite)"),
    (["server", "--api-processes", "0"], "--api-processes must be a whole number from 1 to 16, not '0'"),
    (["server", "--api-processes", "17"], "--api-processes must be a whole number from 1 to 16, not '17'"),
    (["server", "--api-processes", "two"], "--api-processes must be a whole number from 1 to 16, not 'two'"),
    (["worker", "--api-processes", "2"], "--api-processes is for the server role"),
])
def test_bad_api_processes_are_refused_before_anything_is_done(fake_pyz: Path, args: list[str],
                                                                message: str) -> None:
    before = snapshot()
    done = install("--dry-run", *args, "--pyz", str(fake_pyz))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == f"install.sh: error: {message}"
    assert snapshot() == before


def test_dry_run_server_on_sqlite_says_it_is_for_trials(fake_pyz: Path, tmp_path: Path) -> None:
    done = install("--dry-run", "server", "--sqlite", "--pyz", str(fake_pyz))
    assert done.returncode == 0, done.stderr
    assert "create role scitq" not in done.stdout
    config = written_config(done.stdout)
    if config is not None:
        assert "SQLite is for trials" in done.stdout
        assert_valid_config(config.replace("database = ********", "database = sqlite:///x.db"), tmp_path)


def test_dry_run_worker(fake_pyz: Path, tmp_path: Path) -> None:
    before = snapshot()
    done = install("worker", "--dry-run", "--pyz", str(fake_pyz), "--server", "https://10.0.0.1/",
                   "--join-token", "s3cret-t0ken.ab12", "--name", "node-1", "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert snapshot() == before
    assert not [ln for ln in out.splitlines() if ln.startswith("+ ")], "a dry run executed something"
    assert "paramiko" not in out and "nginx" not in out and "postgresql" not in out
    assert "s3cret-t0ken" not in out + done.stderr  # secrets are masked even in a dry run
    assert "/var/lib/scitq/work" in out
    assert f"{UNITS / 'scitq-worker.service'} /etc/systemd/system/scitq-worker.service" in out
    assert "scitq-server.service" not in out and "db upgrade" not in out
    config = written_config(out)
    if config is not None:
        assert "[dry-run] write /etc/scitq.conf (mode 600, owner root:root)" in out
        assert "server = https://10.0.0.1\n" in config
        assert "join_token = ********\n" in config
        assert "name = node-1\nconcurrency = 4\n" in config
        assert_valid_config(config, tmp_path)


def test_dry_run_uninstall_keeps_data_unless_purged() -> None:
    kept = install("uninstall", "--dry-run")
    assert kept.returncode == 0, kept.stderr
    assert "rm -rf" not in kept.stdout and "dropdb" not in kept.stdout
    assert "kept /etc/scitq.conf" in kept.stdout


def test_dry_run_without_a_pyz_warns_but_shows_the_plan() -> None:
    done = install("--dry-run", "server")
    assert done.returncode == 0, done.stderr
    assert PYZ_DEST in done.stdout


@pytest.mark.parametrize("args, message", [
    ([], "missing role"),
    (["frobnicate"], "unknown role 'frobnicate': expected server, worker or uninstall"),
    (["server", "--bogus"], "unknown option '--bogus'"),
    (["server", "worker"], "give one role"),
    (["server", "--join-token", "x", "--dry-run"], "--join-token is for the worker role"),
    (["server", "--server", "https://h", "--dry-run"], "--server is for the worker role"),
    (["worker", "--sqlite", "--dry-run"], "--sqlite is for the server role"),
    (["worker", "--purge"], "--purge is for the uninstall role"),
    (["server", "--sqlite", "--database", "postgresql://u:p@h/db", "--dry-run"], "not both"),
    (["server", "--database", "mysql://x", "--dry-run"], "--database must look like postgresql://"),
    (["server", "--https-port", "70000", "--dry-run"], "--https-port must be a port number"),
    (["server", "--cert", "/etc/hostname", "--dry-run"], "give --cert and --key together"),
    (["worker", "--pyz"], "--pyz needs a value"),
    (["worker", "--token", "x"], "--token is gone: use --server URL --join-token TOKEN"),
    (["server", "--dry-run", "--pyz", "/nonexistent/scitq.pyz"], "--pyz: no such file"),
    (["worker", "--dry-run", "--server", "ftp://host", "--join-token", "t"], "--server must look like https://"),
    (["worker", "--dry-run", "--server", "https://h", "--join-token", "a b"], "--join-token contains"),
    (["worker", "--dry-run", "--server", "https://h", "--join-token", "t", "--concurrency", "x"],
     "--concurrency must be a whole number"),
])
def test_bad_arguments_fail_with_one_line(args: list[str], message: str) -> None:
    done = install(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: ") and message in lines[0], done.stderr


def test_a_worker_needs_a_server_and_a_join_token_when_it_has_no_config() -> None:
    if os.path.exists("/etc/scitq.conf"):
        pytest.skip("this machine has an /etc/scitq.conf: install.sh would keep it")
    done = install("worker", "--dry-run", "--server", "https://h")
    assert done.returncode == 2
    assert "--join-token TOKEN are needed" in done.stderr and "scitq worker join-token" in done.stderr


# --- systemd units ----------------------------------------------------------------------------------

def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text(), source=name)
    return parser


@pytest.mark.parametrize("name, exec_start, user", [
    ("scitq-server.service", f"/usr/bin/python3 {PYZ_DEST} server --no-dispatcher", "scitq"),
    ("scitq-dispatcher.service", f"/usr/bin/python3 {PYZ_DEST} dispatcher", "scitq"),
    ("scitq-worker.service", f"/usr/bin/python3 {PYZ_DEST} worker run", "root"),
])
def test_service_units(name: str, exec_start: str, user: str) -> None:
    unit = read_unit(name)
    service = unit["Service"]
    assert service["ExecStart"] == exec_start
    assert service["User"] == user
    assert service["WorkingDirectory"] == "/var/lib/scitq"
    assert service["Restart"] == "on-failure"
    assert "EnvironmentFile" not in service  # scitq reads /etc/scitq.conf itself
    expected_target = "multi-user.target" if name == "scitq-worker.service" else "scitq.target"
    assert unit["Install"]["WantedBy"] == expected_target
    if name != "scitq-worker.service":
        assert unit["Unit"]["PartOf"] == "scitq.target"


def test_target_groups_server_and_dispatcher() -> None:
    unit = read_unit("scitq.target")
    assert unit["Unit"]["Wants"].split() == ["scitq-server.service", "scitq-dispatcher.service"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_commands_in_units_exist() -> None:
    """Each ExecStart names a real scitq command (its --help works)."""
    from scitq_app.cli import run
    for name in ("scitq-server.service", "scitq-dispatcher.service", "scitq-worker.service"):
        argv = read_unit(name)["Service"]["ExecStart"].split()[2:]
        assert run([*argv, "--help"], env={}) == 0, name


def test_systemd_analyze_verify() -> None:
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    units = [str(UNITS / n) for n in ("scitq-server.service", "scitq-dispatcher.service",
                                      "scitq-worker.service", "scitq.target")]
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
