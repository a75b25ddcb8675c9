"""The HTTP client of the scitq API: the Python library people script against,
the CLI's transport and the worker's link to the server.

    from scitq_app.client import Server
    s = Server("http://127.0.0.1:5000", token="scitq_...")
    t = s.submit("echo hello", batch="demo")
    s.join([t["id"]])

Errors come back as the same `ScitqError` subclasses the server raised
(NotFound, Conflict, Invalid...); a server that cannot be reached raises
`ServerUnreachable`. Standard library only, so every role can use it.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
import time
from urllib.parse import quote, urlencode, urlsplit

from . import __version__
from .errors import BY_KIND, ConfigError, ScitqError, ServerUnreachable, TlsMismatch, TlsUntrusted

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    import queue
    from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

API = "/api/v1"


def normalize_fingerprint(text: str, where: str = "fingerprint") -> str:
    """A sha256 fingerprint as 64 lowercase hex digits; accepts `AB:CD:...` (openssl's
    form) and a `sha256:` prefix. ConfigError for anything else."""
    fp = text.strip().lower()
    if fp.startswith("sha256:"):
        fp = fp[len("sha256:"):]
    fp = fp.replace(":", "")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise ConfigError(f"{where} must be the sha256 of the server's certificate (64 hex digits), "
                          f"not {text.strip()[:80]!r}")
    return fp


def clean_token(token: str | None) -> str | None:
    """A token as read from a file or a variable, without the line end it often carries. One
    that still holds a space or a control character is refused without being shown: it is a
    secret, and http.client's own error would print it whole."""
    token = (token or "").strip()
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token):
        raise ConfigError("the API token holds a space or a control character: check [client] token, "
                          "SCITQ_TOKEN or the token file it was read from")
    return token or None


def split_join_token(text: str) -> tuple[str, str | None]:
    """(secret, fingerprint or None) of a join token `SECRET[.SHA256]`."""
    secret, dot, fp = text.strip().rpartition(".")
    if not dot:
        return text.strip(), None
    return secret, normalize_fingerprint(fp, "the join token's fingerprint")


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a server whose certificate is pinned by its sha256: the pin replaces
    the CA and host name checks, and nothing is sent before the pin matched."""

    def __init__(self, host: str, port: int, fingerprint: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        import hashlib  # loading OpenSSL's digests costs every CLI start ~2 ms: only for a pin
        der = self.sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if got != self.fingerprint:
            self.close()
            raise TlsMismatch(f"the TLS certificate of {self.host}:{self.port} has sha256 fingerprint {got}, but "
                              f"{self.fingerprint} is pinned: refusing to talk to it (a wrong pin, a renewed "
                              "certificate, or someone in between)", expected=self.fingerprint, got=got)


class Server:
    """A connection to a scitq server. Thread-safe: one keep-alive HTTP
    connection per thread.

    `resilient=True` makes a script survive server outages: reads are retried
    until the server answers again (for up to `outage` seconds), and writes go
    through one background queue, in order, retried the same way; they then
    return `Pending` results that block when first used. Submissions carry an
    idempotency key, so a retried submit never creates tasks twice.

    `fingerprint` pins an https server's certificate by the sha256 of its DER
    (hex): the certificate must be that one, whoever signed it and whatever
    names it holds; a different one raises `TlsMismatch` before anything is
    sent. Without it, https verifies the certificate and host name as usual."""

    def __init__(self, url: str = "http://127.0.0.1:5000", token: str | None = None, fingerprint: str | None = None,
                 timeout: float = 30.0, resilient: bool = False, outage: float = 86400.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            parts = urlsplit(url if "://" in url else "http://" + url)
            port = parts.port  # a ValueError for a port that is not a number from 0 to 65535
        except ValueError as e:
            raise ConfigError(f"server URL must look like http://HOST:PORT, not {url!r} ({e})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise ConfigError(f"server URL must look like http://HOST:PORT, not {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self.token = clean_token(token)
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.timeout = timeout
        self.resilient = resilient
        self.outage = outage
        self._sleep = sleep
        self._local = threading.local()
        self._conns: set[http.client.HTTPConnection] = set()
        self._conns_lock = threading.Lock()
        self._writes: queue.Queue | None = None

    # --- transport ------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https and self.fingerprint:
                conn = PinnedHTTPSConnection(self._host, self._port, self.fingerprint, self.timeout)
            elif self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._conns_lock:
                self._conns.discard(conn)

    def interrupt(self) -> None:
        """Break off the request the calling thread is blocked in (a long poll), without the retry a
        dropped connection otherwise gets: it raises ServerUnreachable. Meant for a signal handler,
        which runs in the main thread, between two of its steps."""
        conn = getattr(self._local, "conn", None)
        self._local.interrupted = True
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the connections of every thread that used this client."""
        with self._conns_lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __del__(self) -> None:
        # a client dropped without close(): its sockets are closed here, not left to the collector
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to do
            pass

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """One API call; returns the decoded JSON reply or raises ScitqError.

        In resilient mode, reads are retried through outages and writes are
        queued (see the class docstring)."""
        if self.resilient and method != "GET":
            return self._enqueue(method, path, body, timeout)
        return self._retrying(method, path, body, query, timeout, retry=self.resilient)

    def _retrying(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None,
                  timeout: float | None, retry: bool,
                  on_retry: Callable[[ScitqError, float], None] | None = None) -> Any:
        deadline = time.monotonic() + self.outage
        delay = 0.5
        while True:
            try:
                return self._once(method, path, body, query, timeout)
            except ServerUnreachable as e:
                # A request that may have reached the server is only repeated when
                # repeating it is harmless: reads, and submissions (idempotency key).
                safe = method == "GET" or not e.data.get("sent", True) or \
                    (isinstance(body, dict) and "key" in body)
                if not retry or not safe or time.monotonic() > deadline:
                    raise
                if on_retry is not None:
                    on_retry(e, delay)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)

    def _enqueue(self, method: str, path: str, body: Any, timeout: float | None) -> "Pending":
        if self._writes is None:
            import queue  # resilient mode only
            self._writes = queue.Queue()
            threading.Thread(target=self._writer, name="scitq-writes", daemon=True).start()
        pending = Pending(f"{method} {path}")
        self._writes.put((pending, method, path, body, timeout))
        return pending

    def _writer(self) -> None:
        assert self._writes is not None
        while True:
            pending, method, path, body, timeout = self._writes.get()
            try:
                pending._set(self._retrying(method, path, body, None, timeout, retry=True))
            except BaseException as e:  # delivered to whoever reads the result
                pending._fail(e)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued write has been sent (resilient mode)."""
        if self._writes is None:
            return
        done = Pending("drain")
        self._writes.put((done, "GET", "/health", None, None))
        done.result(timeout)

    def _once(self, method: str, path: str, body: Any, query: Mapping[str, Any] | None,
              timeout: float | None) -> Any:
        target = self._base + API + path
        if query:
            q = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                 for k, v in query.items() if v is not None}
            if q:
                target += "?" + urlencode(q)
        headers = {"Accept": "application/json", "User-Agent": f"scitq/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        self._local.interrupted = False
        for attempt in (1, 2):
            conn = self._conn()
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop()
                break
            except TlsMismatch:
                self._drop()
                raise
            except ssl.SSLCertVerificationError as e:
                self._drop()
                raise TlsUntrusted(
                    f"the TLS certificate of {self.url} is not trusted ({e.verify_message}): pin it with "
                    "[worker] fingerprint or [client] fingerprint (its sha256, which join tokens carry), or "
                    "give the server a certificate from a CA this host trusts") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                # A kept-alive connection the server closed meanwhile: retry once on a new one.
                if attempt == 2 or getattr(self._local, "interrupted", False):
                    raise ServerUnreachable(f"scitq server at {self.url} closed the connection: {e}",
                                            sent=True) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                reason = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else \
                    (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
                # Refused or unresolvable: the request surely never reached the server.
                sent = not isinstance(e, (ConnectionRefusedError, socket.gaierror))
                raise ServerUnreachable(f"cannot reach the scitq server at {self.url}: {reason}",
                                        sent=sent) from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"error": "http", "detail": raw[:200].decode("utf-8", "replace")}
        if status in (502, 503, 504):
            # a proxy whose scitq server is down (an upgrade, a restart) or a server whose database
            # is: an outage to wait out, like a refused connection, never a verdict on the request
            what = payload.get("detail") if isinstance(payload, dict) and payload.get("error") != "http" else None
            raise ServerUnreachable(f"scitq server at {self.url} is unavailable (HTTP {status}"
                                    f"{': ' + str(what) if what else ''})", sent=True)
        if status >= 400:
            kind = payload.get("error", "error") if isinstance(payload, dict) else "error"
            detail = payload.get("detail", f"HTTP {status}") if isinstance(payload, dict) else f"HTTP {status}"
            cls = BY_KIND.get(kind, ScitqError)
            err = cls.__new__(cls)
            ScitqError.__init__(err, detail, **(payload.get("data") or {}))
            err.http_status = status
            raise err
        return payload

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {}, timeout=timeout)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # --- tasks ------------------------------------------------------------------
    def submit(self, command: str, **fields: Any) -> Any:
        """Submit one task; returns {"ids": [id], "count": 1} (a `Pending` in resilient mode)."""
        return self.post("/tasks/bulk", {"tasks": [{"command": command, **fields}], "key": os.urandom(16).hex()},
                         timeout=max(self.timeout, 60))

    def submit_many(self, tasks: Sequence[Mapping[str, Any]], chunk: int = 10_000) -> list[int]:
        """Submit many tasks; returns their ids. Each chunk is all-or-nothing and
        carries an idempotency key, so retries never duplicate tasks."""
        replies = [self.post("/tasks/bulk", {"tasks": list(tasks[start:start + chunk]), "key": os.urandom(16).hex()},
                             timeout=max(self.timeout, 120)) for start in range(0, len(tasks), chunk)]
        return [i for reply in replies for i in reply["ids"]]

    def tasks(self, batch: str | None = None, status: str | Sequence[str] | None = None, name: str | None = None,
              ids: Sequence[int] | None = None, after: int = 0, page: int = 1000,
              limit: int | None = None) -> Iterator[dict]:
        """Iterate over tasks by increasing id, fetching pages as needed."""
        seen = 0
        while True:
            size = page if limit is None else min(page, limit - seen)
            if size <= 0:
                return
            reply = self.get("/tasks", batch=batch, status=status, name=name, ids=ids, after=after, limit=size)
            for t in reply["tasks"]:
                yield t
            seen += len(reply["tasks"])
            if reply["next"] is None:
                return
            after = reply["next"]

    def task(self, task_id: int) -> dict:
        return self.get(f"/tasks/{int(task_id)}")

    def update_task(self, task_id: int, **changes: Any) -> dict:
        return self.patch(f"/tasks/{int(task_id)}", changes)

    def relaunch(self, task_id: int) -> dict:
        return self.post(f"/tasks/{int(task_id)}/relaunch")

    def delete_task(self, task_id: int) -> dict:
        return self.delete(f"/tasks/{int(task_id)}")

    def signal_task(self, task_id: int, action: str) -> dict:
        return self.post(f"/tasks/{int(task_id)}/signal", {"action": action})

    def counts(self, batch: str | None = None) -> dict[str, int]:
        return self.get("/tasks/counts", batch=batch)["counts"]

    def executions(self, task_id: int) -> list[dict]:
        return self.get(f"/tasks/{int(task_id)}/executions")["executions"]

    def execution(self, execution_id: int) -> dict:
        return self.get(f"/executions/{int(execution_id)}")

    def output(self, execution_id: int, stream: str = "stdout", offset: int = 0, limit: int | None = None) -> dict:
        return self.get(f"/executions/{int(execution_id)}/output", stream=stream, offset=offset, limit=limit)

    def task_output(self, task_id: int, stream: str = "stdout", offset: int = 0, limit: int | None = None) -> dict:
        return self.get(f"/tasks/{int(task_id)}/output", stream=stream, offset=offset, limit=limit)

    # --- batches ----------------------------------------------------------------
    def batches(self) -> list[dict]:
        return self.get("/batches")["batches"]

    def batch(self, name: str) -> dict:
        return self.get(f"/batches/{quote(name, safe='')}")

    def create_batch(self, name: str, priority: int = 0) -> dict:
        return self.post("/batches", {"name": name, "priority": priority})

    def _batch_action(self, name: str, action: str, signal: str | None) -> dict:
        return self.post(f"/batches/{quote(name, safe='')}/{action}", {"signal": signal} if signal else {})

    def pause_batch(self, name: str, signal: str | None = None) -> dict:
        return self._batch_action(name, "pause", signal)

    def go_batch(self, name: str) -> dict:
        return self._batch_action(name, "go", None)

    def stop_batch(self, name: str, signal: str | None = "term") -> dict:
        return self._batch_action(name, "stop", signal)

    def delete_batch(self, name: str) -> dict:
        return self.delete(f"/batches/{quote(name, safe='')}")

    # --- workers ----------------------------------------------------------------
    def workers(self, batch: str | None = None, after: int | None = None, limit: int | None = None) -> list[dict]:
        """Every worker (of `batch`), or with `limit` a page of them after id `after`."""
        return self.get("/workers", batch=batch, after=after, limit=limit)["workers"]

    def worker(self, worker_id: int) -> dict:
        return self.get(f"/workers/{int(worker_id)}")

    def update_worker(self, worker_id: int, **changes: Any) -> dict:
        return self.patch(f"/workers/{int(worker_id)}", changes)

    def delete_worker(self, worker_id: int) -> dict:
        return self.delete(f"/workers/{int(worker_id)}")

    def signal_worker(self, worker_id: int, action: str) -> dict:
        return self.post(f"/workers/{int(worker_id)}/signal", {"action": action})

    # --- the worker protocol ------------------------------------------------------
    def register(self, **fields: Any) -> dict:
        return self.post("/workers/register", fields)

    def claim(self, worker_id: int, slots: int, wait: float = 0.0) -> list[dict]:
        return self.claim_reply(worker_id, slots, wait)["executions"]

    def claim_reply(self, worker_id: int, slots: int, wait: float = 0.0, request: str | None = None) -> dict:
        """The whole claim reply: {executions, retry_after (s, when the server says come back
        later)}. Resending a `request` id whose reply was lost returns the same executions."""
        body: dict[str, Any] = {"slots": slots, "wait": wait}
        if request is not None:
            body["request"] = request
        return self.post(f"/workers/{int(worker_id)}/claim", body, timeout=self.timeout + wait)

    def heartbeat(self, worker_id: int, stats: Mapping[str, Any], executions: Iterable[int],
                  acks: Iterable[int] = ()) -> dict:
        return self.post(f"/workers/{int(worker_id)}/heartbeat",
                         {"stats": dict(stats), "executions": list(executions), "acks": list(acks)})

    def rclone_config(self, worker_id: int | None = None) -> dict:
        """The server's rclone config {config, hash, ...}: a worker's own (worker token), or
        the server's (admin token, `worker_id` None)."""
        if worker_id is None:
            return self.get("/rclone-config")
        return self.get(f"/workers/{int(worker_id)}/rclone-config")

    def report(self, execution_id: int, phase: str, **fields: Any) -> dict:
        return self.post(f"/executions/{int(execution_id)}/report", {"phase": phase, **fields})

    def append_output(self, execution_id: int, stream: str, offset: int, data: bytes, final: bool = False) -> dict:
        return self.post(f"/executions/{int(execution_id)}/output",
                         {"stream": stream, "offset": offset, "data": base64.b64encode(data).decode("ascii"),
                          "final": final})

    def outbox(self, worker_id: int, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        return self.post(f"/workers/{int(worker_id)}/outbox", {"items": list(items)})["results"]

    def pyz_info(self) -> dict:
        """The scitq.pyz the server hands out: {version, sha256, size}."""
        return self.get("/pyz/info")

    def pyz(self) -> tuple[dict, bytes]:
        """That scitq.pyz: ({version, sha256, size}, its bytes)."""
        import base64
        reply = self.request("GET", "/pyz", timeout=max(self.timeout, 300.0))
        data = base64.b64decode(reply.pop("data"))
        return reply, data

    def whoami(self) -> dict:
        """The calling token: {name, role, worker_id}."""
        return self.get("/whoami")

    # --- administration -----------------------------------------------------------
    def create_join_token(self, uses: int = 1, ttl: float = 3600, batch: str | None = None,
                          name: str | None = None) -> dict:
        """Mint a join token: {token, join_token, fingerprint, server_url}."""
        body: dict[str, Any] = {"uses": uses, "ttl": ttl}
        if batch is not None:
            body["batch"] = batch
        if name is not None:
            body["name"] = name
        return self.post("/join-tokens", body)

    def tokens(self) -> list[dict]:
        return self.get("/tokens")["tokens"]

    def create_token(self, name: str, role: str) -> dict:
        return self.post("/tokens", {"name": name, "role": role})

    def revoke_token(self, name: str) -> dict:
        return self.delete(f"/tokens/{quote(name, safe='')}")

    def events(self, target: str | None = None, after: int = 0, limit: int = 100) -> list[dict]:
        return self.get("/events", target=target, after=after, limit=limit)["events"]

    def health(self) -> dict:
        return self.get("/health")

    # --- jobs and host keys (admin) ---------------------------------------------------
    def jobs(self, status: str | None = None, after: int = 0, limit: int = 100) -> list[dict]:
        return self.get("/jobs", status=status, after=after, limit=limit)["jobs"]

    def job(self, job_id: int) -> dict:
        return self.get(f"/jobs/{int(job_id)}")

    def create_job(self, kind: str, target: str, params: dict | None = None) -> dict:
        return self.post("/jobs", {"kind": kind, "target": target, **({"params": params} if params else {})})

    def retry_job(self, job_id: int) -> dict:
        """{job, machine}: what the server made to do a failed job again (409 where it cannot)."""
        return self.post(f"/jobs/{int(job_id)}/retry", {})

    def update_job(self, job_id: int, **changes: Any) -> dict:
        """status, step, progress (0..1), message: what is given changes."""
        return self.patch(f"/jobs/{int(job_id)}", {k: v for k, v in changes.items() if v is not None})

    def delete_job(self, job_id: int) -> dict:
        return self.delete(f"/jobs/{int(job_id)}")

    def job_log(self, job_id: int, after: int = 0, limit: int = 1000) -> list[dict]:
        """Log lines numbered after `after`: {seq, at, line}."""
        return self.get(f"/jobs/{int(job_id)}/log", after=after, limit=limit)["lines"]

    def append_job_log(self, job_id: int, lines: Sequence[str]) -> int:
        # the API takes no empty line: a blank one is kept as one space
        return self.post(f"/jobs/{int(job_id)}/log", {"lines": [ln or " " for ln in lines]})["log_lines"]

    def trust_host_key(self, host: str, key_type: str, key_data: str) -> dict:
        """The key recorded for `host`, this one on first contact; Conflict when another is."""
        return self.post("/host-keys", {"host": host, "key_type": key_type, "key_data": key_data})

    def host_key(self, host: str) -> dict:
        return self.get(f"/host-keys/{quote(host, safe='')}")

    def forget_host_key(self, host: str) -> dict:
        return self.delete(f"/host-keys/{quote(host, safe='')}")

    # --- waiting ---------------------------------------------------------------------
    def join(self, task_ids: Iterable[int], retry: int = 0, interval: float = 2.0,
             on_event: Callable[[dict], None] | None = None, timeout: float | None = None) -> dict[str, int]:
        """Wait until every task is finished; relaunch failed ones up to `retry` times each.
        Returns the final counts by status.

        Progress goes to `on_event` as plain dicts, the progress convention of
        `scitq_app.cli.progress` (which renders them: a bar on a terminal, periodic lines
        otherwise, JSON lines on request): `progress` after each poll, `outage` while the
        server cannot be reached (the wait goes on, retried with backoff for up to
        `outage` seconds), `resumed` when it answers again, `done` at the end. Without
        `on_event`, progress is logged at INFO (logger `scitq_app.client`); nothing is
        written to a terminal by the library itself."""
        ids = sorted({int(i) for i in task_ids})
        emit = on_event or _log_event
        relaunched: dict[int, int] = {}
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        final = ("succeeded", "failed", "canceled")
        down = [False]

        def call(method: str, path: str, body: Any, query: Mapping[str, Any] | None) -> Any:
            def unreachable(error: ScitqError, delay: float) -> None:
                down[0] = True
                emit({"event": "outage", "what": "tasks", "error": error.message, "retry_in": delay})
            reply = self._retrying(method, path, body, query, None, retry=True, on_retry=unreachable)
            if down[0]:
                down[0] = False
                emit({"event": "resumed", "what": "tasks"})
            return reply

        while True:
            statuses: dict[int, str] = {}
            for start in range(0, len(ids), 1000):
                for t in call("GET", "/tasks", None, {"ids": ids[start:start + 1000], "limit": 1000})["tasks"]:
                    statuses[t["id"]] = t["status"]
            for tid, status in statuses.items():
                if status == "failed" and relaunched.get(tid, 0) < retry:
                    relaunched[tid] = relaunched.get(tid, 0) + 1
                    call("POST", f"/tasks/{tid}/relaunch", {}, None)
                    statuses[tid] = "pending"
            counts: dict[str, int] = {}
            for status in statuses.values():
                counts[status] = counts.get(status, 0) + 1
            done = sum(counts.get(s, 0) for s in final)
            event = {"event": "progress", "what": "tasks", "unit": "tasks", "done": done, "total": len(ids),
                     "detail": dict(sorted(counts.items())), "elapsed": round(time.monotonic() - started, 3)}
            emit(event)
            if done == len(statuses) == len(ids) or (len(statuses) < len(ids) and done == len(statuses)):
                emit(dict(event, event="done", relaunched=sum(relaunched.values())))
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - done} task(s) still unfinished")
            self._sleep(interval)


def _log_event(event: dict) -> None:
    """join()'s progress when nobody asked for events: INFO log lines, no terminal codes."""
    import logging
    logger = logging.getLogger(__name__)
    if event["event"] == "outage":
        logger.warning("server unreachable, retrying in %.0f s: %s", event["retry_in"], event["error"])
    elif event["event"] == "resumed":
        logger.info("server reachable again")
    elif event["event"] in ("progress", "done"):
        parts = ", ".join(f"{n} {s}" for s, n in event["detail"].items())
        logger.info("%d/%d finished (%s)", event["done"], event["total"], parts)


class Pending:
    """The result of a write queued in resilient mode: blocks when first used."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The server's reply (raises what the request raised)."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self.what} is still queued")
        if self._error is not None:
            raise self._error
        return self._value

    def __getitem__(self, key: Any) -> Any:
        return self.result()[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.result().get(key, default)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.result())

    def __len__(self) -> int:
        return len(self.result())

    def __repr__(self) -> str:
        return f"<Pending {self.what}: {'done' if self.done() else 'queued'}>"
