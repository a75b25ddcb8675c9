"""The fleet's API routes: jobs, SSH host keys, recruiters, rented machines, flavors, and the
scitq.pyz workers upgrade to. (The routes are declared in api.py; server.py binds them here when
its Api has no handler of that name.)"""
from __future__ import annotations

from typing import Any

from .config import Config
from .errors import Conflict, Invalid, ServerConfigError
from .models import Identity
from .release import Offered
from .store import Store


class Fleet:
    """Handlers of the fleet's routes, over the store and the configuration."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.offered = Offered(config.server.pyz or None)
        from .cloud.provider import load_providers
        # loaded at start: a providers file that is wrong stops the server with the reason
        self._providers: dict[str, Any] = load_providers(config.recruit.providers)

    def providers(self) -> dict[str, Any]:
        """The providers of [recruit] providers (none when unset)."""
        return self._providers

    # --- jobs and host keys ---------------------------------------------------
    def list_jobs(self, ident: Identity, query: dict, **_: Any) -> dict:
        jobs = self.store.list_jobs(status=query.get("status"), after=query.get("after") or 0,
                                    limit=query.get("limit") or 100)
        return {"jobs": [j.to_dict() for j in jobs]}

    def create_job(self, ident: Identity, body: dict, **_: Any) -> dict:
        return self.store.create_job(body["kind"], body["target"], actor=ident.name,
                                     params=body.get("params")).to_dict()

    def retry_job(self, ident: Identity, id: int, **_: Any) -> dict:
        made = self.store.retry_job(id, {name: p.caps for name, p in self.providers().items()}, actor=ident.name)
        return {k: v.to_dict() if v is not None else None for k, v in made.items()}

    def get_job(self, ident: Identity, id: int, **_: Any) -> dict:
        return self.store.get_job(id).to_dict()

    def update_job(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        return self.store.update_job(id, status=body.get("status"), step=body.get("step"),
                                     progress=body.get("progress"), message=body.get("message")).to_dict()

    def delete_job(self, ident: Identity, id: int, **_: Any) -> dict:
        self.store.delete_job(id, actor=ident.name)
        return {"deleted": id}

    def job_log(self, ident: Identity, id: int, query: dict, **_: Any) -> dict:
        lines = self.store.read_job_log(id, after=query.get("after") or 0, limit=query.get("limit") or 1000)
        return {"lines": [ln.to_dict() for ln in lines], "next": lines[-1].seq if lines else query.get("after") or 0}

    def append_job_log(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        return {"log_lines": self.store.append_job_log(id, body["lines"])}

    def trust_host_key(self, ident: Identity, body: dict, **_: Any) -> dict:
        return self.store.trust_host_key(body["host"], body["key_type"], body["key_data"], actor=ident.name).to_dict()

    def get_host_key(self, ident: Identity, host: str, **_: Any) -> dict:
        return self.store.get_host_key(host).to_dict()

    def forget_host_key(self, ident: Identity, host: str, **_: Any) -> dict:
        self.store.forget_host_key(host, actor=ident.name)
        return {"forgotten": host}

    # --- the scitq.pyz workers upgrade to ----------------------------------------
    def pyz_info(self, ident: Identity, **_: Any) -> dict:
        return self.offered.info()

    def pyz_download(self, ident: Identity, **_: Any) -> dict:
        return self.offered.payload()

    # --- recruiting -----------------------------------------------------------------
    def _check_recruiter(self, body: dict) -> None:
        if "provider" not in body:
            return
        if not self.providers():
            raise ServerConfigError("this server has no provider to recruit from: declare them in the file "
                                    "[recruit] providers names", field="provider")
        if body["provider"] not in self.providers():
            raise Invalid(f"unknown provider {body['provider']!r} (known: {', '.join(sorted(self.providers()))})",
                          field="provider")

    def list_recruiters(self, ident: Identity, **_: Any) -> dict:
        return {"recruiters": [r.to_dict() for r in self.store.list_recruiters()]}

    def create_recruiter(self, ident: Identity, body: dict, **_: Any) -> dict:
        self._check_recruiter(body)
        return self.store.create_recruiter(body, actor=ident.name).to_dict()

    def update_recruiter(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        self._check_recruiter(body)
        return self.store.update_recruiter(id, body, actor=ident.name).to_dict()

    def delete_recruiter(self, ident: Identity, id: int, **_: Any) -> dict:
        self.store.delete_recruiter(id, actor=ident.name)
        return {"deleted": id}

    def list_machines(self, ident: Identity, query: dict, **_: Any) -> dict:
        return {"machines": [m.to_dict() for m in self.store.list_machines(everything=bool(query.get("all")))]}

    def deploy_machines(self, ident: Identity, body: dict, **_: Any) -> dict:
        from .cloud.provider import choose
        from .models import machine_name
        self._check_recruiter(body)
        provider = self.providers()[body["provider"]]
        flavor = choose(provider.flavors(), body["flavor"], body.get("region"))
        if flavor is None:  # offers change: a state of the provider, not a malformed request
            where = f" in {body['region']}" if body.get("region") else ""
            raise Conflict(f"provider {body['provider']} offers no available flavor {body['flavor']!r}{where} now "
                           "(see `scitq flavor list`)", field="flavor")
        batch = body.get("batch")
        machines = self.store.request_machines([machine_name(batch or "worker") for _ in range(body.get("count", 1))],
                                               body["provider"], flavor.region, flavor.name, flavor.price, batch,
                                               body.get("concurrency", 1), body.get("prefetch", 0), provider.caps,
                                               actor=ident.name)
        return {"machines": [m.to_dict() for m in machines]}

    def list_flavors(self, ident: Identity, query: dict, **_: Any) -> dict:
        from .cloud.provider import matches, parse_filter
        from .errors import ScitqError
        conditions = parse_filter(query["filter"]) if query.get("filter") else []
        out, errors = [], {}
        for name, provider in sorted(self.providers().items()):
            if query.get("provider") and name != query["provider"]:
                continue
            try:
                flavors = provider.flavors()
            except ScitqError as e:
                errors[name] = e.message
                continue
            out += [f for f in flavors if (not query.get("region") or f.region == query["region"])
                    and matches(f, conditions)]
        out.sort(key=lambda f: (f.price, f.cpu, f.mem, f.provider, f.name, f.region))
        return {"flavors": [f.to_dict() for f in out], "errors": errors}
