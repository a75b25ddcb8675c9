"""Server CPU per request with many idle keep-alive connections open, as a fleet's workers hold them.

A real `scitq server` process (pinned to CPU 0; this generator on CPU 1) on a database of WORKERS
workers holding 2 running executions each. For each count of idle connections, IDLE sockets are
opened and each makes one request (as a worker's threads do), then stay open and silent while
CONCURRENCY clients send heartbeats (each with its worker's real execution list) over keep-alive
connections for SECONDS (`--per-request`: also with a new connection for each request, as nginx
opens them without upstream keepalive). Reported: requests/s, the server's CPU per request (user +
system, from /proc), latency p50/p99.

`--tree PATH` runs the same servers from another checkout too (e.g. before a change), alternated
round by round, for ratios measured in one run:

    python3 bench/connections.py --idle 0,1000,2500 --tree /path/to/old/checkout
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from fleet import STATS, Pool, open_idle, pin  # noqa: E402
from harness import cpu_seconds, database, pct  # noqa: E402

from tests.support.processes import ServerProcess  # noqa: E402


def prepare(url: str, workers: int) -> list[tuple[int, str, list[int]]]:
    from scitq_app.store import open_store

    store = open_store(url)
    store.init_schema(on_admin_secret=lambda _secret: None)
    store.create_batch("b")
    regs = [store.register_worker({"name": f"w{i}", "concurrency": 4, "prefetch": 0, "batch": "b"})
            for i in range(workers)]
    store.create_tasks([{"command": f"echo {i}", "batch": "b"} for i in range(workers * 2)])
    out = [(w.id, token, [e["id"] for e in store.claim(w.id, 2, 86400.0)]) for w, token in regs]
    store.close()
    return out


async def load(port: int, workers: list[tuple[int, str, list[int]]], concurrency: int, seconds: float,
               lat: list[float], fresh: bool) -> int:
    pool = Pool(port, concurrency)
    stop = time.monotonic() + seconds
    done = [0]

    async def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            wid, token, held = workers[i % len(workers)]
            i += concurrency
            t0 = time.monotonic()
            status, reply, _ = await pool.request("POST", f"/workers/{wid}/heartbeat", token,
                                                  {"stats": STATS, "executions": held, "acks": []})
            if status != 200:
                raise SystemExit(f"heartbeat answered {status}: {reply}")
            lat.append(time.monotonic() - t0)
            done[0] += 1
            if fresh and pool.idle:  # a connection per request, as nginx without upstream keepalive
                pool.idle.pop()[1].close()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return done[0]


def measure(url: str, workdir: str, tree: str, idle: int, workers: list[tuple[int, str, list[int]]],
            concurrency: int, seconds: float, fresh: bool = False) -> dict:
    proc = ServerProcess(url, workdir, env={"PYTHONPATH": tree, "SCITQ_SERVER_THREADS": "48"}).start()
    try:
        assert proc.proc is not None
        pin(proc.proc.pid, 0)
        socks = open_idle(proc.port, workers[0][1], idle)
        try:
            lat: list[float] = []
            c0, w0 = cpu_seconds(proc.proc.pid), time.monotonic()
            n = asyncio.run(load(proc.port, workers, concurrency, seconds, lat, fresh))
            cpu, wall = cpu_seconds(proc.proc.pid) - c0, time.monotonic() - w0
        finally:
            for s in socks:
                s.close()
    finally:
        proc.stop()
    return {"tree": tree, "idle": idle, "connection_per_request": fresh, "requests_per_s": round(n / wall),
            "cpu_ms_per_request": round(cpu * 1000 / n, 3), "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backend", nargs="?", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--idle", default="0,1000,2500", help="idle connections to hold, comma-separated counts")
    p.add_argument("--workers", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tree", help="another scitq checkout to measure too, alternated with this one")
    p.add_argument("--per-request", action="store_true",
                   help="also measure with a new connection per request (nginx without upstream keepalive)")
    a = p.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    trees = [ROOT] + ([os.path.abspath(a.tree)] if a.tree else [])
    with tempfile.TemporaryDirectory(prefix="scitq-conns-") as workdir, database(a.backend, workdir) as url:
        workers = prepare(url, a.workers)
        for _ in range(a.rounds):
            for idle in (int(x) for x in a.idle.split(",")):
                for tree in trees:
                    for fresh in (False, True) if a.per_request else (False,):
                        print(json.dumps(measure(url, workdir, tree, idle, workers, a.concurrency, a.seconds,
                                                 fresh)), flush=True)


if __name__ == "__main__":
    main()
