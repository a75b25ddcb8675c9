"""A fleet over HTTP: thousands of simulated workers, submitters and listers against real server
processes on a database filled like a busy lab's, for minutes.

Fill (as bench/scale.py): TASKS tasks in mixed statuses, EXECUTIONS executions, as many events,
WORKERS workers holding the running executions. The workers belong to the batch `fleet`, empty at
first, so they are idle: they heart-beat at the interval the server sets (each with its real
execution list) and claim as the server tells them (a long-poll when the process has room for one,
else `retry_after`). Submitters add one task at a time to `fleet` (pickup latency: from sending the
submission to a claim reply that holds it); the worker that took it reports it running then
succeeded. Listers page through running tasks, counts by batch and workers.

The fleet starts at once: every worker claims in its first 5 s, before the server's replies
spread them (`retry_after`, heartbeat interval). The first `--warmup` s (30: longer than the
heartbeat interval of 5,000 workers) are reported apart, under `warmup`; the figures are those of
the `--seconds` that follow (CPU included). `--timeline FILE` writes every request's send time,
kind and latencies, to see whether slow ones come together.

Server side: on PostgreSQL, API processes (`--api`, default 2) and one dispatcher process; on
SQLite, one server with its dispatcher. The servers are pinned to CPU 0 and this load generator
to CPU 1 (`taskset`), so the server's share of a 2-core machine is what /proc says; the
database's own CPU (PostgreSQL's backends) is reported beside, and so are the generator's CPU and
how late its event loop ran (what of a latency is the generator's own). `--no-pin` leaves the
servers on both cores: measured, the generator's loop then runs 40-50 ms late at the median (it
shares its core with the servers' threads) and every latency it measures is worse, so the
servers stay pinned by default.

    python3 bench/fleet.py postgres --tasks 1000000 --workers 5000 --seconds 300
    python3 bench/fleet.py sqlite --tasks 1000000 --workers 1000 --seconds 300
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from harness import cpu_seconds, database, pct  # noqa: E402
from scale import fill_statements, run_sql  # noqa: E402

from tests.support.processes import ServerProcess, scitq_env  # noqa: E402

STATS = {"cpu": 12.0, "iowait": 0.5, "load": [0.3, 0.2, 0.1], "mem": 21.0, "disk": 30.0, "disk_free_gb": 400.0,
         "version": "bench"}


# --- an asyncio HTTP/1.1 client with a keep-alive pool per server process ---------------------------
CLOSED = "the server closed the connection"


class Pool:
    """At most `size` keep-alive connections to one API process (what nginx's upstream keepalive
    gives a real fleet: the server never sees thousands of sockets)."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)
        self.stale = 0  # kept connections the server had closed (idle over its timeout): sent again

    async def request(self, method: str, path: str, token: str, body: Any = None,
                      timeout: float = 60) -> tuple[int, Any, float]:
        """(status, reply, when a connection was free: the time before it is this client's queue)."""
        async with self.slots:
            sent = time.monotonic()
            while True:
                kept = bool(self.idle)
                conn = self.idle.pop() if kept else await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    status, reply = await asyncio.wait_for(self._exchange(conn, method, path, token, body), timeout)
                except BaseException as e:
                    conn[1].close()
                    # as scitq's client does: a kept connection the server closed meanwhile (waitress
                    # closes those idle 120 s) is retried on a new one
                    if kept and isinstance(e, ConnectionError) and str(e) == CLOSED:
                        self.stale += 1
                        continue
                    raise
                self.idle.append(conn)
                return status, reply, sent

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, path: str,
                        token: str, body: Any) -> tuple[int, Any]:
        reader, writer = conn
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} /api/v1{path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n")
        writer.write(head.encode() + data)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError(CLOSED)
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            payload = b"".join(parts)
        else:
            payload = await reader.readexactly(length)
        return status, json.loads(payload) if payload else None


class Load:
    """The simulated fleet, submitters and listers; latencies by kind, in seconds."""

    def __init__(self, pools: list[Pool], admin: str, workers: list[tuple[int, str, list[int]]],
                 seconds: float, submitters: int, listers: int, warmup: float = 0.0,
                 mark: Callable[[str], None] | None = None) -> None:
        self.pools = pools
        self.admin = admin
        self.workers = workers
        self.seconds = seconds  # measured, after `warmup` s: `mark` is called with "steady", then "end"
        self.warmup = warmup
        self.mark = mark
        self.submitters = submitters
        self.listers = listers
        # every request: (when sent, in s since the run's start; kind; latency; the same from when a
        # pooled connection was free, i.e. without the wait for one)
        self.samples: list[tuple[float, str, float, float]] = []
        # how late this process's own event loop runs what is due: what of a latency is the generator's
        self.loop_lag: list[float] = []
        self.spins: list[float] = []  # when an idle worker's long-poll ended empty at once: must not be
        self.errors: list[tuple[float, str]] = []
        self.submitted: dict[str, float] = {}  # task name -> when its submission was sent
        self.pickup: list[tuple[float, float]] = []  # (when submitted, seconds until a claim took it)
        self.started = 0.0
        self.stop_at = 0.0
        self.rng = random.Random(7)

    def pool(self) -> Pool:
        return self.pools[self.rng.randrange(len(self.pools))]

    async def call(self, kind: str, method: str, path: str, token: str, body: Any = None,
                   timeout: float = 60) -> Any:
        t0 = time.monotonic()
        try:
            status, reply, sent = await self.pool().request(method, path, token, body, timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            self.errors.append((t0 - self.started, f"{kind}: {type(e).__name__} {e}"))
            return None
        if status >= 400:
            self.errors.append((t0 - self.started, f"{kind}: HTTP {status} {reply}"))
            return None
        done = time.monotonic()
        self.samples.append((t0 - self.started, kind, done - t0, done - sent))
        return reply

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    async def nap(self, seconds: float) -> None:
        """Sleep, but not past the end of the run."""
        await asyncio.sleep(max(0.0, min(seconds, self.stop_at - time.monotonic())))

    async def worker(self, wid: int, token: str, held: list[int]) -> None:
        interval = [25.0]
        mine = list(held)

        async def beats() -> None:
            await self.nap(self.rng.uniform(0, interval[0]))
            while self.running():
                reply = await self.call("heartbeat", "POST", f"/workers/{wid}/heartbeat", token,
                                        {"stats": STATS, "executions": mine, "acks": []})
                if reply:
                    interval[0] = float(reply.get("heartbeat", interval[0]))
                await self.nap(interval[0] * self.rng.uniform(0.9, 1.1))  # as scitq's worker (+-10 %)

        async def claims() -> None:
            await self.nap(self.rng.uniform(0, 5))
            while self.running():
                t0 = time.monotonic()
                reply = await self.call("claim", "POST", f"/workers/{wid}/claim", token,
                                        {"slots": 2, "wait": 5.0, "request": uuid.uuid4().hex}, timeout=70)
                if reply is None:
                    await self.nap(5)
                    continue
                got = time.monotonic()
                # what kind of claim it was: told to come back (the server's own latency), given
                # work (maybe after waiting for it), or a long-poll that ended empty (the sample
                # `call` just added, with no await since)
                kind = "claim_later" if "retry_after" in reply else "claim_work" if reply["executions"] \
                    else "claim_empty"
                self.samples[-1] = (self.samples[-1][0], kind, *self.samples[-1][2:])
                if kind == "claim_empty" and got - t0 < 4:
                    self.spins.append(t0 - self.started)
                for e in reply["executions"]:
                    sent = self.submitted.pop(e["command"].split()[-1], None)
                    if sent is not None:
                        self.pickup.append((sent - self.started, got - sent))
                    mine.append(e["id"])
                    await self.call("report", "POST", f"/executions/{e['id']}/report", token, {"phase": "running"})
                    await self.nap(0.2)
                    await self.call("report", "POST", f"/executions/{e['id']}/report", token,
                                    {"phase": "succeeded", "return_code": 0})
                    mine.remove(e["id"])
                if "retry_after" in reply:
                    await self.nap(float(reply["retry_after"]))

        await asyncio.gather(beats(), claims())

    async def submitter(self, k: int) -> None:
        n = 0
        while self.running():
            await self.nap(self.rng.uniform(1.0, 3.0))
            name = f"s{k}-{n}"
            n += 1
            self.submitted[name] = time.monotonic()
            await self.call("submit", "POST", "/tasks", self.admin,
                            {"command": f"echo {name}", "batch": "fleet", "name": name})

    async def lister(self, k: int) -> None:
        pages = [("list_running_page", "/tasks?status=running&limit=100"), ("batches", "/batches"),
                 ("list_pending_page", "/tasks?status=pending&batch=b3&limit=100"),
                 ("workers_of_batch", "/workers?batch=fleet&limit=100"), ("counts", "/tasks/counts")]
        while self.running():
            await self.nap(self.rng.uniform(0.5, 1.5))
            kind, path = pages[self.rng.randrange(len(pages))]
            await self.call(kind, "GET", path, self.admin)

    async def lag(self) -> None:
        while self.running():
            t0 = time.monotonic()
            await asyncio.sleep(0.05)
            self.loop_lag.append(time.monotonic() - t0 - 0.05)

    async def steady(self) -> None:
        await self.nap(self.warmup)
        if self.mark:
            self.mark("steady")
        await self.nap(self.seconds)
        if self.mark:
            self.mark("end")  # before the long-polls still open end

    async def run(self) -> None:
        self.started = time.monotonic()
        self.stop_at = self.started + self.warmup + self.seconds
        await asyncio.gather(*(self.worker(*w) for w in self.workers),
                             *(self.submitter(k) for k in range(self.submitters)),
                             *(self.lister(k) for k in range(self.listers)), self.lag(), self.steady())

    def figures(self, since: float, until: float) -> dict[str, Any]:
        """Latencies (ms) and counts of the requests sent between `since` and `until` s."""
        lat: dict[str, list[float]] = {}
        wire: dict[str, list[float]] = {}
        for at, kind, total, free in self.samples:
            if since <= at < until:
                lat.setdefault(kind, []).append(total)
                wire.setdefault(kind, []).append(free)

        def ms(kind: str, q: float, of: dict[str, list[float]] = lat) -> float | None:
            return round(pct(of[kind], q) * 1000, 1) if of.get(kind) else None
        pickup = [p for at, p in self.pickup if since <= at < until]
        return {
            "counts": {kind: len(v) for kind, v in sorted(lat.items())},
            "spins": sum(since <= at < until for at in self.spins),
            "errors": sum(since <= at < until for at, _ in self.errors),
            "heartbeat_ms": {"p50": ms("heartbeat", 50), "p99": ms("heartbeat", 99),
                             "p99_from_free_connection": ms("heartbeat", 99, wire),
                             "max": round(max(lat.get("heartbeat", [0])) * 1000, 1)},
            "claim_ms": {kind: {"p50": ms(kind, 50), "p99": ms(kind, 99),
                                "p99_from_free_connection": ms(kind, 99, wire)}
                         for kind in ("claim_later", "claim_work", "claim_empty")},
            "submit_ms": {"p50": ms("submit", 50), "p99": ms("submit", 99)},
            "pages_ms_p95": {k: ms(k, 95) for k in ("list_running_page", "list_pending_page", "batches",
                                                    "workers_of_batch", "counts")},
            "pickup_s": {"n": len(pickup), "p50": round(pct(pickup, 50), 3) if pickup else None,
                         "p99": round(pct(pickup, 99), 3) if pickup else None},
        }


# --- processes ------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def postgres_pids(url: str) -> list[int]:
    """The PostgreSQL processes serving `url`'s port (postmaster and its children)."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["pgrep", "-f", "--", f"-p {port} "], capture_output=True, text=True).stdout.split()
    roots = [int(p) for p in out]
    pids = list(roots)
    for root in roots:
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(root)], capture_output=True,
                                                text=True).stdout.split()]
    return pids


def open_idle(port: int, token: str, n: int) -> list[socket.socket]:
    """`n` keep-alive connections that each make one request, then stay open and silent."""
    socks = []
    request = f"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request.encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        socks.append(sock)
    return socks


def pin(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def prepare(url: str, tasks: int, executions: int, workers: int) -> tuple[str, list[tuple[int, str, list[int]]]]:
    from scitq_app.store import open_store

    store = open_store(url)
    secret: list[str] = []
    store.init_schema(on_admin_secret=secret.append)
    store.create_batch("fleet")
    # the fill deals its running tasks (1 %) to these workers in turn: each keeps room for 2 more
    # (1 M tasks on 1,000 workers are 10 running each, which a concurrency of 4 left no room beside)
    concurrency = -(-tasks // 100 // workers) + 2
    regs = [store.register_worker({"name": f"sim-{i:05d}", "concurrency": concurrency, "prefetch": 0,
                                   "batch": "fleet"}) for i in range(workers)]
    # the fill's worker rows are these: skip its own worker insert
    run_sql(url, fill_statements(store.dialect, tasks, executions, workers)[1:])
    held: dict[int, list[int]] = {}
    for t in store.list_tasks(statuses=["running"], limit=tasks):
        if t.current_execution_id is not None:
            e = store.get_execution(t.current_execution_id)
            if e.worker_id is not None:
                held.setdefault(e.worker_id, []).append(e.id)
    store.close()
    return secret[0], [(w.id, token, held.get(w.id, [])) for w, token in regs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backend", choices=("sqlite", "postgres"))
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--executions", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=5_000)
    p.add_argument("--seconds", type=float, default=300, help="the measured time, after the warm-up")
    p.add_argument("--warmup", type=float, default=30,
                   help="seconds before the measure: the fleet starts at once (every worker claims in its "
                        "first 5 s) and takes the rhythm the server sets (a heartbeat interval: 25 s at 5,000 "
                        "workers); reported apart")
    p.add_argument("--api", type=int, default=2, help="API processes (PostgreSQL; SQLite runs one)")
    p.add_argument("--submitters", type=int, default=10)
    p.add_argument("--listers", type=int, default=10)
    p.add_argument("--pool", type=int, default=90, help="keep-alive connections per API process")
    p.add_argument("--no-pin", action="store_true", help="leave the server processes on both cores")
    p.add_argument("--idle-connections", type=int, default=0,
                   help="idle keep-alive connections held open to each API process (as workers connected "
                        "directly hold theirs), besides the pool")
    p.add_argument("--timeline", metavar="FILE",
                   help="write every request's send time, kind and latencies there (JSON lines, after a "
                        "first [\"start\", CLOCK_MONOTONIC]), to see whether the slow ones come together")
    p.add_argument("--tree", default=ROOT, help="the scitq checkout to run the servers from (default: this one)")
    a = p.parse_args()
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="scitq-fleet-") as workdir, database(a.backend, workdir) as url:
        t0 = time.perf_counter()
        admin, workers = prepare(url, a.tasks, a.executions, a.workers)
        fill_s = time.perf_counter() - t0
        env = {"SCITQ_SERVER_THREADS": "48", "PYTHONPATH": os.path.abspath(a.tree)}
        procs: list[ServerProcess] = []
        if a.backend == "sqlite":
            procs.append(ServerProcess(url, workdir, env=env).start())
        else:
            for _ in range(a.api):
                procs.append(ServerProcess(url, workdir, env=env, args=["--no-dispatcher"]).start())
        dispatcher = None
        if a.backend == "postgres":
            dispatcher = subprocess.Popen([sys.executable, "-m", "scitq_app", "dispatcher"], cwd=workdir,
                                          env=scitq_env(SCITQ_SERVER_DATABASE=url, XDG_STATE_HOME=workdir,
                                                        PYTHONPATH=os.path.abspath(a.tree)),
                                          stdout=open(os.path.join(workdir, "dispatcher.log"), "ab"),
                                          stderr=subprocess.STDOUT)
        server_pids = [sp.proc.pid for sp in procs if sp.proc] + ([dispatcher.pid] if dispatcher else [])
        if not a.no_pin:
            for pid in server_pids:
                pin(pid, 0)
        idle = [open_idle(sp.port, admin, a.idle_connections) for sp in procs]
        # CPU times of the servers, PostgreSQL and this process, with the clock, when the measure
        # starts and ends
        at: dict[str, tuple[dict[int, float], dict[int, float], float, float]] = {}

        def mark(moment: str) -> None:
            db_now = postgres_pids(url) if a.backend == "postgres" else []
            at[moment] = ({pid: cpu_seconds(pid) for pid in server_pids},
                          {pid: cpu_seconds(pid) for pid in db_now if os.path.exists(f"/proc/{pid}")},
                          time.monotonic(), time.process_time())
        try:
            load = Load([Pool(sp.port, a.pool) for sp in procs], admin, workers, a.seconds, a.submitters, a.listers,
                        a.warmup, mark)
            asyncio.run(load.run())
            (cpu0, db0, w0, own0), (cpu1, db1, w1, own1) = at["steady"], at["end"]
            wall, own = w1 - w0, own1 - own0
            server_cpu = sum(cpu1[pid] - cpu0[pid] for pid in server_pids)
            db_cpu = sum(t - db0.get(pid, 0.0) for pid, t in db1.items())
            rss = sum(rss_mb(pid) for pid in server_pids)
        finally:
            for socks in idle:
                for sock in socks:
                    sock.close()
            for sp in procs:
                sp.stop()
            if dispatcher:
                dispatcher.terminate()
                dispatcher.wait(10)
    measured = load.figures(a.warmup, a.warmup + a.seconds)
    counts = measured["counts"]
    protocol = sum(n for k, n in counts.items() if k in ("heartbeat", "report") or k.startswith("claim_"))
    if a.timeline:
        with open(a.timeline, "w") as f:
            # the run's start on this machine's monotonic clock, to set other processes' records against
            f.write(json.dumps(["start", load.started]) + "\n")
            for sample in load.samples:
                f.write(json.dumps([round(sample[0], 4), sample[1], round(sample[2], 4), round(sample[3], 4)]) + "\n")

    warm = load.figures(0, a.warmup)
    slow = [at for at, kind, total, _ in load.samples
            if at < a.warmup and total > 0.1 and kind in ("heartbeat", "claim_later")]
    result = {
        "backend": a.backend, "tasks": a.tasks, "workers": a.workers, "api_processes": len(procs),
        "servers_pinned": not a.no_pin, "idle_connections_per_process": a.idle_connections,
        "tree": os.path.abspath(a.tree), "fill_s": round(fill_s, 1), "warmup_s": a.warmup, "seconds": round(wall, 1),
        "requests_per_s": round(sum(n for k, n in counts.items() if k not in ("claim_work", "claim_empty")) / wall, 1),
        "server_cores": round(server_cpu / wall, 3),
        "server_cpu_ms_per_protocol_request": round(server_cpu * 1000 / max(1, protocol), 3),
        "server_rss_mb": round(rss, 1), "postgres_cores": round(db_cpu / wall, 3) if a.backend == "postgres" else None,
        "load_generator": {"cores": round(own / wall, 3),
                           "loop_lag_ms": {"p50": round(pct(load.loop_lag, 50) * 1000, 1),
                                           "p99": round(pct(load.loop_lag, 99) * 1000, 1)}},
        **measured,
        "not_picked_up": len(load.submitted), "first_errors": [e for _, e in load.errors[:5]],
        "stale_connections_sent_again": sum(pool.stale for pool in load.pools),
        # the start: every worker's first claim in 5 s, before the server's rhythm spreads them
        "warmup": {"heartbeat_ms": warm["heartbeat_ms"], "claim_later_ms": warm["claim_ms"]["claim_later"],
                   "errors": warm["errors"], "spins": warm["spins"],
                   "last_slow_at_s": round(max(slow), 1) if slow else None},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
