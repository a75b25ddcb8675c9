"""Start-up time of the CLI from scitq.pyz, next to the interpreter's own.

    /usr/bin/python3 bench/startup.py [--python /usr/bin/python3] [--pyz dist/scitq.pyz] [--runs 30]

Targets (issue 11): `--help` and `--version` within 1.5x `python3 -c pass`; commands that talk
to the server (`task list`, `batch list`, against a real server on SQLite started here) within
1.3x `python3 -c "import urllib.request, json"`. Measure with Debian's /usr/bin/python3, not a
pyenv shim (a shim is itself a shell script that costs more than the interpreter).

`scitq` is measured as people run it once installed: the archive executed through its #! line,
which starts `python3 -S` (no `site`: the short commands need nothing from site-packages).
`python3 scitq.pyz` (with `site`, as the systemd units start the services) is shown beside it
for reference.

The runs are interleaved (one of each command per round) so that load from other work on the
machine falls on all of them alike; the figures are the wall-clock median and minimum of the
rounds and the median CPU time (user + system of the process), and the ratios compare like with
like. The verdict uses CPU time, the steadiest on a shared machine; the server's own time to
answer is not in it (it is another process). Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one run; CPU time (user + system of the child) is the
    steadier figure on a machine shared with other work."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--pyz", default=os.path.join(ROOT, "dist", "scitq.pyz"))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    args.pyz = os.path.abspath(args.pyz)  # the commands run in a directory of their own
    if not os.path.exists(args.pyz):
        raise SystemExit(f"{args.pyz} does not exist: build it with `python3 build_zipapp.py`")
    work = tempfile.mkdtemp(prefix="scitq-startup-")
    port = free_port()
    # a HOME of its own: the server's registry entry lets the CLI find the admin token
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCITQ_", "PYTHON"))}
    env.update(HOME=work, XDG_STATE_HOME="", SCITQ_CONFIG=os.devnull, SCITQ_SERVER=f"http://127.0.0.1:{port}")
    server_log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen([args.python, args.pyz, "server", "--port", str(port), "--database",
                               f"sqlite:///{work}/scitq.db"], env=env, cwd=work,
                              stdout=server_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start: " + open(server_log.name).read()[-1500:])
                time.sleep(0.1)
        py, pyz = args.python, args.pyz
        # `scitq` as installed runs the archive through its #! line (`env -S python3 -S`): `python3`
        # is found on PATH, which starts with the directory of the interpreter under test
        scitq = [pyz] if os.path.basename(py) == "python3" else [py, "-S", pyz]
        env["PATH"] = os.path.dirname(py) + os.pathsep + env.get("PATH", "")
        commands = {
            "python3 -c pass": [py, "-c", "pass"],
            "scitq --version": [*scitq, "--version"],
            "scitq --help": [*scitq, "--help"],
            "scitq task --help": [*scitq, "task", "--help"],
            "python3 -c 'import urllib.request, json'": [py, "-c", "import urllib.request, json"],
            "scitq task list": [*scitq, "task", "list"],
            "scitq batch list": [*scitq, "batch", "list"],
            # the same, run as `python3 scitq.pyz` (with `site`, as the systemd units do)
            "python3 scitq.pyz --version": [py, pyz, "--version"],
            "python3 scitq.pyz task list": [py, pyz, "task", "list"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for name, argv in commands.items():  # warm the page cache once
            timed(argv, env, work)
        for _ in range(args.runs):
            for name, argv in commands.items():
                wall, used = timed(argv, env, work)
                times[name].append(wall)
                cpu[name].append(used)
        stops = [idle_worker_stop(py, pyz, env, work, port, i) for i in range(min(args.runs, 5))]
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    fig = {name: {"median_ms": 1000 * statistics.median(t), "min_ms": 1000 * min(t),
                  "cpu_median_ms": 1000 * statistics.median(cpu[name])} for name, t in times.items()}
    checks = [("scitq --version", "python3 -c pass", 1.5), ("scitq --help", "python3 -c pass", 1.5),
              ("scitq task --help", "python3 -c pass", 1.5),
              ("scitq task list", "python3 -c 'import urllib.request, json'", 1.3),
              ("scitq batch list", "python3 -c 'import urllib.request, json'", 1.3),
              ("python3 scitq.pyz --version", "python3 -c pass", 1.5),
              ("python3 scitq.pyz task list", "python3 -c 'import urllib.request, json'", 1.3)]
    rows = []
    for name, base, target in checks:
        rows.append({"command": name, "baseline": base, "target": target,
                     "median_ms": fig[name]["median_ms"], "base_median_ms": fig[base]["median_ms"],
                     "ratio_median": fig[name]["median_ms"] / fig[base]["median_ms"],
                     "min_ms": fig[name]["min_ms"], "base_min_ms": fig[base]["min_ms"],
                     "ratio_min": fig[name]["min_ms"] / fig[base]["min_ms"],
                     "cpu_ms": fig[name]["cpu_median_ms"], "base_cpu_ms": fig[base]["cpu_median_ms"],
                     "ratio_cpu": fig[name]["cpu_median_ms"] / fig[base]["cpu_median_ms"]})
    if args.json:
        print(json.dumps({"python": py, "version": sys.version.split()[0], "runs": args.runs, "figures": fig,
                          "checks": rows, "idle_worker_stop_ms": [1000 * t for t in stops]}, indent=2))
        return 0
    print(f"{py} ({subprocess.run([py, '--version'], capture_output=True, text=True).stdout.strip()}), "
          f"{args.runs} interleaved rounds; wall-clock median (min) and CPU median, in ms")
    for r in rows:
        verdict = "ok" if r["ratio_cpu"] <= r["target"] else "OVER"
        if r["command"].startswith("python3 "):
            verdict = "(reference)"
        print(f"  {r['command']:<28} wall {r['median_ms']:6.1f} ({r['min_ms']:5.1f}) cpu {r['cpu_ms']:6.1f}"
              f"  vs  {r['baseline']:<42} wall {r['base_median_ms']:6.1f} ({r['base_min_ms']:5.1f})"
              f" cpu {r['base_cpu_ms']:6.1f}  = wall {r['ratio_median']:.2f}x ({r['ratio_min']:.2f}x)"
              f" cpu {r['ratio_cpu']:.2f}x  target <= {r['target']}x (cpu)  {verdict}")
    worst = max(stops)
    print(f"  idle worker, SIGTERM to exit: median {1000 * statistics.median(stops):.0f} ms, worst "
          f"{1000 * worst:.0f} ms of {len(stops)}  target < 1000 ms  {'ok' if worst < 1 else 'OVER'}")
    return 0


def idle_worker_stop(py: str, pyz: str, env: dict[str, str], work: str, port: int, i: int) -> float:
    """Seconds from SIGTERM to exit of an idle worker agent sitting in its claim's long poll."""
    token = subprocess.run([py, pyz, "worker", "join-token", "--json"], env=env, cwd=work, capture_output=True,
                           text=True, check=True)
    home = os.path.join(work, f"worker-{i}")
    wenv = dict(env, SCITQ_WORKER_JOIN_TOKEN=json.loads(token.stdout)["join_token"], SCITQ_WORKER_NAME=f"idle-{i}",
                SCITQ_WORKER_WORKDIR=home, SCITQ_WORKER_TASK_USER="root" if os.geteuid() == 0 else "",
                SCITQ_WORKER_SERVER=f"http://127.0.0.1:{port}")
    log = os.path.join(work, f"worker-{i}.log")
    with open(log, "w") as out:
        agent = subprocess.Popen([py, pyz, "worker", "run"], env=wenv, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "registered as worker" not in open(log).read():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not register: {open(log).read()[-500:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # into its long poll
        start = time.perf_counter()
        agent.terminate()
        agent.wait(60)
        return time.perf_counter() - start
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


if __name__ == "__main__":
    sys.exit(main())
