#!/usr/bin/env python3
"""Time from an SSH-reachable fresh machine to its first task claimed, through `scitq provision`.

Boots fresh Debian 12 machines (systemd as PID 1, sshd, no route out: tests/support/machines.py,
root and systemd-nspawn needed), starts a server on their bridge with one pending task per
machine (each in its own batch), then for each machine runs `scitq provision --batch B HOST` and
measures, from the command's start: the job's steps as the server recorded them, the worker's
registration and the first claim of the task (its execution's `assigned` time on the server).
Two cases: rclone already on the host (installed beforehand), and rclone uploaded by provision.

    .venv-test/bin/python bench/provision.py [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scitq_app.client import Server  # noqa: E402
from tests.e2e.test_install_machines import build_pyz  # noqa: E402
from tests.support import machines as machine_support  # noqa: E402
from tests.support.processes import ServerProcess  # noqa: E402
from tests.support.storage import rclone_binary  # noqa: E402


def provision_one(server: ServerProcess, client: Server, key: Path, pyz: Path, home: Path, host: str,
                  batch: str) -> dict[str, float]:
    [task] = client.submit_many([{"command": "true", "batch": batch, "name": f"first-{batch}"}])
    env = {**os.environ, "HOME": str(home), "SCITQ_SERVER": server.url, "SCITQ_TOKEN": server.admin_token or "",
           "PYTHONPATH": str(ROOT)}
    started = time.time()
    r = subprocess.run([sys.executable, "-m", "scitq_app", "provision", "--key", str(key), "--pyz", str(pyz),
                        "--rclone", rclone_binary(), "--worker-url", server.url, "--batch", batch, host],
                       capture_output=True, text=True, timeout=600, env=env)
    ended = time.time()
    if r.returncode != 0:
        raise SystemExit(f"provision {host} failed:\n{r.stderr}")
    while True:
        runs = client.executions(task)
        if runs and runs[-1].get("assigned"):
            break
        time.sleep(0.05)
    from datetime import datetime
    assigned = datetime.fromisoformat(runs[-1]["assigned"].replace("Z", "+00:00")).timestamp()
    job = [j for j in client.jobs(limit=1000) if j["target"] == f"{host}:22"][-1]
    log = client.job_log(job["id"])
    steps = {}
    for ln in log:
        if ln["line"].startswith("== "):
            at = datetime.fromisoformat(ln["at"].replace("Z", "+00:00")).timestamp()
            steps[ln["line"][3:].split(":")[0]] = at - started
    return {"command": ended - started, "first claim": assigned - started, **steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="machines per case")
    args = ap.parse_args()
    image, repo = machine_support.prepare()
    fleet = machine_support.Machines(image, repo).start()
    tmp = Path(tempfile.mkdtemp(prefix="scitq-bench-provision-"))
    server = None
    try:
        pyz = build_pyz(tmp / "scitq.pyz")
        server = ServerProcess(f"sqlite:///{tmp}/scitq.db", str(tmp), listen=fleet.bridge).start()
        assert server.admin_token
        client = Server(server.url, server.admin_token)
        home = tmp / "home"
        home.mkdir()
        names = [f"pre{i}" for i in range(args.runs)] + [f"bare{i}" for i in range(args.runs)]
        hosts = fleet.boot_many(names)
        for m in hosts[:args.runs]:  # rclone already there, as on a lab's machine
            m.put(rclone_binary(), "/usr/local/bin/rclone", mode=0o755)
        results: dict[str, list[dict[str, float]]] = {"rclone on the host": [], "rclone uploaded": []}
        for i, m in enumerate(hosts):
            case = "rclone on the host" if i < args.runs else "rclone uploaded"
            results[case].append(provision_one(server, client, fleet.key, pyz, home, m.addr, f"b{i}"))
        print(f"pyz {pyz.stat().st_size / 1e6:.1f} MB, rclone {os.path.getsize(rclone_binary()) / 1e6:.0f} MB")
        for case, runs in results.items():
            keys = list(runs[0])
            print(f"\n{case} ({len(runs)} machines): seconds from `scitq provision` started, median (min-max)")
            for k in keys:
                values = [r[k] for r in runs if k in r]
                print(f"  {k:<12} {statistics.median(values):6.2f}  ({min(values):.2f}-{max(values):.2f})")
    finally:
        if server is not None:
            server.stop()
        fleet.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
