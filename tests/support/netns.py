"""Fake hosts on one machine: network namespaces on a private bridge (root only).

Each run picks a random name prefix and a random 10.x.y.0/24 subnet so several
test runs can share a machine. Only the namespaces and bridge made here are
removed at the end.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess


def available() -> bool:
    return os.getuid() == 0 and shutil.which("ip") is not None and shutil.which("iptables") is not None \
        and shutil.which("nsenter") is not None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


class Hosts:
    def __init__(self, count: int) -> None:
        self.prefix = "sq" + "".join(random.choices("abcdefghjkmnpqrstuvwxyz", k=4))
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.bridge = f"{self.prefix}br"
        self.names = [f"{self.prefix}{i}" for i in range(1, count + 1)]
        self.made: list[str] = []

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: where a server listens for the hosts."""
        return f"{self.subnet}.1"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{10 + self.names.index(name) + 1}"

    def up(self) -> "Hosts":
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append("bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for name in self.names:
            _run("ip", "netns", "add", name)
            self.made.append(name)
            _run("ip", "link", "add", f"{name}h", "type", "veth", "peer", "name", f"{name}n")
            _run("ip", "link", "set", f"{name}h", "master", self.bridge)
            _run("ip", "link", "set", f"{name}h", "up")
            _run("ip", "link", "set", f"{name}n", "netns", name)
            _run("ip", "-n", name, "addr", "add", f"{self.address(name)}/24", "dev", f"{name}n")
            _run("ip", "-n", name, "link", "set", f"{name}n", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")
        return self

    def prefix_cmd(self, name: str) -> list[str]:
        """Prefix a command with this to run it 'on' host `name`."""
        return ["nsenter", f"--net=/run/netns/{name}"]

    def cut(self, name: str) -> None:
        """Silently drop everything the host sends or receives (a partition, not a refusal)."""
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", name, "iptables", "-A", chain, "!", "-o" if chain == "OUTPUT" else "-i",
                 "lo", "-j", "DROP")

    def heal(self, name: str) -> None:
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", name, "iptables", "-F", chain)

    def down(self) -> None:
        for name in self.made:
            if name == "bridge":
                continue
            pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", name, check=False)
        if "bridge" in self.made:
            _run("ip", "link", "del", self.bridge, check=False)
        self.made.clear()
