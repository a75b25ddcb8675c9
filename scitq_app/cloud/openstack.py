"""OpenStack (OVH Public Cloud, and any OpenStack with Keystone v3 and Nova) through
apache-libcloud: flavors, servers created from an image with this server's keypair and tagged
with metadata, listed by metadata, destroyed.

libcloud is imported here only, by the server and dispatcher (never a worker): Debian's
python3-libcloud or `pip install apache-libcloud`; it is not in the pyz (it brings requests).

Settings (in the providers file):

    - name: ovh-gra
      type: openstack
      auth_url: https://auth.cloud.ovh.net       # Keystone, without /v3
      username: user-xxxx
      password: ...
      project: 1234567890abcdef       # the project (tenant) id or name
      domain: Default                 # the user's and project's domain
      region: GRA11
      image: 0b3c...                  # the image id servers boot from (Debian 12)
      key_name: scitq                 # a keypair known to Nova, whose private key scitq has
      ssh_key: /var/lib/scitq/.ssh/id_ed25519
      ssh_user: debian                # the image's login user (sudo without password)
      network: ...                    # optional: a network id to attach
      prices: {b2-7: 0.0568}          # per hour by flavor name (Nova knows no prices)
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError, ProvisionError
from .libcloud_api import LibcloudApi
from .provider import Flavor, Instance, Provider

# libcloud's node states -> the contract's machine states
_STATES = {"running": "running", "pending": "pending", "rebooting": "pending", "starting": "pending",
           "stopped": "stopped", "stopping": "stopped", "suspended": "stopped", "paused": "stopped",
           "terminated": "gone", "error": "gone", "unknown": "pending"}
REQUIRED = ("auth_url", "username", "password", "project", "region", "image", "key_name")


class OpenStackProvider(Provider):
    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        missing = [k for k in REQUIRED if not settings.get(k)]
        if missing:
            raise ConfigError(f"[recruit] providers: {name}: openstack needs {', '.join(missing)}")
        self.name = name
        self.settings = dict(settings)
        self.region = str(settings["region"])
        self.prices = {str(k): float(v) for k, v in (settings.get("prices") or {}).items()}
        self._driver: Any = None
        self.api = LibcloudApi(name, [str(settings["password"])], "username, password, project and domain")

    def driver(self) -> Any:
        if self._driver is None:
            s = self.settings
            cls = self.api.driver_class("OPENSTACK")
            self._driver = cls(s["username"], s["password"], api_version="2.0", secure=s["auth_url"].startswith(
                "https"), ex_force_auth_url=s["auth_url"], ex_force_auth_version="3.x_password",
                ex_tenant_name=s["project"], ex_domain_name=s.get("domain") or "Default",
                ex_force_service_region=self.region)
        return self._driver

    def flavors(self) -> list[Flavor]:
        sizes = self.api.call("list flavors", self.driver().list_sizes) or []
        return [Flavor(provider=self.name, name=s.name, region=self.region, cpu=int(s.extra.get("vcpus") or
                       getattr(s, "vcpus", 0) or 0), mem=round(s.ram / 1024, 2), disk=float(s.disk or 0),
                       price=self.prices.get(s.name, float(s.price or 0))) for s in sizes]

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        from libcloud.compute.base import NodeImage
        d = self.driver()
        sizes = self.api.call("list flavors", d.list_sizes) or []
        size = next((s for s in sizes if s.name == flavor.name), None)
        if size is None:
            raise ProvisionError(f"provider {self.name}: no flavor {flavor.name} in {self.region}")
        image = NodeImage(id=str(self.settings["image"]), name=str(self.settings["image"]), driver=d)
        kw: dict[str, Any] = {"ex_keyname": self.settings["key_name"], "ex_metadata": dict(tags)}
        if self.settings.get("network"):
            from libcloud.compute.drivers.openstack import OpenStackNetwork
            kw["networks"] = [OpenStackNetwork(self.settings["network"], None, None, d)]
        node = self.api.call("create a server", d.create_node, name=name, size=size, image=image, **kw)
        if node is None:
            raise ProvisionError(f"provider {self.name}: the server {name} was not created (404)")
        return self._instance(node)

    def _instance(self, node: Any) -> Instance:
        # libcloud's NodeState from Nova's status (ACTIVE running, BUILD pending, ERROR error...)
        state = _STATES.get(str(node.state), "pending")
        address = (node.public_ips or node.private_ips or [None])[0]
        return Instance(id=node.id, name=node.name, address=address, state=state,
                        tags=dict(node.extra.get("metadata") or {}), ssh_user=self.settings.get("ssh_user") or "root")

    def get(self, instance_id: str) -> Instance | None:
        node = self.api.call("read a server", self.driver().ex_get_node_details, instance_id)
        return self._instance(node) if node is not None else None

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        nodes = self.api.call("list servers", self.driver().list_nodes) or []
        found = [self._instance(n) for n in nodes]
        return [i for i in found if all(i.tags.get(k) == v for k, v in tags.items())]

    def destroy(self, instance_id: str) -> None:
        d = self.driver()
        node = self.api.call("read a server", d.ex_get_node_details, instance_id)
        if node is not None:
            self.api.call("delete a server", d.destroy_node, node)

    def ssh_key(self) -> str | None:
        return self.settings.get("ssh_key") or None
