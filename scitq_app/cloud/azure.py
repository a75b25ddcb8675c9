"""Azure (Resource Manager) through apache-libcloud's ARM driver: VM sizes of a location, VMs
created in a resource group from a Marketplace image with this server's SSH public key, a NIC
(and a public IP) of their own and a managed OS disk deleted with them, tagged; listed by tags;
destroyed with their NIC, disk and public IP.

libcloud is imported here only, by the server and dispatcher (never a worker): Debian's
python3-libcloud or `pip install apache-libcloud`; it is not in the pyz.

Settings (in the providers file):

    - name: azure-we
      type: azure
      tenant_id: 0000...              # the service principal's tenant (directory)
      subscription_id: 0000...
      client_id: 0000...              # the service principal (application) id
      client_secret: ...
      resource_group: scitq           # where the VMs, NICs and IPs are made
      region: westeurope              # the location
      network: scitq-vnet             # a virtual network of the resource group
      subnet: default                 # optional, default "default"
      image: Debian:debian-12:12:latest   # a Marketplace URN publisher:offer:sku:version
      ssh_user: scitq                 # the admin user made on the VM (password-less sudo), default scitq
      ssh_public_key: /var/lib/scitq/.ssh/id_ed25519.pub
      ssh_key: /var/lib/scitq/.ssh/id_ed25519
      public_ip: true                 # optional, default true: false when the dispatcher is in the network
      disk: 64                        # optional: OS disk size in GiB
      prices: {Standard_D4s_v5: 0.21} # per hour by size (the ARM sizes API has no prices)

A VM Azure shows deallocated (what it does to an evicted spot VM, or a person stopping it) is
reported `evicted`: its worker's tasks are requeued without spending a retry and the VM is
destroyed. libcloud's driver makes regular (not spot) VMs. `cloud_environment` (a libcloud
environment name such as AzureChinaCloud, or a dict of endpoints) selects another cloud.

libcloud signs in (client credentials against Azure AD, the token renewed before it expires),
lists sizes and creates the public IP, NIC and VM. Listing, reading and destroying go through its
connection with scitq's own requests: Debian's libcloud (3.4) reads only the first page of VMs and
leaves a managed disk behind, and a destroy must be resumable by name after a crash (VM, then
NIC `NAME-nic`, OS disk `NAME`, public IP `NAME-ip`, each already gone being no error).
"""
from __future__ import annotations

import time
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigError, ProvisionError
from .libcloud_api import LibcloudApi
from .provider import Flavor, Instance, Provider

# Resource Manager API versions of the requests scitq makes itself (the documented stable ones)
VM_API = "2023-03-01"
NETWORK_API = "2023-05-01"
DISK_API = "2023-04-02"
REQUIRED = ("tenant_id", "subscription_id", "client_id", "client_secret", "resource_group", "region", "network",
            "image", "ssh_public_key")


def vm_state(statuses: list[dict[str, Any]]) -> str:
    """A VM's instance-view statuses -> the contract's machine state."""
    codes = [str(s.get("code", "")) for s in statuses]
    if any(c == "ProvisioningState/deleting" or c.startswith("ProvisioningState/failed") for c in codes):
        return "gone"
    power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), None)
    return {"running": "running", "deallocated": "evicted", "deallocating": "evicted",
            "stopped": "stopped", "stopping": "stopped"}.get(power or "", "pending")


class AzureProvider(Provider):
    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        missing = [k for k in REQUIRED if not settings.get(k)]
        if missing:
            raise ConfigError(f"[recruit] providers: {name}: azure needs {', '.join(missing)}")
        urn = str(settings["image"]).split(":")
        if len(urn) != 4 or not all(urn):
            raise ConfigError(f"[recruit] providers: {name}: image must be a Marketplace URN "
                              "publisher:offer:sku:version (e.g. Debian:debian-12:12:latest)")
        self.name = name
        self.settings = dict(settings)
        self.region = str(settings["region"]).lower().replace(" ", "")
        self.group = str(settings["resource_group"])
        self.prices = {str(k): float(v) for k, v in (settings.get("prices") or {}).items()}
        self.poll_wait = float(settings.get("poll_wait", 10))          # seconds between checks that a VM is gone
        self.delete_timeout = float(settings.get("delete_timeout", 900))  # then the give-back is retried later
        self._driver: Any = None
        self.api = LibcloudApi(name, [str(settings["client_secret"])], "tenant_id, client_id, client_secret and "
                               "the service principal's role on the subscription")

    @property
    def ssh_user(self) -> str:
        return str(self.settings.get("ssh_user") or "scitq")

    def ssh_key(self) -> str | None:
        return self.settings.get("ssh_key") or None

    def driver(self) -> Any:
        if self._driver is None:
            s = self.settings
            kw = {"cloud_environment": s["cloud_environment"]} if s.get("cloud_environment") else {}
            # the driver signs in as it is made
            driver = self.api.call("sign in to Azure AD", self.api.driver_class("AZURE_ARM"), s["tenant_id"],
                                   s["subscription_id"], s["client_id"], s["client_secret"], region=self.region, **kw)
            if driver is None:
                raise ConfigError(f"provider {self.name}: Azure AD does not know the tenant {s['tenant_id']} (404)")
            self._driver = driver
        return self._driver

    def _request(self, what: str, path: str, api: str, method: str = "GET",
                 params: Mapping[str, str] | None = None) -> Any:
        """One Resource Manager request through libcloud's signed-in connection: its JSON, or
        None when the resource is not there."""
        conn = self.driver().connection
        r = self.api.call(what, conn.request, path, params={**(params or {}), "api-version": api}, method=method)
        return None if r is None else (r.object if isinstance(r.object, dict) else {})

    def _path(self, kind: str, name: str = "") -> str:
        return (f"/subscriptions/{self.settings['subscription_id']}/resourceGroups/{self.group}/providers/"
                f"{kind}" + (f"/{name}" if name else ""))

    def flavors(self) -> list[Flavor]:
        from libcloud.compute.base import NodeLocation
        location = NodeLocation(self.region, self.region, "", self.driver())
        sizes = self.api.call("list VM sizes", self.driver().list_sizes, location) or []
        return [Flavor(provider=self.name, name=s.name, region=self.region, cpu=int(s.extra.get("numberOfCores") or 0),
                       mem=round(s.ram / 1024, 2), disk=float(s.disk or 0), price=self.prices.get(s.name, 0.0))
                for s in sizes]

    def create(self, name: str, flavor: Flavor, tags: Mapping[str, str]) -> Instance:
        from libcloud.compute.base import NodeAuthSSHKey, NodeLocation, NodeSize
        from libcloud.compute.drivers.azure_arm import AzureImage, AzureSubnet
        s, d = self.settings, self.driver()
        location = NodeLocation(self.region, self.region, "", d)
        try:
            with open(str(s["ssh_public_key"]), encoding="utf-8") as f:
                pubkey = f.read().strip()
        except OSError as e:
            raise ConfigError(f"provider {self.name}: cannot read ssh_public_key {s['ssh_public_key']}: "
                              f"{e.strerror}") from None
        subnet_name = str(s.get("subnet") or "default")
        subnet = AzureSubnet(self._path("Microsoft.Network/virtualNetworks", f"{s['network']}/subnets/{subnet_name}"),
                             subnet_name, {})
        ip = None
        if s.get("public_ip", True):
            ip = self._made(f"{name}-ip", self.api.call("create a public IP", d.ex_create_public_ip, f"{name}-ip",
                                                        self.group, location))
        nic = self._made(f"{name}-nic", self.api.call("create a network interface", d.ex_create_network_interface,
                                                      f"{name}-nic", subnet, self.group, location, public_ip=ip))
        publisher, offer, sku, version = str(s["image"]).split(":")
        node = self._made(name, self.api.call(
            "create a VM", d.create_node, name, NodeSize(flavor.name, flavor.name, 0, 0, 0, 0, d),
            AzureImage(version, sku, offer, publisher, location, d), NodeAuthSSHKey(pubkey), self.group,
            location=location, ex_user_name=self.ssh_user, ex_nic=nic, ex_tags=dict(tags), ex_use_managed_disks=True,
            ex_disk_size=int(s["disk"]) if s.get("disk") else None))
        return Instance(id=node.id, name=name, address=None, state="pending", tags=dict(tags), ssh_user=self.ssh_user)

    def _made(self, what: str, resource: Any) -> Any:
        """`resource` as a create returned it; a 404 means what it lives in is not there."""
        if resource is None:
            raise ProvisionError(f"provider {self.name}: {what} was not created: the resource group {self.group}, "
                                 f"network or subnet was not found (404)")
        return resource

    def _instance(self, vm: Mapping[str, Any], address: bool) -> Instance:
        view = self._request("read a VM's state", f"{vm['id']}/instanceView", VM_API)
        state = "gone" if view is None else vm_state(view.get("statuses") or [])
        return Instance(id=str(vm["id"]), name=str(vm["name"]), address=self._address(vm) if address else None,
                        state=state, tags=dict(vm.get("tags") or {}), ssh_user=self.ssh_user)

    def _address(self, vm: Mapping[str, Any]) -> str | None:
        """The VM's public IP (or private one when it has none): its NIC, then the NIC's public IP."""
        for ref in vm["properties"]["networkProfile"]["networkInterfaces"]:
            nic = self._request("read a network interface", ref["id"], NETWORK_API)
            for conf in (nic or {}).get("properties", {}).get("ipConfigurations", []):
                props = conf.get("properties", {})
                public = props.get("publicIPAddress")
                if public:
                    ip = self._request("read a public IP", public["id"], NETWORK_API)
                    address = (ip or {}).get("properties", {}).get("ipAddress")
                    if address:
                        return str(address)
                elif props.get("privateIPAddress"):
                    return str(props["privateIPAddress"])
        return None

    def get(self, instance_id: str) -> Instance | None:
        vm = self._request("read a VM", instance_id, VM_API)
        return self._instance(vm, address=True) if vm is not None else None

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        """The resource group's VMs carrying the tags, every page (following nextLink), with their
        state; their addresses are read by `get`."""
        path = self._path("Microsoft.Compute/virtualMachines")
        params: dict[str, str] = {}
        found = []
        while True:
            page = self._request("list VMs", path, VM_API, params=params) or {}
            found += [vm for vm in page.get("value", [])
                      if all((vm.get("tags") or {}).get(k) == v for k, v in tags.items())]
            if not page.get("nextLink"):
                break
            link = urlsplit(page["nextLink"])
            path, params = link.path, {k: v for k, v in parse_qsl(link.query) if k != "api-version"}
        return [self._instance(vm, address=False) for vm in found]

    def destroy(self, instance_id: str) -> None:
        """The VM, once gone its NIC and OS disk, then its public IP: each already gone is no
        error, so a destroy cut short is finished by the next one."""
        name = instance_id.rstrip("/").rsplit("/", 1)[-1]
        vm = self._path("Microsoft.Compute/virtualMachines", name)
        self._request("delete a VM", vm, VM_API, method="DELETE")
        deadline = time.monotonic() + self.delete_timeout
        while self._request("read a VM being deleted", vm, VM_API) is not None:
            if time.monotonic() > deadline:
                raise ProvisionError(f"provider {self.name}: the VM {name} is still being deleted after "
                                     f"{self.delete_timeout:.0f} s", retry=True)
            time.sleep(self.poll_wait)
        self._request("delete a network interface", self._path("Microsoft.Network/networkInterfaces", f"{name}-nic"),
                      NETWORK_API, method="DELETE")
        self._request("delete a disk", self._path("Microsoft.Compute/disks", name), DISK_API, method="DELETE")
        if self.settings.get("public_ip", True):
            self._request("delete a public IP", self._path("Microsoft.Network/publicIPAddresses", f"{name}-ip"),
                          NETWORK_API, method="DELETE")
