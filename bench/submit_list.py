"""Bulk-submit tasks in one request, then list them page by page (targets: 10,000 in < 2 s;
100,000 in < 5 s with the server's RSS back under 150 MB after it).

    python3 bench/submit_list.py [sqlite|postgres ...] [--tasks N] [--page N] [--tree PATH]

`--tree PATH` also runs the same against the server of another checkout of scitq (e.g. the
code before a change), in the same run, and prints the ratios.
"""
from __future__ import annotations

import argparse
import os
import time

from harness import ROOT, server


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


def run(backend: str, n: int, page: int, tree: str) -> dict[str, float]:
    with server(backend, env={"PYTHONPATH": tree}) as (proc, client, _dir):
        assert proc.proc is not None
        pid = proc.proc.pid
        specs = [{"command": f"echo {i}", "name": f"t{i}", "batch": "bench", "inputs": [f"s3://b/in/{i}.fq"]}
                 for i in range(n)]
        idle = rss_mb(pid)
        t0 = time.perf_counter()
        ids = client.submit_many(specs, chunk=n)
        submit = time.perf_counter() - t0
        assert len(ids) == n
        time.sleep(1)  # the request's thread has returned its memory (or not): what stays is what counts
        after, peak = rss_mb(pid), rss_mb(pid, "VmHWM")
        t0 = time.perf_counter()
        seen = 0
        for _ in client.tasks(batch="bench", page=page):
            seen += 1
        pages = -(-seen // page)
        listing = time.perf_counter() - t0
        assert seen == n, seen
        print(f"{backend:8} {os.path.basename(tree.rstrip('/')):14} submit {n} tasks in one request: {submit:.2f} s "
              f"({n / submit:,.0f} tasks/s); server RSS {idle:.0f} MB idle, {after:.0f} MB after, {peak:.0f} MB "
              f"peak;  list {pages} pages of {page}: {listing:.2f} s ({listing / pages * 1000:.0f} ms/page)",
              flush=True)
        return {"submit": submit, "after": after, "peak": peak}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("backends", nargs="*", default=["sqlite", "postgres"])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--page", type=int, default=1000)
    ap.add_argument("--tree", help="another scitq checkout to measure too, for before/after ratios")
    a = ap.parse_args()
    for b in a.backends:
        now = run(b, a.tasks, a.page, ROOT)
        if a.tree:
            before = run(b, a.tasks, a.page, os.path.abspath(a.tree))
            print(f"{b:8} before/after: submit {before['submit'] / now['submit']:.1f}x faster; RSS after "
                  f"{before['after']:.0f} -> {now['after']:.0f} MB, peak {before['peak']:.0f} -> {now['peak']:.0f} MB",
                  flush=True)
