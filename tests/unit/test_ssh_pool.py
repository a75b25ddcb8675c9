"""The `ssh-pool` provider's books (no SSH: hosts here have their key pinned, so lending needs no
connection): its settings checked, flavors with their availability, each host lent to one machine
at a time even to two processes at once, listed by tags, and its state file private. Giving a
host back (the worker uninstalled over SSH): e2e/test_ssh_pool_machines.py."""
from __future__ import annotations

import os
import threading

import pytest

from scitq_app.cloud.pool import SshPoolProvider
from scitq_app.cloud.provider import TAG_SERVER, Flavor
from scitq_app.errors import ConfigError, ProvisionError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests"


def pool(tmp_path, hosts=None, **settings) -> SshPoolProvider:
    hosts = hosts if hosts is not None else [
        {"address": "10.0.0.5", "cpu": 8, "mem": 32, "host_key": KEY},
        {"address": "10.0.0.6", "cpu": 8, "mem": 32, "host_key": KEY},
        {"address": "10.0.0.7", "port": 2222, "flavor": "gpu", "region": "lab", "cpu": 16, "mem": 64, "gpu": 1,
         "price": 0.5, "ssh_user": "admin", "host_key": KEY}]
    return SshPoolProvider("lab", {"state": str(tmp_path / "lab.json"), "hosts": hosts, **settings})


HOST = Flavor("lab", "host", "local", 8, 32)
GPU = Flavor("lab", "gpu", "lab", 16, 64)


@pytest.mark.parametrize("hosts, says", [
    (None, "needs hosts"),
    ([{"cpu": 2, "mem": 4}], "host 1: needs an address"),
    ([{"address": "h", "mem": 4}], "host 1: needs cpu"),
    ([{"address": "h", "cpu": 2.5, "mem": 4}], "host 1: cpu must be a whole number, 0 or more"),
    ([{"address": "h", "cpu": 2, "mem": "lots"}], "host 1: mem must be a number, 0 or more"),
    ([{"address": "h", "cpu": 2, "mem": 4, "port": 70000}], "host 1: port must be between 1 and 65535"),
    ([{"address": "h", "cpu": 2, "mem": 4, "host_key": "AAAA"}], "host 1: host_key must read TYPE BASE64"),
    ([{"address": "h", "cpu": 2, "mem": 4}, {"address": "h", "port": 22, "cpu": 2, "mem": 4}],
     "host 2: h:22 is listed twice"),
])
def test_wrong_settings_name_the_provider_and_the_host(tmp_path, hosts, says):
    with pytest.raises(ConfigError) as e:
        SshPoolProvider("lab", {"state": str(tmp_path / "s.json"), **({"hosts": hosts} if hosts else {})})
    assert e.value.message.startswith("[recruit] providers: lab (ssh-pool)") and says in e.value.message


def test_flavors_say_whether_a_host_of_theirs_is_free(tmp_path):
    p = pool(tmp_path)
    assert {(f.name, f.region, f.cpu, f.gpu, f.price, f.available) for f in p.flavors()} == \
        {("host", "local", 8, 0, 0.0, True), ("gpu", "lab", 16, 1, 0.5, True)}
    i = p.create("w-1", GPU, {TAG_SERVER: "s"})
    assert (i.id, i.address, i.ssh_port, i.ssh_user, i.state, i.host_key) == \
        ("10.0.0.7:2222", "10.0.0.7", 2222, "admin", "running", tuple(KEY.split()[:2]))
    assert {(f.name, f.available) for f in p.flavors()} == {("host", True), ("gpu", False)}
    with pytest.raises(ProvisionError) as e:
        p.create("w-2", GPU, {TAG_SERVER: "s"})
    assert e.value.message == "provider lab: every gpu host in lab is lent" and e.value.data["retry"] is True


def test_a_host_is_lent_to_one_machine_at_a_time_even_to_two_processes_at_once(tmp_path):
    hosts = [{"address": f"10.0.1.{n}", "cpu": 2, "mem": 4, "host_key": KEY} for n in range(20)]
    server, dispatcher = pool(tmp_path, hosts), pool(tmp_path, hosts)  # each process loads the providers
    got: list[str] = []
    refused: list[str] = []

    def lend(p: SshPoolProvider, n: int) -> None:
        try:
            got.append(p.create(f"w-{n}", HOST, {TAG_SERVER: "s"}).id)
        except ProvisionError:
            refused.append(f"w-{n}")
    threads = [threading.Thread(target=lend, args=(server if n % 2 else dispatcher, n)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(h["address"] + ":22" for h in hosts), "each host lent once"
    assert len(refused) == 10
    assert os.stat(tmp_path / "lab.json").st_mode & 0o777 == 0o600


def test_lent_hosts_are_found_by_tags_and_id_and_an_unknown_one_is_no_trouble(tmp_path):
    p = pool(tmp_path)
    a = p.create("w-a", HOST, {TAG_SERVER: "s1", "scitq-name": "w-a"})
    p.create("w-b", HOST, {TAG_SERVER: "s2", "scitq-name": "w-b"})
    assert [i.name for i in p.list({TAG_SERVER: "s1"})] == ["w-a"]
    assert {i.name for i in pool(tmp_path).list({})} == {"w-a", "w-b"}, "what another process lent"
    got = p.get(a.id)
    assert got is not None and (got.name, got.tags["scitq-name"]) == ("w-a", "w-a")
    assert p.get("10.0.0.7:2222") is None, "not lent"
    assert p.get("10.9.9.9:22") is None, "not in the pool"
    p.destroy("10.0.0.7:2222")  # not lent: nothing to give back, and no SSH tried
    p.destroy("10.9.9.9:22")
    assert len(p.list({})) == 2
