"""The provider contract: what scitq asks of a cloud (or of a pool of hosts) to recruit workers,
and how providers are declared and loaded.

A provider says which flavors it offers where and at what price, creates a machine from a flavor
in a region (reachable over SSH with this server's key, tagged with the server and the machine's
scitq name and idempotency key), lists the machines it bills that carry this server's tag, and
destroys one. Everything else — provisioning over SSH, jobs, retries, caps, recruiting policy —
is scitq's, the same for every provider.

Providers are declared in the YAML file `[recruit] providers` names (mode 600: it holds
credentials, which are never logged nor shown by the API or the CLI):

    - name: ovh-gra            # the name recruiters use
      type: openstack          # a built-in type, or a plugin: "package.module:Class"
      max_machines: 20         # optional: machines held at once, all regions
      max_machines_per_region: {GRA11: 10, "*": 5}   # optional: in one region ("*": the others);
                                                     # a number caps every region
      ...                      # the type's own settings (credentials, regions, image...)

A plugin type is any importable class taking (name, settings) and implementing `Provider`:
the tests' provider of nspawn machines is one.
"""
from __future__ import annotations

import importlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, Invalid
from ..models import Caps

TAG_SERVER = "scitq-server"   # which scitq server a machine belongs to
TAG_NAME = "scitq-name"       # its scitq name (the worker's)
TAG_KEY = "scitq-key"         # the idempotency key of the create that made it


@dataclass(frozen=True)
class Flavor:
    """A size of machine a provider offers in a region, and its price per hour."""
    provider: str
    name: str
    region: str
    cpu: int
    mem: float            # GiB
    disk: float = 0.0     # GiB
    gpu: int = 0
    price: float = 0.0    # per hour, in the provider's currency
    available: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "name": self.name, "region": self.region, "cpu": self.cpu,
                "mem": self.mem, "disk": self.disk, "gpu": self.gpu, "price": self.price,
                "available": self.available}


@dataclass(frozen=True)
class Instance:
    """A machine as its provider sees it."""
    id: str                      # the provider's own id: host keys and reconciliation use it
    name: str
    address: str | None          # where SSH reaches it, once known
    state: str                   # pending | running | stopped | gone
    tags: Mapping[str, str] = field(default_factory=dict)
    host_key: tuple[str, str] | None = None   # (type, base64) when the provider tells it: pinned
    ssh_user: str = "root"
    ssh_port: int = 22


class Provider:
    """The contract. Implementations raise ProviderError (retried later for 429 / 5xx-like
    trouble when `retry` is set) or ConfigError for what a person must fix."""

    name: str
    caps: Caps = Caps()   # set from the providers file by load_providers

    def flavors(self) -> list[Flavor]:
        raise NotImplementedError

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        """Start a machine; it may still be booting (state pending) when this returns."""
        raise NotImplementedError

    def get(self, instance_id: str) -> Instance | None:
        """The machine now, or None once it is gone."""
        raise NotImplementedError

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        """The machines carrying all these tags (this server's)."""
        raise NotImplementedError

    def destroy(self, instance_id: str) -> None:
        """Destroy a machine; destroying one already gone is not an error."""
        raise NotImplementedError

    def ssh_key(self) -> str | None:
        """The private key file scitq logs in with (None: the user's keys and agent)."""
        return None


_BUILT_IN: dict[str, str] = {  # type -> module:Class
    "openstack": "scitq_app.cloud.openstack:OpenStackProvider",
    "azure": "scitq_app.cloud.azure:AzureProvider",
    "ssh-pool": "scitq_app.cloud.pool:SshPoolProvider",
}


def load_providers(path: str) -> dict[str, Provider]:
    """The providers the YAML file at `path` declares, by name. ConfigError naming the file and
    the entry for anything wrong; credentials never appear in the messages."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        mode = os.stat(path).st_mode & 0o077
    except OSError as e:
        raise ConfigError(f"[recruit] providers: cannot read {path}: {e.strerror}") from None
    if mode & 0o007:
        raise ConfigError(f"[recruit] providers: {path} is readable by others; it holds credentials: "
                          f"chmod 600 {path}")
    import yaml  # type: ignore[import-untyped]
    try:
        entries = yaml.safe_load(text) or []
    except yaml.YAMLError as e:
        raise ConfigError(f"[recruit] providers: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(entries, list):
        raise ConfigError(f"[recruit] providers: {path} must hold a list of providers")
    out: dict[str, Provider] = {}
    for i, entry in enumerate(entries):
        where = f"{path}, entry {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry.get("type"):
            raise ConfigError(f"[recruit] providers: {where} needs a name and a type")
        name, kind = entry["name"], str(entry["type"])
        if name in out:
            raise ConfigError(f"[recruit] providers: {where}: the name {name!r} is used twice")
        target = _BUILT_IN.get(kind, kind)
        module_name, _, cls_name = target.partition(":")
        if not cls_name:
            raise ConfigError(f"[recruit] providers: {where}: unknown type {kind!r} (built-in: "
                              f"{', '.join(sorted(_BUILT_IN)) or 'none yet'}; or a plugin as package.module:Class)")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"[recruit] providers: {where}: cannot load {target}: {e}") from None
        settings = {k: v for k, v in entry.items() if k not in ("name", "type", *_CAPS)}
        provider = cls(name, settings)
        provider.caps = _caps(entry, where)
        out[name] = provider
    return out


_CAPS = ("max_machines", "max_machines_per_region")


def _caps(entry: Mapping[str, Any], where: str) -> Caps:
    def count(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"[recruit] providers: {where}: {key} must be a whole number, 0 or more")
        return value
    total = entry.get("max_machines")
    per = entry.get("max_machines_per_region")
    if per is not None and not isinstance(per, dict):
        per = {"*": count(per, "max_machines_per_region")}
    return Caps(machines=None if total is None else count(total, "max_machines"),
                per_region={str(k): count(v, f"max_machines_per_region[{k}]") for k, v in (per or {}).items()})


# --- flavor choice -----------------------------------------------------------------------
_FILTER = re.compile(r"^(cpu|mem|disk|gpu|price)\s*(>=|<=|==|>|<|=)\s*([0-9]+(?:\.[0-9]+)?)$")


def parse_filter(text: str) -> list[tuple[str, str, float]]:
    """`cpu>=16:mem>=64` -> [("cpu", ">=", 16.0), ("mem", ">=", 64.0)]; Invalid otherwise."""
    out = []
    for part in text.split(":"):
        m = _FILTER.match(part.strip())
        if m is None:
            raise Invalid(f"not a flavor filter: {part!r} (expected e.g. cpu>=16:mem>=64; keys cpu, mem, disk, "
                          "gpu, price)", field="flavor")
        out.append((m.group(1), "==" if m.group(2) == "=" else m.group(2), float(m.group(3))))
    return out


def matches(flavor: Flavor, conditions: Sequence[tuple[str, str, float]]) -> bool:
    for key, op, value in conditions:
        have = float(getattr(flavor, key))
        if not {">=": have >= value, "<=": have <= value, "==": math.isclose(have, value),
                ">": have > value, "<": have < value}[op]:
            return False
    return True


def choose(flavors: Sequence[Flavor], flavor: str, region: str | None) -> Flavor | None:
    """The flavor a recruiter asks for: by name, or the cheapest one matching a filter (ties:
    the smallest, then by name), among the available ones of `region` (any when None)."""
    pool = [f for f in flavors if f.available and (region is None or f.region == region)]
    if _FILTER.match(flavor.split(":")[0].strip()):
        conditions = parse_filter(flavor)
        pool = [f for f in pool if matches(f, conditions)]
        return min(pool, key=lambda f: (f.price, f.cpu, f.mem, f.name, f.region), default=None)
    named = [f for f in pool if f.name == flavor]
    return min(named, key=lambda f: (f.price, f.region), default=None)
