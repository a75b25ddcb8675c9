"""Bulk-submit 10,000 tasks in one request, then list them page by page (target: submit < 2 s).

    python3 bench/submit_list.py [sqlite|postgres ...] [--tasks N] [--page N]
"""
from __future__ import annotations

import argparse
import time

from harness import server


def run(backend: str, n: int, page: int) -> None:
    with server(backend) as (_, client, _dir):
        specs = [{"command": f"echo {i}", "name": f"t{i}", "batch": "bench", "inputs": [f"s3://b/in/{i}.fq"]}
                 for i in range(n)]
        t0 = time.perf_counter()
        ids = client.submit_many(specs, chunk=n)
        submit = time.perf_counter() - t0
        assert len(ids) == n
        t0 = time.perf_counter()
        seen, pages = 0, 0
        for _ in client.tasks(batch="bench", page=page):
            seen += 1
        pages = -(-seen // page)
        listing = time.perf_counter() - t0
        assert seen == n, seen
        print(f"{backend:8}  submit {n} tasks in one request: {submit:.2f} s ({n / submit:,.0f} tasks/s);  "
              f"list {pages} pages of {page}: {listing:.2f} s ({listing / pages * 1000:.0f} ms/page)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("backends", nargs="*", default=["sqlite", "postgres"])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--page", type=int, default=1000)
    a = ap.parse_args()
    for b in a.backends:
        run(b, a.tasks, a.page)
