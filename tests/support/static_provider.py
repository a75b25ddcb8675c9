"""A provider that offers flavors and creates nothing: for tests of the recruiting API and
policy where no machine must ever be made (`type: tests.support.static_provider:StaticProvider`,
settings: `flavors`)."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from scitq_app.cloud.provider import Flavor, Instance, Provider
from scitq_app.errors import ProvisionError


class StaticProvider(Provider):
    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        self._flavors = [Flavor(provider=name, **f) for f in settings.get("flavors", [])]

    def flavors(self) -> list[Flavor]:
        return list(self._flavors)

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        raise ProvisionError(f"provider {self.name} creates no machine (a test provider)")

    def get(self, instance_id: str) -> Instance | None:
        return None

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        return []

    def destroy(self, instance_id: str) -> None:
        return None


def providers_file(path: str, name: str = "none") -> str:
    """Write a providers file declaring one StaticProvider (mode 600); return its path."""
    with open(path, "w") as f:
        json.dump([{"name": name, "type": "tests.support.static_provider:StaticProvider",
                    "flavors": [{"name": "s4", "region": "r1", "cpu": 4, "mem": 16, "price": 0.2},
                                {"name": "b16", "region": "r1", "cpu": 16, "mem": 64, "price": 0.9}]}], f)
    os.chmod(path, 0o600)
    return path
