"""The tests' cloud provider, loaded by the server through the same plugin mechanism as any
(`type: tests.support.nspawn_provider:NspawnProvider` in the providers file): its machines are
nspawn machines (Debian 12, systemd, sshd) booted through the shared recipe into network
namespaces the test session set aside, one per slot.

Settings: `slots` ([[machine name, namespace], ...]), `script` (nspawn-machine.sh), `env` (the
recipe's environment: NSPAWN_STATE, NETNS_*...), `key` (the private key the machines authorize),
`registry` (a JSON file of the machines it made, with their tags: what `list` reads, and what a
test reads to see nothing is left), `flavors` ([{name, region, cpu, mem, price}, ...]).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from scitq_app.cloud.provider import Flavor, Instance, Provider
from scitq_app.errors import ProvisionError


class NspawnProvider(Provider):
    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self.slots = [(str(a), str(b)) for a, b in settings["slots"]]
        self.script = str(settings["script"])
        self.env = {**os.environ, **{k: str(v) for k, v in settings["env"].items()}}
        self.key = str(settings["key"])
        self.registry = str(settings["registry"])
        self._flavors = [Flavor(provider=name, **f) for f in settings["flavors"]]
        self._lock = threading.Lock()

    @contextmanager
    def _machines(self) -> Iterator[dict[str, dict[str, Any]]]:
        with self._lock, open(self.registry + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.registry) as f:
                    machines = json.load(f)
            except FileNotFoundError:
                machines = {}
            yield machines
            with open(self.registry + ".tmp", "w") as f:
                json.dump(machines, f)
            os.replace(self.registry + ".tmp", self.registry)

    def _recipe(self, *args: str) -> str:
        r = subprocess.run(["bash", self.script, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise ProvisionError(f"nspawn-machine.sh {args[0]} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return r.stdout

    def flavors(self) -> list[Flavor]:
        return list(self._flavors)

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        # a slot (a namespace) is reused once free, but an id never is: a new machine, new host keys
        with self._machines() as machines:
            used = {m["slot"] for m in machines.values()}
            free = [s for s in self.slots if s[0] not in used]
            if not free:
                raise ProvisionError(f"provider {self.name}: no machine left (quota of {len(self.slots)})")
            slot, netns = free[0]
            instance_id = f"{slot}.{uuid.uuid4().hex[:8]}"
            machines[instance_id] = {"slot": slot, "name": name, "tags": dict(tags), "address": None,
                                     "state": "pending"}
        out = self._recipe("boot", slot, netns)
        address = out.strip().splitlines()[-1].split()[1]
        with self._machines() as machines:
            machines[instance_id].update(address=address, state="running")
            return self._instance(instance_id, machines[instance_id])

    def _instance(self, slot: str, m: Mapping[str, Any]) -> Instance:
        return Instance(id=slot, name=m["name"], address=m["address"], state=m["state"], tags=m["tags"])

    def get(self, instance_id: str) -> Instance | None:
        with self._machines() as machines:
            m = machines.get(instance_id)
        return self._instance(instance_id, m) if m and m["state"] != "dying" else None

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        with self._machines() as machines:
            return [self._instance(s, m) for s, m in machines.items()
                    if m["state"] != "dying" and all(m["tags"].get(k) == v for k, v in tags.items())]

    def destroy(self, instance_id: str) -> None:
        with self._machines() as machines:
            if instance_id not in machines or machines[instance_id]["state"] == "dying":
                return  # gone already, or going
            slot = machines[instance_id]["slot"]
        self._recipe("rm", slot)
        with self._machines() as machines:
            machines.pop(instance_id, None)

    def kill(self, instance_id: str) -> None:
        """Not the contract: what a test does to a machine behind scitq's back (a crash, a
        person at the cloud's console). It drops off the network at once and from the provider's
        books; then its disk is deleted (the recipe powers it off, or kills it)."""
        with self._machines() as machines:
            m = machines[instance_id]
            m["state"] = "dying"  # gone from the books; its slot stays taken until its disk is deleted
            netns = dict(self.slots)[m["slot"]]
            routes = self._ip(netns, "-4", "route", "show", "default").splitlines()
            self._ip(netns, "link", "set", "eth0", "down")
        self._recipe("rm", m["slot"])
        # the recipe could not power it off (no network): it killed systemd-nspawn, whose container
        # lives on in the namespace (its sshd holding port 22 of the slot's address); kill what is
        # left there, then bring the link back up with the routes the down took away, else the next
        # machine booted in this slot never answers
        self._ip(netns, "link", "set", "eth0", "up")
        for pid in subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                                  timeout=30).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for route in routes:
            self._ip(netns, "-4", "route", "replace", *route.split())
        with self._machines() as machines:
            machines.pop(instance_id, None)

    @staticmethod
    def _ip(netns: str, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", netns, "ip", *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def ssh_key(self) -> str | None:
        return self.key
