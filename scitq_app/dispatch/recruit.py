"""Recruiting, the dispatcher's duty when providers are configured: per batch and rank, as v1
did, want ceil(pending / tasks_per_worker) workers once `minimum_tasks` are pending, at most
`maximum_workers` per recruiter; recycle idle rented workers of batches with nothing pending
first, deploy the rest (a machine created at the provider, then provisioned over SSH, each a
job); give back the machines of rented workers idle for `[recruit] idle_release` while their
batch has nothing pending.

`plan()` is the policy, a pure function the tests drive; `Recruiting.tick()` reads the store,
plans and acts, deploys and destroys running as jobs in a bounded pool of threads.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..cloud.provider import TAG_KEY, TAG_NAME, TAG_SERVER, Flavor, Instance, Provider, choose
from ..config import Config
from ..errors import ProvisionError, ScitqError
from ..models import Caps, Recruiter, RentedMachine, machine_name
from ..store import Store

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 300.0   # seconds a created machine has to get an address and answer
BACKOFF_FIRST = 30.0   # seconds a recruiter waits after a failed deploy, doubled at each failure in a row
BACKOFF_MAX = 900.0


@dataclass(frozen=True)
class Action:
    kind: str                     # recycle | deploy | release
    batch: str | None = None
    recruiter: Recruiter | None = None
    worker_id: int | None = None
    machine_id: int | None = None


def plan(demand: Mapping[str, Any], idle: Sequence[Mapping[str, Any]], now: float,
         idle_release: float, flavor_of: Callable[[Recruiter], Flavor | None],
         caps: Mapping[str, Caps] | None = None) -> list[Action]:
    """What to do this round. `demand` is Store.recruit_demand(), `idle` Store.idle_workers()
    (each with the worker's own batch: a recycled worker's machine keeps its first one);
    `flavor_of` gives the flavor a recruiter would deploy (None: none available); `caps` the
    providers' caps on machines held at once (all regions, per region), which deploys respect."""
    actions: list[Action] = []
    pending: Mapping[str, int] = demand["pending"]
    machines: Sequence[RentedMachine] = demand["machines"]
    held: dict[str, int] = {}                   # machines each provider holds, with this round's deploys
    held_in: dict[tuple[str, str], int] = {}    # ... in each of its regions
    for m in machines:
        held[m.provider] = held.get(m.provider, 0) + 1
        held_in[(m.provider, m.region)] = held_in.get((m.provider, m.region), 0) + 1
    by_batch: dict[str, list[Recruiter]] = {}
    for r in demand["recruiters"]:
        by_batch.setdefault(r.batch, []).append(r)
    # rented idle workers whose batch has nothing pending: recyclable, else released after a while
    spare = [w for w in idle if w["machine_id"] is not None and pending.get(w["batch"] or "", 0) == 0]
    recycled: set[int] = set()
    for batch in sorted(by_batch):
        ranks = sorted(by_batch[batch], key=lambda r: r.rank)
        n = pending.get(batch, 0)
        first = next((r for r in ranks if n >= r.minimum_tasks and n > 0), None)
        if first is None:
            continue
        want = math.ceil(n / first.tasks_per_worker)
        have = demand["live"].get(batch, 0) + demand["coming"].get(batch, 0)
        for r in ranks:
            if have >= want:
                break
            if n < r.minimum_tasks:
                continue
            own = sum(1 for m in machines if m.recruiter_id == r.id and m.status in ("creating", "provisioning",
                                                                                     "running"))
            room = min(r.maximum_workers - own, want - have)
            flavor = flavor_of(r)
            for w in spare:
                if room <= 0:
                    break
                if w["id"] in recycled or w["batch"] == batch:
                    continue
                if flavor is not None and (w["provider"], w["flavor"]) == (r.provider, flavor.name):
                    actions.append(Action("recycle", batch, r, worker_id=w["id"], machine_id=w["machine_id"]))
                    recycled.add(w["id"])
                    room -= 1
                    have += 1
            if flavor is None:
                continue
            capped = (caps or {}).get(r.provider, Caps()).room(held.get(r.provider, 0),
                                                               held_in.get((r.provider, flavor.region), 0),
                                                               flavor.region)
            for _ in range(max(0, room if capped is None else min(room, capped))):
                actions.append(Action("deploy", batch, r))
                have += 1
                held[r.provider] = held.get(r.provider, 0) + 1
                held_in[(r.provider, flavor.region)] = held_in.get((r.provider, flavor.region), 0) + 1
    for w in spare:
        if w["id"] not in recycled and now - w["idle_since"] >= idle_release:
            actions.append(Action("release", w["batch"], worker_id=w["id"], machine_id=w["machine_id"]))
    return actions


class StoreFleet:
    """provision.FleetApi over the store: what provisioning asks of the server, for the
    dispatcher, which has the database and not the HTTP API."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config

    def create_job(self, kind: str, target: str, params: dict | None = None) -> dict:
        return self.store.create_job(kind, target, actor="recruiter", params=params).to_dict()

    def update_job(self, job_id: int, **changes: Any) -> dict:
        return self.store.update_job(job_id, **{k: v for k, v in changes.items() if v is not None}).to_dict()

    def append_job_log(self, job_id: int, lines: Sequence[str]) -> int:
        return self.store.append_job_log(job_id, [ln or " " for ln in lines])

    def create_join_token(self, uses: int = 1, ttl: float = 3600, batch: str | None = None,
                          name: str | None = None) -> dict:
        from ..server import certificate_fingerprint
        path = self.config.server.tls_certificate
        fingerprint = certificate_fingerprint(path) if path else None
        token, secret = self.store.create_join_token(uses, ttl, batch, name, actor="recruiter")
        return {"token": token.to_dict(), "join_token": secret + ("." + fingerprint if fingerprint else "")}

    def revoke_token(self, name: str) -> dict:
        return {"token": self.store.revoke_token(name, actor="recruiter").to_dict()}

    def trust_host_key(self, host: str, key_type: str, key_data: str) -> dict:
        return self.store.trust_host_key(host, key_type, key_data, actor="recruiter").to_dict()

    def host_key(self, host: str) -> dict:
        return self.store.get_host_key(host).to_dict()

    def workers(self, batch: str | None = None) -> list[dict]:
        return [w.to_dict() for w in self.store.list_workers(batch=batch)]

    def delete_worker(self, worker_id: int) -> dict:
        self.store.delete_worker(worker_id, actor="recruiter")
        return {"deleted": worker_id}


class Recruiting:
    """The recruiting duty of the active dispatcher (see the module docstring)."""

    def __init__(self, store: Store, config: Config, providers: Mapping[str, Provider],
                 clock: Callable[[], float] = time.time, server_id: str = "") -> None:
        self.store = store
        self.config = config
        self.providers = providers
        self.clock = clock
        self.server_id = server_id or (config.server.public_url or "scitq")
        self.fleet = StoreFleet(store, config)
        self.pool = ThreadPoolExecutor(max_workers=config.recruit.jobs, thread_name_prefix="recruit")
        self._busy: set[int] = set()  # machines a job of this process works on
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a job ends
        self._flavors: dict[str, tuple[float, list[Flavor]]] = {}
        self._last = float("-inf")
        # recruiter id -> (no deploy before, the next delay, the recruiter as it was then): a
        # provider that refuses (quota, 5xx, a bad image) is asked again later, less and less
        # often, not at every round; a person updating the recruiter ends the pause
        self._backoff: dict[int, tuple[float, float, Recruiter | None]] = {}
        # machine id -> (no destroy before, the next delay): a give-back that failed is tried again
        self._destroy_at: dict[int, tuple[float, float]] = {}
        self._reconciled = clock()  # the first reconciliation waits one period: deploys of a
        # previous dispatcher may still be recording their machines
        self._unknown: set[tuple[str, str]] = set()  # (provider, id) seen unknown at the last reconciliation

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def recover(self) -> list[str]:
        """At the start of a dispatcher's recruiting: machines a previous one left being created
        or provisioned (it crashed, or lost its lock) are given back and marked failed, so they
        count no more; the recruiters then deploy afresh. Returns their names."""
        recovered = []
        for m in self.store.list_machines():
            if m.status not in ("creating", "provisioning"):
                continue
            provider = self.providers.get(m.provider)
            instance_id = m.instance_id
            try:
                if provider is not None and instance_id is None:  # created, not yet recorded?
                    found = provider.list({TAG_KEY: m.idem_key})
                    instance_id = found[0].id if found else None
                if provider is not None and instance_id is not None:
                    provider.destroy(instance_id)
            except ScitqError as e:
                log.warning("recruiting: machine %s left by a previous dispatcher: %s (reconcile retries)", m.name,
                            e.message)
            self.store.update_machine(m.id, "failed", message="interrupted: the dispatcher restarted")
            recovered.append(m.name)
        if recovered:
            log.info("recruiting: %d machine(s) left mid-deploy by a previous dispatcher given back: %s",
                     len(recovered), ", ".join(recovered))
        return recovered

    def flavor_of(self, r: Recruiter) -> Flavor | None:
        return self._flavor(r.provider, r.flavor, r.region)

    def _flavor(self, provider_name: str, flavor: str, region: str | None) -> Flavor | None:
        provider = self.providers.get(provider_name)
        if provider is None:
            return None
        now = self.clock()
        cached = self._flavors.get(provider_name)
        if cached is None or now - cached[0] > 300:
            try:
                cached = (now, provider.flavors())
            except ScitqError as e:
                log.warning("provider %s: flavors unavailable: %s", provider_name, e.message)
                return None
            self._flavors[provider_name] = cached
        return choose(cached[1], flavor, region)

    def tick(self, force: bool = False) -> list[Action]:
        """One round, at most every `[recruit] interval` seconds (unless `force`)."""
        now = self.clock()
        if not force and now - self._last < self.config.recruit.interval:
            return []
        self._last = now
        if now - self._reconciled >= self.config.recruit.reconcile:
            self._reconciled = now
            self.reconcile()
        demand = self.store.recruit_demand()
        self._requested_and_destroying(demand["machines"], now)
        actions = plan(demand, self.store.idle_workers(), now, self.config.recruit.idle_release, self.flavor_of,
                       {name: p.caps for name, p in self.providers.items()})
        for a in actions:
            if a.kind == "deploy" and a.recruiter is not None and self._paused(a.recruiter, now):
                continue
            try:
                self._act(a)
            except ScitqError as e:
                log.warning("recruiting: %s %s: %s", a.kind, a.batch, e.message)
        return actions

    def _paused(self, r: Recruiter, now: float) -> bool:
        until, _, then = self._backoff.get(r.id, (0.0, 0.0, None))
        return now < until and r == then

    def _requested_and_destroying(self, machines: Sequence[RentedMachine], now: float) -> None:
        """Machines people asked for (`worker deploy`) are deployed; machines being given back
        whose destroy failed are destroyed again, after a pause growing at each failure, or at
        once when a person retried the job (`job retry`: a pending destroy job)."""
        retried = {j.target: j.id for j in self.store.list_jobs(status="pending", limit=1000) if j.kind == "destroy"}
        for name in set(retried) - {m.name for m in machines if m.status == "destroying"}:
            self.fleet.update_job(retried[name], status="running", step="destroying the machine")
            self.fleet.append_job_log(retried[name], [f"machine {name} was given back meanwhile"])
            self.fleet.update_job(retried[name], status="succeeded")
        for m in machines:
            if m.status == "requested":
                flavor = self._flavor(m.provider, m.flavor, m.region)
                if flavor is None:
                    self.store.update_machine(m.id, "failed", message=f"provider {m.provider} offers no flavor "
                                              f"{m.flavor} in {m.region} now")
                    continue
                m = self.store.update_machine(m.id, "creating")
                self._submit(m.id, self._deploy, m, flavor, None)
            elif m.status == "destroying" and (m.name in retried or now >= self._destroy_at.get(m.id, (0.0, 0.0))[0]):
                self._submit(m.id, self._destroy, m, retried.get(m.name))

    def _act(self, a: Action) -> None:
        if a.kind == "recycle":
            assert a.worker_id is not None and a.recruiter is not None
            self.store.update_worker(a.worker_id, {"batch": a.batch, "concurrency": a.recruiter.concurrency,
                                                   "prefetch": a.recruiter.prefetch}, actor="recruiter")
            log.info("recruiting: worker %s recycled into batch %s", a.worker_id, a.batch)
        elif a.kind == "deploy":
            assert a.recruiter is not None
            flavor = self.flavor_of(a.recruiter)
            assert flavor is not None
            r = a.recruiter
            m = self.store.add_machine(machine_name(a.batch or "worker"), r.provider, flavor.region, flavor.name,
                                       flavor.price, uuid.uuid4().hex, r.id, a.batch, r.concurrency, r.prefetch)
            self._submit(m.id, self._deploy, m, flavor, r)
        elif a.kind == "release" and a.machine_id is not None:
            m = self.store.update_machine(a.machine_id, "destroying", message="idle")
            self._submit(m.id, self._destroy, m)

    def _submit(self, machine_id: int, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if machine_id in self._busy:
                return
            self._busy.add(machine_id)

        def run() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a job's bug must not end the dispatcher
                log.exception("recruiting job on machine %s failed", machine_id)
            finally:
                with self._lock:
                    self._busy.discard(machine_id)
                    self._idle.notify_all()
        self.pool.submit(run)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job of this process runs (True), or `timeout` seconds (False)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def reconcile(self) -> dict[str, list[str]]:
        """Compare what each provider bills (machines tagged as this server's) with the
        database: machines it does not know are destroyed (orphans of a crash, or made by hand
        with our tag); machines it knows that the provider no longer has (destroyed behind
        scitq's back, or evicted) are marked gone: their workers lost, their tasks requeued."""
        done: dict[str, list[str]] = {"orphans": [], "gone": []}
        unknown: set[tuple[str, str]] = set()
        for name, provider in sorted(self.providers.items()):
            try:
                instances = provider.list({TAG_SERVER: self.server_id})
            except ScitqError as e:
                log.warning("reconcile: provider %s cannot list its machines: %s", name, e.message)
                continue
            machines = [m for m in self.store.list_machines() if m.provider == name]
            with self._lock:
                busy = set(self._busy)
            known_ids = {m.instance_id for m in machines if m.instance_id}
            known_keys = {m.idem_key for m in machines}
            seen = {i.id: i for i in instances}
            for inst in instances:
                if inst.id in known_ids or inst.tags.get(TAG_KEY) in known_keys or inst.state == "pending":
                    continue
                unknown.add((name, inst.id))
                # seen unknown twice in a row, and booted: not a create under way somewhere
                if (name, inst.id) in self._unknown:
                    self._reconcile_job(f"{name}:{inst.id}", f"machine {inst.id} ({inst.name}) is billed but unknown "
                                        "to scitq: destroyed", lambda: provider.destroy(inst.id))
                    done["orphans"].append(inst.id)
            for m in machines:
                if m.id in busy or not m.instance_id or m.status not in ("provisioning", "running"):
                    continue
                now_at = seen.get(m.instance_id)
                evicted = now_at is not None and now_at.state == "evicted"
                if now_at is None or evicted:
                    def gone(m: RentedMachine = m, evicted: bool = evicted) -> None:
                        ended = self.store.machine_gone(m.id, evicted)
                        if evicted:
                            provider.destroy(m.instance_id or "")
                        log.info("reconcile: machine %s %s; %d execution(s) requeued", m.name,
                                 "evicted" if evicted else "gone", len(ended))
                    self._reconcile_job(f"{name}:{m.instance_id}", f"machine {m.name} is "
                                        f"{'evicted' if evicted else 'gone'} at {name}: its worker is lost and its "
                                        "tasks requeued", gone)
                    done["gone"].append(m.name)
        self._unknown = unknown
        return done

    def _reconcile_job(self, target: str, text: str, action: Callable[[], None]) -> None:
        job_id = int(self.fleet.create_job("reconcile", target)["id"])
        self.fleet.update_job(job_id, status="running", step=text[:300])
        try:
            action()
        except ScitqError as e:
            self.fleet.append_job_log(job_id, [text, f"failed: {e.message}"])
            self.fleet.update_job(job_id, status="failed", message=e.message)
            return
        self.fleet.append_job_log(job_id, [text])
        self.fleet.update_job(job_id, status="succeeded")

    # --- jobs -----------------------------------------------------------------------------
    def _deploy(self, m: RentedMachine, flavor: Flavor, r: Recruiter | None) -> None:
        """Create machine `m` at its provider, then provision it; `r`: the recruiter deploying it
        (paused on failure), None for a machine a person asked for."""
        from ..cloud.provision import JobRecord, Provisioner, Target, install_files
        provider = self.providers[m.provider]
        job = JobRecord(self.fleet, m.name, lambda e: None, kind="deploy", steps=("create", "boot"))
        instance: Instance | None = None
        try:
            job.step("create", f"creating {flavor.name} in {flavor.region} at {m.provider}")
            tags = {TAG_SERVER: self.server_id, TAG_NAME: m.name, TAG_KEY: m.idem_key}
            found = provider.list({TAG_KEY: m.idem_key})  # a create retried after a crash: never twice
            instance = found[0] if found else provider.create(m.name, flavor, tags)
            self.store.update_machine(m.id, instance_id=instance.id)
            job.log(f"machine {instance.id} {'found' if found else 'created'}")
            job.step("boot", "waiting for it to boot")
            instance = self._booted(provider, instance)
            self.store.update_machine(m.id, "provisioning", address=instance.address)
            job.succeed(f"machine {instance.id} up at {instance.address}")
            url = self.config.server.public_url
            if not url:
                raise ProvisionError("[server] public_url is unset: rented workers need the URL they reach this "
                                     "server at")
            files = install_files(self.config.server.pyz or None, None)
            key = self.config.recruit.ssh_key or provider.ssh_key()
            worker = Provisioner(self.fleet, files, url, key_file=key).provision(
                Target(instance.address or "", instance.ssh_port, instance.ssh_user), name=m.name,
                concurrency=m.concurrency, batch=m.batch, host_id=f"{m.provider}:{instance.id}",
                pinned=instance.host_key)
            self.store.attach_worker(m.id, int(worker["id"]), m.concurrency, m.prefetch)
            if r is not None:
                with self._lock:
                    self._backoff.pop(r.id, None)
            log.info("recruiting: machine %s is worker %s of batch %s", m.name, worker["id"], m.batch)
        except ScitqError as e:
            if job.step_name and self.store.get_job(job.id).status not in ("succeeded", "failed"):
                job.fail(e.message)
            if instance is not None:
                self._give_back(provider, instance.id)
            self.store.update_machine(m.id, "failed", message=e.message[:500])
            if r is None:
                log.warning("recruiting: machine %s failed: %s", m.name, e.message)
                return
            with self._lock:
                delay = self._backoff.get(r.id, (0.0, BACKOFF_FIRST / 2, None))[1] * 2
                self._backoff[r.id] = (self.clock() + delay, min(delay, BACKOFF_MAX), r)
            log.warning("recruiting: machine %s failed: %s (recruiter %s waits %.0f s)", m.name, e.message, r.id,
                        delay)

    def _booted(self, provider: Provider, instance: Instance) -> Instance:
        deadline = self.clock() + BOOT_TIMEOUT
        while not (instance.state == "running" and instance.address):
            if self.clock() > deadline:
                raise ProvisionError(f"machine {instance.id} did not boot within {BOOT_TIMEOUT:.0f} s")
            time.sleep(2.0)
            got = provider.get(instance.id)
            if got is None or got.state in ("gone", "evicted"):
                raise ProvisionError(f"machine {instance.id} {'vanished' if got is None else 'failed'} while booting")
            instance = got
        return instance

    def _give_back(self, provider: Provider, instance_id: str) -> None:
        try:
            provider.destroy(instance_id)
        except ScitqError as e:
            log.warning("recruiting: machine %s could not be destroyed: %s", instance_id, e.message)

    def _destroy(self, m: RentedMachine, job_id: int | None = None) -> None:
        """Give machine `m` back (in job `job_id`, else a new one); on failure it stays being given
        back, and is tried again after BACKOFF_FIRST, doubling up to BACKOFF_MAX."""
        if job_id is None:
            job_id = int(self.fleet.create_job("destroy", m.name)["id"])
        self.fleet.update_job(job_id, status="running", step="destroying the machine")
        provider = self.providers.get(m.provider)
        try:
            if provider is None:
                raise ProvisionError(f"provider {m.provider} is no longer configured")
            if m.instance_id:
                provider.destroy(m.instance_id)
            if m.worker_id is not None:
                self.store.worker_destroyed(m.worker_id)
            self.store.update_machine(m.id, "destroyed")
            self.fleet.append_job_log(job_id, [f"machine {m.instance_id} destroyed; worker {m.worker_id} destroyed"])
            self.fleet.update_job(job_id, status="succeeded")
            with self._lock:
                self._destroy_at.pop(m.id, None)
        except ScitqError as e:
            with self._lock:
                delay = self._destroy_at.get(m.id, (0.0, BACKOFF_FIRST))[1]
                self._destroy_at[m.id] = (self.clock() + delay, min(delay * 2, BACKOFF_MAX))
            self.fleet.append_job_log(job_id, [f"failed: {e.message}", f"tried again in {delay:.0f} s, or at once "
                                               f"with `scitq job retry {job_id}`"])
            self.fleet.update_job(job_id, status="failed", message=e.message)
