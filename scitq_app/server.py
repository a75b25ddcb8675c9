"""The HTTP API: `make_app(store, config)` builds the bottle app, `serve()` runs
it on waitress with the dispatcher alongside.

Routes are declared in `api.ROUTES`; this module binds them to the store with
one plugin that authenticates, parses and validates JSON, and turns every
`ScitqError` into a JSON `{"error", "detail"}` reply with its HTTP status.
Anything else is a bug: it is logged with its traceback and answered 500.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from . import __version__
from .api import PREFIX, ROUTES, Route, openapi_document, parse_query
from .beats import HeartbeatBuffer, Lookout, Notifier, Pace
from .config import Config
from .errors import (BadRequest, ConfigError, Forbidden, Invalid, MethodNotAllowed, MisdirectedRequest,
                     MissingDependency, NotFound, ScitqError, ServerConfigError, TooLarge, Unauthorized,
                     UnsupportedMediaType)
from .models import Identity, Role
from .fleet import Fleet
from .container_policy import check_allowed, options_pattern, parse_rules
from .schema import Context, validate, validate_bulk
from .store import Store
from .roots import parse_roots
from .uris import rclone_remotes

log = logging.getLogger(__name__)


class HostCheck:
    """Which Host headers the server answers (DNS rebinding defence).

    A page a browser loaded from evil.example can make its name resolve to this
    server's address, and the browser then sends `Host: evil.example` with requests
    it lets that page read. So a DNS name is served only when it is `localhost`, one
    of this host's own names, `[server] public_url`'s host, or in `[server]
    server_names`; an IP literal cannot be rebound and always passes. Ports do not
    matter, and a request with no Host (HTTP/1.0) passes."""

    def __init__(self, server_names: str, public_url: str = "") -> None:
        names = {n.strip().lower().rstrip(".") for n in server_names.split(",") if n.strip()}
        names.add("localhost")
        if public_url:
            try:
                host = urlsplit(public_url).hostname
            except ValueError:
                host = None
            if host:
                names.add(host.lower().rstrip("."))
        self.names = frozenset(names)
        self._own: frozenset[str] | None = None

    def allows(self, header: str | None) -> bool:
        if not header:
            return True
        host = header.strip()
        if host.startswith("["):  # [v6]:port
            end = host.find("]")
            return end > 0 and _is_ip(host[1:end])
        if host.count(":") > 1:  # a bare v6 address, as some clients send it
            return _is_ip(host)
        host = host.rsplit(":", 1)[0] if ":" in host else host
        if _is_ip(host):
            return True
        name = host.lower().rstrip(".")
        if name in self.names:
            return True
        if self._own is None:  # looked up once, when a name needs it (getfqdn may ask DNS)
            from .tokenfiles import own_names
            self._own = own_names()
        return name in self._own

    def refusal(self, header: str) -> MisdirectedRequest:
        name = header.strip()[:100]
        return MisdirectedRequest(f"this server does not answer to the host name {name!r}: add it to [server] "
                                  "server_names on the server if it is one of its names (this refusal stops DNS "
                                  "rebinding; IP addresses always pass)", host=name)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


class RcloneConfig:
    """The rclone config the server hands to its workers ([server] rclone_config),
    read again whenever the file changes. Its remotes are the URI schemes tasks may
    use; with no file (or an unreadable one) only the built-ins are accepted. Its
    text is a secret: it goes only to the routes that serve it, never to a log."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._value: tuple[str, str, frozenset[str]] = ("", hashlib.sha256(b"").hexdigest(), frozenset())
        self._lock = threading.Lock()
        self._warned = False

    def current(self) -> tuple[str, str, frozenset[str]]:
        """(text, sha256 of the text, remote names)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                text = ""
                if stamp is not None:
                    try:
                        with open(self.path, "rb") as f:
                            text = f.read().decode("utf-8", "replace")
                        self._warned = False
                    except OSError as e:
                        if not self._warned:
                            log.warning("cannot read the rclone config %s (%s): only http, https, ftp and file "
                                        "URIs are accepted", self.path, e.strerror or e)
                            self._warned = True
                self._value = (text, hashlib.sha256(text.encode("utf-8")).hexdigest(),
                               frozenset(rclone_remotes(text)))
                self._stamp = stamp
            return self._value

    def remotes(self) -> frozenset[str]:
        return self.current()[2]

    def digest(self) -> str:
        return self.current()[1]


def _scope(ident: Identity) -> str:
    """Whose idempotency keys these are: the token's (a key from another token is another submission)."""
    return f"token:{ident.token_id}" if ident.token_id is not None else f"name:{ident.name}"


# Request bodies holding URIs: validated against the rclone config's remotes.
URI_BODIES = frozenset({"task_single", "task_create", "task_bulk", "task_update"})


class Api:
    """Route handlers: thin translations between HTTP and the store."""

    def __init__(self, store: Store, config: Config, notifier: Notifier,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.config = config
        self.notifier = notifier
        self.clock = clock
        # leases, heartbeat interval and idle claims' pace follow the size of the fleet
        self.pace = Pace(store, config, clock)
        self.hosts = HostCheck(config.server.server_names, config.server.public_url)
        # Long polls hold a waitress thread each: keep enough threads for everyone else.
        self._pollers = threading.BoundedSemaphore(max(1, config.server.threads // 2))
        self.lookout = Lookout(store, notifier)  # through which woken long-polls look, together
        self.beats = HeartbeatBuffer(store, config.dispatcher.lease, clock)
        self.rclone = RcloneConfig(config.server.rclone_config)
        self.fleet = Fleet(store, config)  # the fleet's routes: jobs, host keys, recruiting, the pyz offer
        # the only folders file:// URIs may name (none by default): tasks reach no other host path
        self.file_roots = parse_roots(config.server.file_roots, "[server] file_roots")
        self.container_allow = parse_rules(config.server.container_options, "[server] container_options")
        self.container_pattern = options_pattern(self.container_allow)

    # --- auth -----------------------------------------------------------------
    def identify(self, header: str | None) -> Identity | None:
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
            ident = self.store.authenticate(secret.strip())
            if ident is None:
                raise Unauthorized("this token is unknown or revoked, or a join token used up or expired")
            return ident
        return None

    @staticmethod
    def _own_worker(ident: Identity, worker_id: int) -> int | None:
        """The worker id a worker token is bound to (None for admins, who act for any worker)."""
        if ident.role == Role.WORKER:
            if ident.worker_id != worker_id:
                raise Forbidden(f"this worker token belongs to worker {ident.worker_id}, not {worker_id}")
            return worker_id
        return None

    # --- meta -----------------------------------------------------------------
    def health(self, ident: Identity, **_: Any) -> dict:
        return {"status": "ok", "version": __version__, "time": self.clock(), "long_polls": self.lookout.long_polls,
                # whether tasks submitted through other server processes wake this one's long-polls
                "hears_other_processes": self.notifier.listening}

    def openapi(self, ident: Identity, **_: Any) -> dict:
        # the URI patterns name this server's remotes and file roots: the document states what it accepts
        return openapi_document(Context(remotes=self.rclone.remotes(), file_roots=self.file_roots,
                                        container_options=self.container_pattern,
                                        providers=tuple(sorted(self.fleet.providers()))))

    def whoami(self, ident: Identity, **_: Any) -> dict:
        reply: dict[str, Any] = {"name": ident.name, "role": ident.role.value, "worker_id": ident.worker_id}
        if ident.worker_id is not None:
            reply["worker_name"] = self.store.get_worker(ident.worker_id).name
        return reply

    # --- tasks ----------------------------------------------------------------
    def list_tasks(self, ident: Identity, query: dict, **_: Any) -> dict:
        limit = query.get("limit") or 100
        tasks = self.store.list_tasks(batch=query.get("batch"), statuses=query.get("status") or None,
                                      name=query.get("name"), ids=query.get("ids"), after=query.get("after") or 0,
                                      limit=limit)
        return {"tasks": [t.to_dict() for t in tasks],
                "next": tasks[-1].id if len(tasks) == limit else None}

    def create_task(self, ident: Identity, body: dict, **_: Any) -> dict:
        if any(isinstance(r, str) for r in body.get("requires") or []):
            raise Invalid("refs can only be used in a bulk request; give task ids", field="requires")
        check_allowed(body.get("container_options"), self.container_allow)
        task_id = self.store.create_tasks([body], actor=ident.name)[0]
        self.notifier.notify()
        return self.store.get_task(task_id).to_dict()

    def check_container_options(self, task: dict, where: str) -> None:
        check_allowed(task.get("container_options"), self.container_allow, f"{where}.container_options")

    def create_tasks(self, ident: Identity, body: dict, **_: Any) -> dict:
        # body["tasks"] checks each task (check_container_options) as the store reads it
        ids = self.store.create_tasks(body["tasks"], actor=ident.name, key=body.get("key"), scope=_scope(ident))
        self.notifier.notify()
        return {"ids": ids, "count": len(ids)}

    def count_tasks(self, ident: Identity, query: dict, **_: Any) -> dict:
        return {"counts": self.store.count_tasks(batch=query.get("batch"))}

    def get_task(self, ident: Identity, id: int, **_: Any) -> dict:
        return self.store.get_task(id).to_dict()

    def update_task(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        check_allowed(body.get("container_options"), self.container_allow)
        task = self.store.update_task(id, body, actor=ident.name)
        self.notifier.notify()
        return task.to_dict()

    def delete_task(self, ident: Identity, id: int, **_: Any) -> dict:
        self.store.delete_task(id, actor=ident.name)
        return {"deleted": id}

    def relaunch_task(self, ident: Identity, id: int, **_: Any) -> dict:
        task = self.store.relaunch_task(id, actor=ident.name)
        self.notifier.notify()
        return task.to_dict()

    def signal_task(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        task = self.store.signal_task(id, body["action"], actor=ident.name)
        self.notifier.notify()
        return task.to_dict()

    def list_executions(self, ident: Identity, id: int, **_: Any) -> dict:
        return {"executions": [e.to_dict() for e in self.store.list_executions(id)]}

    def task_output(self, ident: Identity, id: int, query: dict, **_: Any) -> dict:
        executions = self.store.list_executions(id)
        if not executions:
            raise NotFound(f"task {id} has not run yet", task_id=id)
        return self.execution_output(ident, executions[0].id, query)

    def get_execution(self, ident: Identity, id: int, **_: Any) -> dict:
        return self.store.get_execution(id).to_dict()

    def execution_output(self, ident: Identity, id: int, query: dict, **_: Any) -> dict:
        out = self.store.read_output(id, query.get("stream") or "stdout", query.get("offset") or 0,
                                     query.get("limit") or (1 << 20))
        return out.to_dict()

    # --- batches --------------------------------------------------------------
    def list_batches(self, ident: Identity, **_: Any) -> dict:
        return {"batches": [b.to_dict() for b in self.store.list_batches()]}

    def create_batch(self, ident: Identity, body: dict, **_: Any) -> dict:
        return self.store.create_batch(body["name"], body.get("priority") or 0, actor=ident.name).to_dict()

    def get_batch(self, ident: Identity, name: str, **_: Any) -> dict:
        return self.store.get_batch(name).to_dict()

    def update_batch(self, ident: Identity, name: str, body: dict, **_: Any) -> dict:
        return self.store.update_batch(name, body["priority"], actor=ident.name).to_dict()

    def _batch_status(self, ident: Identity, name: str, body: dict, status: str) -> dict:
        batch = self.store.set_batch_status(name, status, body.get("signal"), actor=ident.name)
        self.notifier.notify()
        return batch.to_dict()

    def pause_batch(self, ident: Identity, name: str, body: dict, **_: Any) -> dict:
        return self._batch_status(ident, name, body, "paused")

    def go_batch(self, ident: Identity, name: str, body: dict, **_: Any) -> dict:
        return self._batch_status(ident, name, body, "running")

    def stop_batch(self, ident: Identity, name: str, body: dict, **_: Any) -> dict:
        return self._batch_status(ident, name, body, "stopped")

    def delete_batch(self, ident: Identity, name: str, **_: Any) -> dict:
        return {"deleted": name, "tasks": self.store.delete_batch(name, actor=ident.name)}

    # --- workers --------------------------------------------------------------
    def list_workers(self, ident: Identity, query: dict, **_: Any) -> dict:
        limit = query.get("limit")
        workers = self.store.list_workers(batch=query.get("batch"), after=query.get("after") or 0, limit=limit)
        return {"workers": [w.to_dict() for w in workers],
                "next": workers[-1].id if limit is not None and len(workers) == limit else None}

    def get_worker(self, ident: Identity, id: int, **_: Any) -> dict:
        return self.store.get_worker(id).to_dict()

    def update_worker(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        return self.store.update_worker(id, body, actor=ident.name).to_dict()

    def delete_worker(self, ident: Identity, id: int, **_: Any) -> dict:
        self.store.delete_worker(id, actor=ident.name)
        self.notifier.notify()
        return {"deleted": id}

    def signal_worker(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        if body["action"] == "upgrade" and not ident.is_admin():
            raise Forbidden("upgrading workers needs an admin token")
        self.store.signal_worker(id, body["action"], actor=ident.name)
        return {"queued": body["action"]}

    # --- worker protocol ------------------------------------------------------
    def register(self, ident: Identity, body: dict, **_: Any) -> dict:
        worker, token = self.store.register_worker(body, actor=ident.name, identity=ident)
        return {"worker": worker.to_dict(), "token": token, **self._worker_pace(),
                "rclone_config": self.rclone.digest()}

    def claim(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        self._own_worker(ident, id)
        wait = min(float(body.get("wait", 0) or 0), self.config.server.claim_wait)
        deadline = self.clock() + wait
        lease, request = self.pace.now().lease, body.get("request")
        executions = self.store.claim(id, body["slots"], lease, request)
        if executions or wait <= 0 or body["slots"] <= 0:
            return {"executions": executions}
        if not self._pollers.acquire(blocking=False):
            # Every long-poll this process can hold is taken (each holds a thread): this worker
            # comes back later, at a time spread so that idle workers never spin on claims. The
            # long-polling ones pick up new tasks at once meanwhile.
            return {"executions": [], "retry_after": self.pace.come_back_after()}
        try:
            woken = False
            with self.lookout.polling(id):  # counted (/health), and looked for after a wake
                while not executions and not self.notifier.closed:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    since = self.notifier.generation()  # before the look: a wake after it is not lost
                    # A wake wakes every long-poll of this process: one read tells them which of
                    # them could claim, and those claim one at a time (Lookout). The first look
                    # and those after a quiet wait (a recheck) are each poll's own.
                    with self.lookout.turn if woken else contextlib.nullcontext():
                        if self.lookout.could_claim(id, since) if woken else self.store.has_claimable(id):
                            executions = self.store.claim(id, body["slots"], lease, request)
                            self.lookout.claimed()
                            continue
                    # Wake at a task submitted here at once; poll for other processes' tasks.
                    self.notifier.wait(since, min(remaining, self.notifier.recheck))
                    woken = self.notifier.generation() != since
        finally:
            self._pollers.release()
        return {"executions": executions}

    def heartbeat(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        self._own_worker(ident, id)
        executions = body.get("executions") or []
        pace = self.pace.now()
        self.beats.lease = pace.lease  # what the next flush renews leases for
        reply = self.store.heartbeat_reply(id, executions, pace.lease)
        acked = self.beats.pending_acks(id) | set(body.get("acks") or [])
        reply["signals"] = [s for s in reply["signals"] if s["id"] not in acked]
        self.beats.add(id, body.get("stats") or {}, executions, body.get("acks") or [])
        reply["rclone_config"] = self.rclone.digest()  # the worker fetches the config when this changes
        reply.update(self._worker_pace())  # so a worker restarted since registering follows it too
        return reply

    def _worker_pace(self) -> dict[str, Any]:
        """What the server sets for every worker: heartbeat interval (growing with the fleet: see
        beats.rhythm), output caps, and the lease (which bounds how long a task's supervisor lets it
        run without a live agent)."""
        pace = self.pace.now()
        return {"heartbeat": pace.heartbeat, "lease": pace.lease,
                "output_head": self.config.server.output_head, "output_tail": self.config.server.output_tail}

    def worker_rclone_config(self, ident: Identity, id: int, **_: Any) -> dict:
        self._own_worker(ident, id)
        text, digest, _remotes = self.rclone.current()
        return {"config": text, "hash": digest}

    def report(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        worker_id = ident.worker_id if ident.role == Role.WORKER else None
        execution = self.store.report(id, worker_id, body)
        if execution.status in ("succeeded", "failed"):
            # A slot is free on that worker (its claim may be waiting on it), and a
            # failed task may be pending again.
            self.notifier.notify()
        return execution.to_dict()

    def append_output(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        worker_id = ident.worker_id if ident.role == Role.WORKER else None
        data = _b64(body["data"])
        size = self.store.append_output(id, worker_id, body["stream"], body["offset"], data,
                                        bool(body.get("final")), self.config.server.output_head,
                                        self.config.server.output_tail)
        return {"size": size}

    def outbox(self, ident: Identity, id: int, body: dict, **_: Any) -> dict:
        self._own_worker(ident, id)
        worker_id = ident.worker_id if ident.role == Role.WORKER else None
        # Fast path: every item in one transaction (a batch of reports and output costs
        # one commit). If any item is refused, nothing was applied: replay them one by
        # one so each gets its own verdict.
        try:
            items = [self._outbox_item(i, item) for i, item in enumerate(body["items"])]
            results = self.store.apply_outbox(worker_id, items, self.config.server.output_head,
                                              self.config.server.output_tail)
        except ScitqError as e:
            if e.http_status >= 500:
                raise
            return {"results": self._outbox_one_by_one(ident, body["items"])}
        if any(kind == "report" and r.status in ("succeeded", "failed") for (kind, _, _), r in zip(items, results)):
            self.notifier.notify()
        return {"results": [{"ok": True, "result": r.to_dict() if kind == "report" else {"size": r}}
                            for (kind, _, _), r in zip(items, results)]}

    def _outbox_item(self, i: int, item: dict) -> tuple[str, int, dict]:
        kind = "report" if item["type"] == "report" else "output"
        payload = validate(kind, item["body"], where=f"items[{i}].body")
        if kind == "output":
            payload["data"] = _b64(payload["data"])
        return kind, item["execution_id"], payload

    def _outbox_one_by_one(self, ident: Identity, items: list[dict]) -> list[dict]:
        results = []
        for i, item in enumerate(items):
            try:
                kind = "report" if item["type"] == "report" else "output"
                payload = validate(kind, item["body"], where=f"items[{i}].body")
                handler = self.report if kind == "report" else self.append_output
                results.append({"ok": True, "result": handler(ident, item["execution_id"], payload)})
            except ScitqError as e:
                if e.http_status >= 500:
                    raise
                results.append({"ok": False, "status": e.http_status, **e.to_dict()})
        return results

    # --- administration -------------------------------------------------------
    def list_tokens(self, ident: Identity, **_: Any) -> dict:
        return {"tokens": [t.to_dict() for t in self.store.list_tokens()]}

    def create_token(self, ident: Identity, body: dict, **_: Any) -> dict:
        token, secret = self.store.create_token(body["name"], body["role"], actor=ident.name)
        return {"token": token.to_dict(), "secret": secret}

    def revoke_token(self, ident: Identity, name: str, **_: Any) -> dict:
        return {"token": self.store.revoke_token(name, actor=ident.name).to_dict()}

    def create_join_token(self, ident: Identity, body: dict, **_: Any) -> dict:
        # Read at each request: a renewed certificate shows in the next token.
        path = self.config.server.tls_certificate
        fingerprint = certificate_fingerprint(path) if path else None
        token, secret = self.store.create_join_token(body["uses"], body["ttl"], body.get("batch"), body.get("name"),
                                                     actor=ident.name)
        return {"token": token.to_dict(), "join_token": secret + ("." + fingerprint if fingerprint else ""),
                "fingerprint": fingerprint, "server_url": self.config.server.public_url or None}

    def rclone_config(self, ident: Identity, **_: Any) -> dict:
        text, digest, remotes = self.rclone.current()
        return {"config": text, "hash": digest, "remotes": sorted(remotes), "path": self.rclone.path}

    def list_events(self, ident: Identity, query: dict, **_: Any) -> dict:
        events = self.store.list_events(target=query.get("target"), after=query.get("after") or 0,
                                        limit=query.get("limit") or 100)
        return {"events": [e.to_dict() for e in events]}


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def certificate_fingerprint(path: str) -> str:
    """Lowercase hex sha256 of the DER of the first certificate in a PEM file (what
    clients pin). ServerConfigError when the file is missing, unreadable or holds none."""
    import ssl
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as e:
        raise ServerConfigError(f"cannot read the server's TLS certificate {path} ([server] tls_certificate): "
                                f"{e.strerror or e}", path=path) from None
    m = _PEM_CERT.search(text)
    try:
        der = ssl.PEM_cert_to_DER_cert(m.group(0)) if m else b""
    except ValueError:
        der = b""
    if not der:
        raise ServerConfigError(f"the server's TLS certificate {path} ([server] tls_certificate) holds no PEM "
                                "certificate", path=path)
    return hashlib.sha256(der).hexdigest()


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("must be base64", field="data") from None


def _json_response(bottle: Any, status: int, payload: Any) -> Any:
    return bottle.HTTPResponse(
        body=json.dumps(payload, separators=(",", ":"), default=str), status=status,
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"})


def make_app(store: Store, config: Config, *, notifier: Notifier | None = None,
             clock: Callable[[], float] = time.time) -> Any:
    """Build the bottle application serving /api/v1 (and the web UI when present)."""
    try:
        import bottle
    except ImportError:
        raise MissingDependency("the server needs bottle: pip install bottle (bundled in scitq.pyz)") from None
    api = Api(store, config, notifier or Notifier(), clock)
    app = bottle.Bottle()  # (the catchall/autojson keywords are deprecated in bottle 0.13)
    app.config["catchall"] = False
    app.config["json.enable"] = False
    app.config["scitq.api"] = api
    max_body = config.server.max_body

    def bind(route: Route) -> Callable[..., Any]:
        handler = getattr(api, route.handler, None) or getattr(api.fleet, route.handler)

        def endpoint(**url_args: Any) -> Any:
            request = bottle.request
            try:
                # raw (latin-1) header: a non-UTF-8 value is just an unknown token, not an error
                ident = api.identify(request.environ.get("HTTP_AUTHORIZATION"))
                if route.roles:
                    if ident is None:
                        raise Unauthorized("a bearer token is required (Authorization: Bearer TOKEN)")
                    if ident.role.value not in route.roles:
                        raise Forbidden(f"a {ident.role.value} token may not {route.method} {route.path}")
                for key, value in url_args.items():  # values no object can have (and SQL would choke on)
                    if isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:
                        raise NotFound(f"no object with {key} {value} (ids are 64-bit integers)")
                    if isinstance(value, str) and "\x00" in value:
                        raise NotFound(f"no object with a NUL byte in its {key}")
                kwargs: dict[str, Any] = dict(url_args)
                if route.query:
                    kwargs["query"] = parse_query(route, _query_params(request))
                elif request.query_string:
                    parse_query(route, _query_params(request))
                if route.body == "task_bulk":
                    # Its tasks are validated as the store reads them, chunk by chunk (LazyItems).
                    kwargs["body"] = validate_bulk(route.body, _read_json(request, max_body, True), "tasks",
                                                   remotes=api.rclone.remotes(), file_roots=api.file_roots,
                                                   check=api.check_container_options)
                elif route.body:
                    # PATCH changes only the fields given: nothing required, no defaults filled in.
                    kwargs["body"] = validate(route.body, _read_json(request, max_body, bool(route.body)),
                                              partial=route.method == "PATCH",
                                              remotes=api.rclone.remotes() if route.body in URI_BODIES else None,
                                              file_roots=api.file_roots if route.body in URI_BODIES else None)
                result = handler(ident, **kwargs)
                return _json_response(bottle, route.status, result)
            except ScitqError as e:
                if e.http_status >= 500:
                    log.warning("%s %s: %s", route.method, request.path, e.message)
                return _json_response(bottle, e.http_status, e.to_dict())
            except (KeyboardInterrupt, SystemExit, MemoryError):
                raise
            except Exception:
                log.exception("bug while serving %s %s", route.method, request.path)
                return _json_response(bottle, 500, {"error": "internal",
                                                    "detail": "internal server error (logged on the server)"})
        endpoint.__name__ = route.handler
        return endpoint

    for route in ROUTES:
        app.route(PREFIX + route.path, route.method, bind(route))

    @app.hook("before_request")
    def check_host() -> None:
        # Before routing and authentication, for every route (/health too) and unknown paths.
        header = bottle.request.environ.get("HTTP_HOST")
        if not api.hosts.allows(header):
            e = api.hosts.refusal(header)
            raise _json_response(bottle, e.http_status, e.to_dict())

    def http_error(err: Any) -> str:
        bottle.response.content_type = "application/json"
        code = err.status_code
        if code == 404:
            e: ScitqError = NotFound(f"no such route: {bottle.request.method} {bottle.request.path}")
        elif code == 405:
            e = MethodNotAllowed(f"{bottle.request.method} is not allowed on {bottle.request.path}")
        elif code == 413:
            e = TooLarge()
        else:
            e = ScitqError(str(err.body or err.status_line))
            e.kind = "http"
        return json.dumps(e.to_dict())

    for code in (400, 404, 405, 413, 500):
        app.error_handler[code] = http_error
    return app


def _query_params(request: Any) -> dict[str, str]:
    try:
        return dict(request.query.decode("utf-8").items())
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None


def _read_json(request: Any, max_body: int, required: bool) -> Any:
    length = request.content_length
    if length > max_body:
        raise TooLarge(f"request body is {length} bytes; the limit is {max_body}")
    raw = request.environ["wsgi.input"].read(max_body + 1) if length != 0 else b""
    if length < 0 and len(raw) > max_body:
        raise TooLarge(f"request body exceeds the limit of {max_body} bytes")
    if not raw.strip():
        return {}
    ctype = (request.content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(f"the body must be application/json, not {ctype or 'untyped'}")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts
        raise BadRequest(f"malformed JSON: {e}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def limit_malloc_arenas() -> None:
    """Keep glibc from giving each of waitress's threads its own malloc arena.

    With one arena per thread, the transient buffers of large requests (output
    chunks, bulk submissions) stay resident in every arena they passed through:
    the server's memory then grows with its thread count instead of staying flat."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def freeze_startup_objects() -> None:
    """Leave what exists at start (modules, the app, its routes and queries: two thirds of a
    server's objects) out of the garbage collector's passes: it lives as long as the process.

    A full pass stops every thread of the process while it walks the objects: measured under
    5,000 workers, the longest pause went from 54-112 ms to 21-24 ms (bench/README.md)."""
    gc.collect()
    gc.freeze()


def check_server_config(config: Config) -> None:
    """ConfigError for what the configuration checks alone cannot see: an address to listen
    on that this host does not have, an allow-list that is not a list of options. The CLI
    calls it before it opens (and maybe initialises) the database."""
    parse_rules(config.server.container_options, "[server] container_options")
    check_listen(config.server.listen, config.server.port)


def check_listen(listen: str, port: int) -> None:
    """ConfigError naming [server] listen unless it is an address (or a host name) this host
    can listen on: waitress's own error for it is a bare ValueError, after threads started."""
    import socket
    try:
        socket.getaddrinfo(listen, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as e:
        raise ConfigError(f"[server] listen {listen!r} is not an address this host can listen on "
                          f"({getattr(e, 'strerror', None) or e}): give an IP address such as 127.0.0.1 or "
                          "0.0.0.0") from None


def bind_listener(listen: str, port: int) -> Any:
    """The server's socket, bound before anything else happens: a busy port fails here,
    before the database is opened (or initialised) and the dispatcher started. OSError
    when the address cannot be bound."""
    import socket
    family, kind, proto, _, address = socket.getaddrinfo(listen, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(store: Store, config: Config, *, dispatcher: bool | None = None,
          ready: Callable[[str], None] | None = None, listener: Any = None) -> None:
    """Run the API on waitress until interrupted, with the dispatcher thread unless disabled.
    `listener` is a socket from `bind_listener` (else [server] listen and port are bound here).
    While it listens, its entry in the user's server registry tells a CLI on this host
    where its admin token file is (`tokenfiles`)."""
    check_server_config(config)
    if not store.has_people_tokens():
        # A database initialised without its first admin token (or whose tokens were all
        # revoked with the CLI): nobody can use the API until someone makes one.
        log.warning("no admin or user token exists: create one on this host with `scitq token create --role "
                    "admin NAME`")
    try:
        from .connections import create_server
    except ImportError:
        raise MissingDependency("the server needs waitress: pip install waitress (bundled in scitq.pyz)") \
            from None
    limit_malloc_arenas()
    notifier = Notifier(publish=store.announce_claimable)
    app = make_app(store, config, notifier=notifier)
    stop = threading.Event()
    # tasks submitted (or requeued) through another server process on the database wake claims here
    notifier.listen(store, stop)
    thread = None
    if config.server.dispatcher if dispatcher is None else dispatcher:
        from .dispatch.loops import Dispatcher
        d = Dispatcher(store, config, on_change=notifier.notify)
        thread = threading.Thread(target=d.run, kwargs={"stop": stop}, name="dispatcher", daemon=True)
        thread.start()
    where = {"sockets": [listener]} if listener is not None else \
        {"host": config.server.listen, "port": config.server.port}
    # an epoll loop whose turns ask only the busy connections, not every idle keep-alive one
    server = create_server(app, **where, threads=config.server.threads,
                                    max_request_body_size=config.server.max_body, channel_timeout=120,
                                    connection_limit=4000, clear_untrusted_proxy_headers=True,
                                    asyncore_use_poll=True, ident="scitq")
    shutdown = server.task_dispatcher.shutdown

    def shutting_down(*args: Any, **kwargs: Any) -> Any:
        # waitress waits (up to 5 s) for its threads to end: the long-polled claims end now
        notifier.close()
        return shutdown(*args, **kwargs)
    # what waitress's run calls on SIGTERM (our KeyboardInterrupt), before it returns
    server.task_dispatcher.shutdown = shutting_down
    url = f"http://{config.server.listen}:{server.effective_port}"
    log.info("scitq %s serving on %s (%s)", __version__, url, store.dialect, extra={"action": "serve"})
    remotes = app.config["scitq.api"].rclone.remotes()
    if remotes:
        log.info("rclone config %s: remotes %s", config.server.rclone_config, ", ".join(sorted(remotes)))
    else:
        log.info("no rclone remote in %s: tasks may use http, https, ftp and file URIs only",
                 config.server.rclone_config)
    from .tokenfiles import register_server, unregister_server
    port = int(server.effective_port)
    register_server(url, port, config.server.token_file)
    if ready:
        ready(url)
    freeze_startup_objects()
    try:
        server.run()
    finally:
        unregister_server(port)
        stop.set()
        app.config["scitq.api"].beats.close()
        if thread is not None:
            thread.join(timeout=5)

