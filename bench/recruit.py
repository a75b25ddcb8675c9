#!/usr/bin/env python3
"""From `recruiter create` to the first task running on a rented machine, with the tests' provider
(nspawn machines: Debian 12, systemd, sshd, no rclone, no route out; root and systemd-nspawn needed):
the server recruits, the provider boots a machine, scitq provisions it over SSH (uploading the pyz
and rclone), the worker registers and claims. Then the batch runs and the machines are given back.

    .venv-test/bin/python bench/recruit.py [--runs N] [--workers N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.test_recruit_machines import start_cloud  # noqa: E402
from tests.support import machines as machine_support  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="recruiters created one after the other")
    ap.add_argument("--workers", type=int, default=2, help="machines each recruiter rents")
    args = ap.parse_args()
    image, repo = machine_support.prepare()
    fleet = machine_support.Machines(image, repo).start()
    cloud = None
    try:
        cloud = start_cloud(fleet, Path(tempfile.mkdtemp(prefix="scitq-bench-recruit-")), slots=args.workers,
                            idle_release=2)
        c = cloud.client
        first, all_up, given_back = [], [], []
        for run in range(args.runs):
            batch = f"bench{run}"
            ids = c.submit_many([{"command": "sleep 1", "batch": batch} for _ in range(10 * args.workers)])
            started = time.monotonic()
            r = c.post("/recruiters", {"batch": batch, "provider": "nspawn", "flavor": "n1", "tasks_per_worker": 10,
                                       "maximum_workers": args.workers, "concurrency": 4})
            while not any(t["status"] in ("running", "succeeded") for t in c.tasks(ids=ids)):
                time.sleep(0.1)
            first.append(time.monotonic() - started)
            while sum(m["status"] == "running" for m in c.get("/machines")["machines"]) < args.workers:
                time.sleep(0.2)
            all_up.append(time.monotonic() - started)
            c.join(ids, timeout=600)
            c.delete(f"/recruiters/{r['id']}")
            done = time.monotonic()
            while c.get("/machines")["machines"]:
                time.sleep(0.2)
            given_back.append(time.monotonic() - done)
        print(f"{args.runs} recruiters of {args.workers} machine(s) each (idle_release 2 s):")
        for label, values in (("recruiter create -> first task running", first),
                              (f"recruiter create -> {args.workers} workers up", all_up),
                              ("batch done -> machines given back", given_back)):
            print(f"  {label:<40} median {statistics.median(values):6.1f} s  "
                  f"({min(values):.1f}-{max(values):.1f})")
    finally:
        if cloud is not None:
            cloud.server.stop()
        fleet.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
