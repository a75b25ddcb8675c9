#!/usr/bin/env bash
# quickstart.sh -- build scitq.pyz and run scitq's main job on this machine:
# a server on the embedded SQLite database, one local worker, a batch of real
# tasks run to completion, and their output. Everything lives in a fresh
# directory under /tmp (printed at the end); nothing is installed system-wide
# except Debian's python3 packages when they are missing (needs root or sudo).
#
#   ./quickstart.sh [TASKS]        (default 30 tasks)
set -euo pipefail
cd "$(dirname "$0")"
TASKS=${1:-30}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  say "installing python3 and python3-venv (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi

say "building dist/scitq.pyz"
python3 build_zipapp.py
PYZ=$PWD/dist/scitq.pyz

DEMO=$(mktemp -d /tmp/scitq-quickstart.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SCITQ_SERVER=http://127.0.0.1:$PORT SCITQ_CONFIG=/dev/null
cleanup() {
  [ -n "${WORKER_PID:-}" ] && kill "$WORKER_PID" 2>/dev/null || true
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

say "starting the server on SQLite ($DEMO/scitq.db, port $PORT)"
(cd "$DEMO" && exec python3 "$PYZ" server --port "$PORT" --database "sqlite:///$DEMO/scitq.db") \
  > "$DEMO/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  python3 "$PYZ" batch list >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DEMO/server.log"; exit 1; }
  sleep 0.1
done

say "submitting $TASKS tasks to batch 'quickstart'"
for i in $(seq 1 "$TASKS"); do
  python3 "$PYZ" launch --batch quickstart --name "sample-$i" \
    "echo \"sample $i on \$(hostname): \$(seq 1 $((i * 1000)) | awk '{s+=\$1} END {print s}')\"" >/dev/null 2>&1
done
python3 "$PYZ" launch --batch quickstart --name fails-then-retries --retry 1 \
  'test -e "$TEMP/../../marker" || { touch "$TEMP/../../marker"; echo "first try fails" >&2; exit 1; }; echo "second try works"' \
  >/dev/null 2>&1
python3 "$PYZ" task list --batch quickstart --limit 5

say "starting a local worker (4 slots, work dir $DEMO/work)"
# the server's first start made an admin token ($DEMO/admin.token), which this CLI finds by itself;
# a worker never gets it: it joins with a single-use join token
JOIN_TOKEN=$(python3 "$PYZ" worker join-token 2>/dev/null)
# task_user = root: this worker is not installed, so there is no unprivileged task user (see the README)
SCITQ_WORKER_JOIN_TOKEN=$JOIN_TOKEN SCITQ_WORKER_TASK_USER=root python3 "$PYZ" worker run --name quickstart-worker --workdir "$DEMO/work" --concurrency 4 > "$DEMO/worker.log" 2>&1 &
WORKER_PID=$!

say "waiting for the batch to finish"
while :; do
  counts=$(python3 "$PYZ" task counts --batch quickstart --json)
  left=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); print(sum(v for k, v in c.items() if k not in ("succeeded", "failed", "canceled")))' "$counts")
  printf '\r  %s\033[K' "$(python3 -c 'import json,sys; print(", ".join(f"{k} {v}" for k, v in sorted(json.loads(sys.argv[1]).items())))' "$counts")"
  [ "$left" = 0 ] && break
  kill -0 "$WORKER_PID" 2>/dev/null || { echo; cat "$DEMO/worker.log"; exit 1; }
  sleep 0.5
done
echo

say "results"
python3 "$PYZ" batch list
python3 "$PYZ" task list --batch quickstart --limit 8
for name in sample-1 sample-$TASKS fails-then-retries; do
  id=$(python3 "$PYZ" task list --batch quickstart --name "$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
  printf '  output of %s (task %s): ' "$name" "$id"
  python3 "$PYZ" task output "$id"
done
failed=$(python3 "$PYZ" task counts --batch quickstart --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("failed", 0))')
say "done: server and worker logs in $DEMO ($failed failed)"
[ "$failed" = 0 ]
