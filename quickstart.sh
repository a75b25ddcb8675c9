#!/usr/bin/env bash
# quickstart.sh -- build scitq.pyz and run scitq's main job on this machine:
# a server on the embedded SQLite database, one local worker, a batch of real
# tasks submitted in one call and run to completion, and their output. Everything
# lives in a fresh directory under /tmp (printed at the end); nothing is installed
# system-wide except Debian's python3 and python3-pip when they are missing (needs
# root or sudo).
#
#   ./quickstart.sh [TASKS]        (default 30 tasks, plus one that fails once and is retried)
set -euo pipefail
cd "$(dirname "$0")"
TASKS=${1:-30}
START=$(date +%s.%N)

say() { if [ -t 1 ]; then printf '\033[1m==> %s\033[0m\n' "$*"; else printf '==> %s\n' "$*"; fi; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# build_zipapp.py stages the pinned wheels with pip; Debian's python3 has it as python3-pip
if ! python3 -c 'import pip' >/dev/null 2>&1; then
  say "installing python3 and python3-pip (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  START=$(date +%s.%N)   # the quickstart's own time starts after the package installs
fi

DEMO=$(mktemp -d /tmp/scitq-quickstart.XXXXXX)
PYZ=$PWD/dist/scitq.pyz
# the build is reproducible: a pyz newer than every input is the one a rebuild would make
if [ -f "$PYZ" ] && [ -z "$(find scitq_app requirements build_zipapp.py -newer "$PYZ" -print -quit)" ]; then
  say "dist/scitq.pyz is up to date"
else
  say "building dist/scitq.pyz"
  python3 build_zipapp.py > "$DEMO/build.log" 2>&1 || { cat "$DEMO/build.log"; exit 1; }
  tail -n 1 "$DEMO/build.log"
fi
scitq() { python3 "$PYZ" "$@"; }   # installed, it is just `scitq` (see the README)

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SCITQ_SERVER=http://127.0.0.1:$PORT SCITQ_CONFIG=/dev/null
# shellcheck disable=SC2317  # run by the trap
cleanup() {
  # the worker first, while the server still answers its last report (else it retries for seconds)
  if [ -n "${WORKER_PID:-}" ]; then kill "$WORKER_PID" 2>/dev/null || true; wait "$WORKER_PID" 2>/dev/null || true; fi
  if [ -n "${SERVER_PID:-}" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "starting the server on SQLite ($DEMO/scitq.db, port $PORT)"
(cd "$DEMO" && exec python3 "$PYZ" server --port "$PORT" --database "sqlite:///$DEMO/scitq.db") \
  > "$DEMO/server.log" 2>&1 &
SERVER_PID=$!
python3 - "$SERVER_PID" "$SCITQ_SERVER" "$DEMO/server.log" <<'EOF'
import os, sys, time, urllib.request
pid, url, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/api/v1/health", timeout=1).read()
        sys.exit(0)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(open(log).read() + "\nthe server stopped")
        time.sleep(0.05)
sys.exit(open(log).read() + "\nthe server did not answer within 15 s")
EOF

say "starting a local worker on batch 'quickstart' (4 slots, work dir $DEMO/work)"
# The server's first start made an admin token ($DEMO/admin.token), which this CLI finds by
# itself; a worker never gets it: it joins with a single-use join token.
JOIN_TOKEN=$(scitq worker join-token --batch quickstart 2>/dev/null)
# task_user = root: this worker is not installed, so there is no unprivileged task user (see the README)
SCITQ_WORKER_JOIN_TOKEN=$JOIN_TOKEN SCITQ_WORKER_TASK_USER=root \
  python3 "$PYZ" worker run --name quickstart-worker --workdir "$DEMO/work" --concurrency 4 > "$DEMO/worker.log" 2>&1 &
WORKER_PID=$!

say "submitting $TASKS tasks and one that fails once, in one call (the Python client, from the pyz)"
IDS=$(PYTHONPATH=$PYZ python3 - "$TASKS" "$DEMO/admin.token" <<'EOF'
import os, sys
from scitq_app.client import Server

tasks, token_file = int(sys.argv[1]), sys.argv[2]
specs = [{"batch": "quickstart", "name": f"sample-{i}", "shell": "sh",
          "command": f'echo "sample {i} on $(hostname): $(seq 1 {i * 1000} | awk \'{{s+=$1}} END {{print s}}\')"'}
         for i in range(1, tasks + 1)]
specs.append({"batch": "quickstart", "name": "fails-then-retries", "shell": "sh", "max_retries": 1,
              "command": 'test -e "$TEMP/../../marker" || { touch "$TEMP/../../marker"; echo "first try fails" >&2; '
                         'exit 1; }; echo "second try works"'})
with Server(os.environ["SCITQ_SERVER"], open(token_file).read().strip()) as server:
    ids = server.submit_many(specs)
print(f"  {len(ids)} tasks submitted, ids {ids[0]}-{ids[-1]}", file=sys.stderr)
print(ids[0], ids[tasks - 1], ids[-1])
EOF
)

say "running"
failed=0
scitq task wait --batch quickstart --interval 0.2 || failed=1

say "results"
scitq batch list
# shellcheck disable=SC2086  # three ids, split on purpose
scitq task output $IDS
elapsed=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$START" "$(date +%s.%N)")
say "done in $elapsed s: server and worker logs in $DEMO"
if [ "$failed" = 0 ]; then
  echo "next: put scitq on your PATH (sudo cp $PYZ /usr/local/bin/scitq) and read the README's session"
fi
exit "$failed"
