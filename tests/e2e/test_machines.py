"""The disposable machines the install.sh tests run on (tests/support/machines.py) do what they promise:
systemd boots cleanly, the machines reach each other and the host's bridge, the local apt repository
installs what install.sh needs without a route out, and a reboot keeps the disk."""
from __future__ import annotations

import shlex
import uuid

import pytest

from tests.support.machines import REPO_PACKAGES, Machine, Machines

pytestmark = [pytest.mark.xdist_group("machines"), pytest.mark.netns, pytest.mark.slow]

APT_ENV = "DEBIAN_FRONTEND=noninteractive"


@pytest.fixture(scope="module")
def pair(machines: Machines) -> list[Machine]:
    """Two machines booted in parallel, shared by this module's tests."""
    return machines.boot_many(["smoke-a", "smoke-b"])


def test_systemd_boots_to_multi_user_with_sshd(pair: list[Machine]) -> None:
    # What the install tests need: multi-user.target reached and sshd up. Not "no unit failed at
    # all": under a loaded CI host, systemd-tmpfiles-setup-dev (static /dev nodes, which nspawn makes
    # itself) was once seen failing without harm to anything the tests use.
    for m in pair:
        m.run("systemctl is-system-running --wait", check=False, timeout=120)
        r = m.run("systemctl is-active multi-user.target ssh.service", check=False)
        failed = m.run("systemctl --failed --no-legend --plain", check=False).stdout
        assert r.stdout.split() == ["active", "active"], f"{m.name}: {r.stdout}; failed units:\n{failed}"
        assert m.run("cat /proc/1/comm").stdout.strip() == "systemd"
        assert m.run("hostname").stdout.strip() == m.name


def test_machines_reach_each_other_and_the_bridge(pair: list[Machine], machines: Machines) -> None:
    a, b = pair
    assert a.addr != b.addr
    for src, dst in ((a, b.addr), (b, a.addr), (a, machines.bridge), (b, machines.bridge)):
        # a TCP connection proves more than a ping: sshd on the machines, the repo server on the bridge
        port = 22 if dst != machines.bridge else machines.port
        src.run(f"timeout 5 bash -c 'exec 3<>/dev/tcp/{dst}/{port}'")
    # and nothing beyond the bridge: the machines cannot download behind the tests' back
    r = a.run("ip route get 1.1.1.1", check=False)
    assert r.returncode != 0 and "unreachable" in r.stderr.lower(), r.stdout + r.stderr


def test_local_apt_repository_installs_offline(pair: list[Machine]) -> None:
    a, b = pair
    a.use_local_apt()
    assert a.read("/etc/apt/sources.list").strip().startswith("deb [trusted=yes] http://")
    assert a.run("ls -A /etc/apt/sources.list.d").stdout.strip() == ""
    a.run(f"apt-get update -q && {APT_ENV} apt-get install -y -q --no-install-recommends rclone nginx-light",
          timeout=600)
    assert a.run("rclone version").stdout.startswith("rclone v")
    assert a.run("systemctl is-active nginx").stdout.strip() == "active"
    # the whole list install.sh relies on installs too, so the repository lacks no dependency
    b.use_local_apt()
    b.run(f"apt-get update -q && {APT_ENV} apt-get install -y -q --no-install-recommends "
          f"{shlex.join(REPO_PACKAGES)}", timeout=900)
    status = b.run("dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' " + shlex.join(REPO_PACKAGES)).stdout
    assert all(line.startswith("ii ") for line in status.splitlines()), status


def test_reboot_keeps_the_disk(pair: list[Machine], tmp_path) -> None:
    a = pair[0]
    token = uuid.uuid4().hex
    local = tmp_path / "token"
    local.write_text(token)
    a.put(local, "/var/lib/scitq-test/token", mode=0o600)
    assert a.run("stat -c %a /var/lib/scitq-test/token").stdout.strip() == "600"
    boot_id = a.read("/proc/sys/kernel/random/boot_id").strip()
    a.stop()
    a.boot()
    assert a.read("/proc/sys/kernel/random/boot_id").strip() != boot_id, "the machine did not reboot"
    assert a.read("/var/lib/scitq-test/token") == token
    r = a.run("systemctl is-system-running --wait", check=False, timeout=120)
    assert r.stdout.strip() == "running", r.stdout
