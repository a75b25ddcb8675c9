"""The `ssh-pool` provider: a lab's own servers, lent to recruiters and given back. Its
"machines" are existing SSH hosts; create lends a free host of the flavor asked (provisioning
then installs the worker on it as on any machine), destroy uninstalls the worker over SSH and
frees the host. Nothing is ever created or deleted.

Settings (in the providers file):

    - name: lab
      type: ssh-pool
      ssh_user: root                        # default root (or a user with password-less sudo)
      ssh_key: /var/lib/scitq/.ssh/id_ed25519   # default: the dispatcher's keys and agent
      state: /var/lib/scitq/ssh-pool-lab.json   # which host is lent to which machine (default
                                                # /var/lib/scitq/ssh-pool-NAME.json)
      hosts:
        - {address: 10.0.0.5, cpu: 32, mem: 128}        # required: address, cpu, mem (GiB)
        - {address: 10.0.0.6, port: 2222, flavor: big, region: lab, cpu: 32, mem: 128, disk: 500,
           gpu: 1, price: 0, ssh_user: admin, host_key: "ssh-ed25519 AAAA..."}

A host's `flavor` defaults to "host" and its `region` to "local"; hosts sharing a flavor name are
meant to be alike (the flavor shows the first one's sizes). A host's SSH key is pinned by
`host_key`, else learned at the first lending (trust on first use) and pinned from then on: it
is kept in the state file, with the lendings (JSON, mode 600, rewritten atomically under a file
lock, since the server and the dispatcher both load the providers).
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ..errors import ConfigError, ProvisionError, ScitqError
from .provider import Flavor, Instance, Provider
from .ssh import SshHost

# What destroy runs on a host: the uninstall of the install.sh inside the pyz the worker runs
UNINSTALL = r"""set -e
pyz=/usr/local/lib/scitq/scitq.pyz
if [ ! -e "$pyz" ]; then echo "no scitq installed here"; exit 0; fi
f=$(mktemp)
trap 'rm -f "$f"' EXIT
python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' "$pyz" \
    scitq_app/install/install.sh > "$f"
bash "$f" uninstall --purge
"""


@dataclass(frozen=True)
class PoolHost:
    address: str
    port: int
    flavor: Flavor
    ssh_user: str
    host_key: tuple[str, str] | None

    @property
    def id(self) -> str:
        return f"{self.address}:{self.port}"


class SshPoolProvider(Provider):
    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        where = f"[recruit] providers: {name} (ssh-pool)"
        self.ssh_user = str(settings.get("ssh_user") or "root")
        self.key = str(settings["ssh_key"]) if settings.get("ssh_key") else None
        self.state = str(settings.get("state") or f"/var/lib/scitq/ssh-pool-{name}.json")
        entries = settings.get("hosts")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{where}: needs hosts, a list of {{address, cpu, mem}}")
        self.hosts: dict[str, PoolHost] = {}
        for i, entry in enumerate(entries):
            host = self._host(entry, f"{where}, host {i + 1}")
            if host.id in self.hosts:
                raise ConfigError(f"{where}, host {i + 1}: {host.id} is listed twice")
            self.hosts[host.id] = host
        self._lock = threading.Lock()

    def _host(self, entry: Any, where: str) -> PoolHost:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str) or not entry["address"]:
            raise ConfigError(f"{where}: needs an address")

        def number(key: str, default: float | None = None, whole: bool = False) -> Any:
            value = entry.get(key, default)
            if value is None:
                raise ConfigError(f"{where}: needs {key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                    (whole and not isinstance(value, int)):
                raise ConfigError(f"{where}: {key} must be a {'whole ' if whole else ''}number, 0 or more")
            return value
        port = number("port", 22, whole=True)
        if not 0 < port < 65536:
            raise ConfigError(f"{where}: port must be between 1 and 65535")
        key: tuple[str, str] | None = None
        if entry.get("host_key") is not None:
            parts = str(entry["host_key"]).split()
            if len(parts) < 2:
                raise ConfigError(f"{where}: host_key must read TYPE BASE64, as in known_hosts")
            key = (parts[0], parts[1])
        flavor = Flavor(provider=self.name, name=str(entry.get("flavor") or "host"),
                        region=str(entry.get("region") or "local"), cpu=number("cpu", whole=True),
                        mem=float(number("mem")), disk=float(number("disk", 0)), gpu=number("gpu", 0, whole=True),
                        price=float(number("price", 0)))
        return PoolHost(entry["address"], port, flavor, str(entry.get("ssh_user") or self.ssh_user), key)

    @contextmanager
    def _books(self) -> Iterator[dict[str, Any]]:
        """The state file, locked: {"lent": {host id: {name, tags, since}}, "keys": {host id: [type, b64]}}."""
        with self._lock:
            try:
                lock = open(self.state + ".lock", "a")
            except OSError as e:
                raise ConfigError(f"provider {self.name}: cannot write its state next to {self.state}: "
                                  f"{e.strerror}") from None
            with lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    with open(self.state, encoding="utf-8") as f:
                        books = json.load(f)
                except FileNotFoundError:
                    books = {}
                except (OSError, ValueError) as e:
                    raise ConfigError(f"provider {self.name}: cannot read {self.state}: {e}") from None
                books.setdefault("lent", {})
                books.setdefault("keys", {})
                before = json.dumps(books, sort_keys=True)
                yield books
                if json.dumps(books, sort_keys=True) != before:
                    tmp = f"{self.state}.{os.getpid()}.tmp"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump(books, f, indent=1, sort_keys=True)
                    os.replace(tmp, self.state)

    def flavors(self) -> list[Flavor]:
        with self._books() as books:
            lent = set(books["lent"])
        out: dict[tuple[str, str], Flavor] = {}
        for host in self.hosts.values():
            f = host.flavor
            free = host.id not in lent
            seen = out.get((f.name, f.region))
            if seen is None:
                out[(f.name, f.region)] = Flavor(**{**f.to_dict(), "available": free})
            elif free and not seen.available:
                out[(f.name, f.region)] = Flavor(**{**seen.to_dict(), "available": True})
        return list(out.values())

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        with self._books() as books:
            free = [h for h in self.hosts.values() if h.id not in books["lent"]
                    and (h.flavor.name, h.flavor.region) == (flavor.name, flavor.region)]
            if not free:
                raise ProvisionError(f"provider {self.name}: every {flavor.name} host in {flavor.region} is lent",
                                     retry=True)
            host = free[0]
            books["lent"][host.id] = {"name": name, "tags": dict(tags), "since": time.time()}
            known = self._key(host, books)
        if known is None:
            try:
                known = self._learn(host)
            except ScitqError:
                with self._books() as books:
                    books["lent"].pop(host.id, None)
                raise
        return self._instance(host, name, dict(tags), known)

    def _key(self, host: PoolHost, books: Mapping[str, Any]) -> tuple[str, str] | None:
        recorded = books["keys"].get(host.id)
        return host.host_key or ((str(recorded[0]), str(recorded[1])) if recorded else None)

    def _learn(self, host: PoolHost) -> tuple[str, str]:
        """Trust on first use: the key the host offers now, recorded (another process may have
        recorded one meanwhile: that one stands, and this connection must have matched it)."""
        seen: list[tuple[str, str]] = []
        with SshHost.connect(host.address, host.port, host.ssh_user, key_file=self.key,
                             trust=lambda _h, kt, kb: seen.append((kt, kb)), host_id=f"{self.name}:{host.id}") as ssh:
            key = ssh.client.get_transport().get_remote_server_key()
            offered = (key.get_name(), key.get_base64())
        with self._books() as books:
            recorded = books["keys"].setdefault(host.id, list(offered))
        if tuple(recorded) != offered:
            raise ProvisionError(f"provider {self.name}: {host.id} offered another key than the one just recorded")
        return offered

    def _instance(self, host: PoolHost, name: str, tags: dict[str, str], key: tuple[str, str] | None) -> Instance:
        return Instance(id=host.id, name=name, address=host.address, state="running", tags=tags, host_key=key,
                        ssh_user=host.ssh_user, ssh_port=host.port)

    def get(self, instance_id: str) -> Instance | None:
        host = self.hosts.get(instance_id)
        with self._books() as books:
            lent = books["lent"].get(instance_id)
            key = self._key(host, books) if host else None
        if host is None or lent is None:
            return None
        return self._instance(host, lent["name"], lent["tags"], key)

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        with self._books() as books:
            found = [(self.hosts[hid], lent, self._key(self.hosts[hid], books)) for hid, lent in
                     sorted(books["lent"].items()) if hid in self.hosts
                     and all(lent["tags"].get(k) == v for k, v in tags.items())]
        return [self._instance(h, lent["name"], lent["tags"], key) for h, lent, key in found]

    def destroy(self, instance_id: str) -> None:
        """Give the host back clean: the worker uninstalled over SSH (its pinned key), then the
        host free. Unreachable: ProvisionError (retry), the host stays lent."""
        host = self.hosts.get(instance_id)
        with self._books() as books:
            if host is None or instance_id not in books["lent"]:
                return
            key = self._key(host, books)
        with SshHost.connect(host.address, host.port, host.ssh_user, key_file=self.key, pinned=key,
                             host_id=f"{self.name}:{host.id}") as ssh:
            status, out = ssh.run(UNINSTALL, timeout=300)
        if status != 0:
            last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
            raise ProvisionError(f"provider {self.name}: uninstalling the worker on {host.id} failed (exit "
                                 f"{status}): {last[0].strip()}", retry=True)
        with self._books() as books:
            books["lent"].pop(instance_id, None)

    def ssh_key(self) -> str | None:
        return self.key
