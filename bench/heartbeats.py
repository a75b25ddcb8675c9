"""2,000 simulated workers heart-beating every 5 s (target: server CPU < 1 core, no heartbeat > 1 s).

A load script speaks the worker protocol: it registers N workers, then each
sends a heartbeat (with stats) every 5 s, spread evenly, from a pool of threads
with keep-alive connections. The server's CPU time is read from /proc.

    python3 bench/heartbeats.py [sqlite|postgres ...] [--workers N] [--seconds S]
"""
from __future__ import annotations

import argparse
import threading
import time

from harness import cpu_seconds, server, summary

from scitq_app.client import Server

STATS = {"cpu": 42.0, "iowait": 1.0, "load": [3.1, 2.9, 2.5], "mem": 63.2, "disk": 41.0, "disk_free_gb": 812.4,
         "net_rx_mbs": 12.3, "net_tx_mbs": 1.2, "version": "bench"}


def run(backend: str, n: int, seconds: float, threads: int) -> None:
    with server(backend, env={"SCITQ_SERVER_THREADS": "48"}) as (proc, admin, _dir):
        reg = []
        for i in range(n):
            r = admin.register(name=f"sim-{i:05d}", concurrency=4)
            reg.append((r["worker"]["id"], r["token"]))
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def beat(share: list[tuple[int, str]]) -> None:
            clients = {wid: Server(proc.url, tok, timeout=30) for wid, tok in share}
            period = 5.0
            start = time.monotonic()
            k = 0
            while True:
                for j, (wid, _) in enumerate(share):
                    due = start + k * period + j * period / len(share)
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if time.monotonic() > stop_at:
                        for c in clients.values():
                            c.close()
                        return
                    t0 = time.monotonic()
                    try:
                        clients[wid].heartbeat(wid, STATS, [], [])
                    except Exception as e:  # noqa: BLE001 - counted and shown
                        with lock:
                            errors.append(str(e))
                        continue
                    with lock:
                        latencies.append(time.monotonic() - t0)
                k += 1

        shares = [reg[i::threads] for i in range(threads)]
        cpu0, t0 = cpu_seconds(proc.proc.pid), time.monotonic()
        pool = [threading.Thread(target=beat, args=(s,)) for s in shares]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        cpu = (cpu_seconds(proc.proc.pid) - cpu0) / (time.monotonic() - t0)
        rate = len(latencies) / (time.monotonic() - t0)
        print(f"{backend:8}  {n} workers every 5 s ({rate:.0f} heartbeats/s for {seconds:.0f} s): "
              f"server CPU {cpu:.2f} core; latency {summary(latencies)}; errors {len(errors)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("backends", nargs="*", default=["sqlite", "postgres"])
    ap.add_argument("--workers", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=40)
    a = ap.parse_args()
    for b in a.backends:
        run(b, a.workers, a.seconds, a.threads)
