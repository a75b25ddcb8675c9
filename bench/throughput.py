"""Worker throughput and latencies (targets from the worker issue):

- 1,000 trivial tasks (`true`) on 1 worker x 8 slots: >= 100 tasks/s;
- one trivial task submit -> succeeded on an idle worker: p50 < 0.3 s;
- a printed line visible through the API: p50 < 1 s, max < 2 s.

    python3 bench/throughput.py [sqlite|postgres ...] [--tasks N]
"""
from __future__ import annotations

import argparse
import time

from harness import server, summary, wait_all, worker


def run(backend: str, n: int, prefetch: int) -> None:
    with server(backend) as (proc, client, workdir):
        w = worker(proc.url, workdir, "bench", concurrency=8, prefetch=prefetch, heartbeat=5)
        while not client.workers():
            time.sleep(0.05)
        # 1. throughput
        t0 = time.monotonic()
        client.submit_many([{"command": "true", "batch": "through"} for _ in range(n)], chunk=n)
        end = wait_all(client, "through", n)
        rate = n / (end - t0)
        # 2. latency of one task on an idle worker
        lat = []
        for i in range(20):
            t0 = time.monotonic()
            tid = client.submit("true", batch=f"lat{i}")["ids"][0]
            while client.task(tid)["status"] != "succeeded":
                time.sleep(0.005)
            lat.append(time.monotonic() - t0)
        # 3. output visibility: the task prints its own clock every 0.25 s
        tid = client.submit("for i in $(seq 1 40); do date +%s.%N; sleep 0.25; done", shell="sh",
                            batch="vis")["ids"][0]
        seen, offset, delays = set(), 0, []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                part = client.task_output(tid, "stdout", offset)
            except Exception:
                time.sleep(0.02)
                continue
            now = time.time()
            offset = part["next_offset"]
            for line in part["data"].splitlines():
                if line and line not in seen:
                    seen.add(line)
                    delays.append(now - float(line))
            if part["complete"]:
                break
            time.sleep(0.02)
        w.stop()
        print(f"{backend:8}  {n} trivial tasks, 1 worker x 8 slots (prefetch {prefetch}): {rate:.0f} tasks/s")
        print(f"{backend:8}  submit -> succeeded on an idle worker: {summary(lat)}")
        print(f"{backend:8}  printed line visible through the API: {summary(delays)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("backends", nargs="*", default=["sqlite", "postgres"])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--prefetch", type=int, default=0, help="tasks the worker claims ahead (default 0)")
    a = ap.parse_args()
    for b in a.backends:
        run(b, a.tasks, a.prefetch)
