#!/usr/bin/env bash
# install.sh -- set this machine up for one scitq role. Idempotent: run it again to upgrade.
#
# Usage: install.sh server|worker [--pyz PATH] [--server-url URL] [--token TOKEN] [--dry-run]
#
#   server  Debian packages python3 and python3-paramiko (the SSH roles import it from the
#           system), user scitq, /var/lib/scitq, the pyz, /etc/scitq.conf ([server] on
#           127.0.0.1:5000, SQLite in /var/lib/scitq), the schema (`scitq db upgrade`), then
#           scitq-server + scitq-dispatcher enabled and started under scitq.target.
#   worker  python3, user scitq, /var/lib/scitq/work, the pyz, /etc/scitq.conf ([worker] server
#           and token), then scitq-worker enabled and started.
#
#   --pyz PATH        the scitq.pyz to install (default: dist/scitq.pyz beside this script,
#                     else ./scitq.pyz); build it with `python3 build_zipapp.py`
#   --server-url URL  worker: the server to work for ([worker] server; needed when
#                     /etc/scitq.conf is written)
#   --token TOKEN     worker: its API token ([worker] token)
#   --dry-run         print every action without doing any (needs no root)
#
# /etc/scitq.conf is written only when absent (mode 600) and never overwritten. PostgreSQL is
# optional and not installed: point [server] database at it, then `scitq db upgrade` and
# `systemctl restart scitq.target`. Without a running systemd (containers) the units are
# installed but not started. Exit codes: 0 done, 2 bad arguments, other: a failed step.
set -euo pipefail

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB_DIR=/usr/local/lib/scitq
PYZ_DEST=$LIB_DIR/scitq.pyz
BIN_LINK=/usr/local/bin/scitq
STATE_DIR=/var/lib/scitq
CONF=/etc/scitq.conf
UNIT_DIR=/etc/systemd/system
PYTHON=/usr/bin/python3

die() { echo "$PROG: error: $*" >&2; exit 2; }
fail() { echo "$PROG: error: $*" >&2; exit 1; }
note() { echo "$PROG: $*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

ROLE="" PYZ="" SERVER_URL="" TOKEN="" DRY_RUN=0
need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"; }
while (($#)); do
  case $1 in
    server | worker)
      [[ -z $ROLE ]] || die "give one role, not '$ROLE' and '$1'"
      ROLE=$1 ;;
    --pyz) need_value "$@"; PYZ=$2; shift ;;
    --pyz=*) PYZ=${1#*=} ;;
    --server-url) need_value "$@"; SERVER_URL=$2; shift ;;
    --server-url=*) SERVER_URL=${1#*=} ;;
    --token) need_value "$@"; TOKEN=$2; shift ;;
    --token=*) TOKEN=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) die "unknown role '$1': expected server or worker" ;;
  esac
  shift
done

# --- validate everything before doing anything ------------------------------------------------
[[ -n $ROLE ]] || die "missing role: install.sh server|worker [--pyz PATH] [--server-url URL] [--token TOKEN] [--dry-run]"
if [[ -n $SERVER_URL ]] && ! [[ $SERVER_URL =~ ^https?://[^[:space:]/]+(/[^[:space:]]*)?$ ]]; then
  die "--server-url must look like http://HOST:PORT, not '$SERVER_URL'"
fi
SERVER_URL=${SERVER_URL%/}
if [[ $ROLE == server && -n $SERVER_URL ]]; then die "--server-url is for the worker role"; fi
if [[ -n $TOKEN ]]; then
  [[ $ROLE == worker ]] || die "--token is for the worker role (server tokens: scitq token create --role admin NAME)"
  # it goes into an INI file: no spaces, quotes or newlines
  [[ $TOKEN =~ ^[A-Za-z0-9._~+/=:-]+$ ]] || die "--token contains characters a token cannot have"
fi
if [[ $ROLE == worker && ! -e $CONF && -z $SERVER_URL ]]; then
  die "worker: --server-url URL is needed to write $CONF (or write that file first)"
fi
((DRY_RUN)) || [[ $EUID -eq 0 ]] || die "run as root (or add --dry-run to see what would be done)"
if [[ -n $PYZ ]]; then
  [[ -f $PYZ ]] || die "--pyz: no such file: $PYZ"
else
  for candidate in "$HERE/dist/scitq.pyz" "$HERE/scitq.pyz" "$PWD/scitq.pyz"; do
    if [[ -f $candidate ]]; then PYZ=$candidate; break; fi
  done
  if [[ -z $PYZ ]]; then
    ((DRY_RUN)) || die "no scitq.pyz found: build it with 'python3 build_zipapp.py' or give --pyz PATH"
    PYZ=$HERE/dist/scitq.pyz
    note "warning: $PYZ does not exist yet (a real run would stop here)"
  fi
fi
if [[ -d $(dirname "$PYZ") ]]; then PYZ="$(cd "$(dirname "$PYZ")" && pwd)/$(basename "$PYZ")"; fi
[[ -d $HERE/systemd ]] || die "$HERE/systemd is missing: run install.sh from a scitq checkout or release"

# --- actions ------------------------------------------------------------------------------------
# run CMD...: print it, then do it (or only print it with --dry-run).
run() {
  local shown
  shown=$(printf '%q ' "$@")
  if ((DRY_RUN)); then
    echo "[dry-run] ${shown% }"
  else
    echo "+ ${shown% }"
    "$@"
  fi
}

# write_file PATH MODE OWNER:GROUP CONTENT: create PATH atomically with this content and mode.
write_file() {
  local path=$1 mode=$2 owner=$3 content=$4 tmp
  if ((DRY_RUN)); then
    echo "[dry-run] write $path (mode $mode, owner $owner):"
    # never print a secret, even in a dry run
    printf '%s' "$content" | sed -E 's/^(token *= *).+$/\1********/; s/^/    /'
    return
  fi
  echo "+ write $path (mode $mode, owner $owner)"
  tmp=$(mktemp "$path.XXXXXX")
  chmod "$mode" "$tmp"
  printf '%s' "$content" >"$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
}

systemd_running() { [[ -d /run/systemd/system ]]; }
CHANGED=0 # the pyz or a unit changed: running services must restart (zipimport reads the file lazily)

install_packages() {
  local packages=(python3) missing=() p
  if [[ $ROLE == server ]]; then packages+=(python3-paramiko); fi
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    note "packages already installed: ${packages[*]}"
  else
    command -v apt-get >/dev/null || fail "apt-get not found: install ${missing[*]} with this system's package manager, then run again"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  if [[ -x $PYTHON ]] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    fail "$PYTHON is $("$PYTHON" -V 2>&1) but scitq needs Python 3.10 or newer"
  fi
}

create_user_and_dirs() {
  if id -u scitq >/dev/null 2>&1; then
    note "user scitq exists"
  else
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
      --comment "scitq task queue" scitq
  fi
  run install -d -m 0750 -o scitq -g scitq "$STATE_DIR"
  # the worker runs as root and owns its work dirs
  if [[ $ROLE == worker ]]; then run install -d -m 0750 -o root -g root "$STATE_DIR/work"; fi
  run install -d -m 0755 "$LIB_DIR"
}

install_pyz() {
  if [[ -f $PYZ_DEST ]] && cmp -s "$PYZ" "$PYZ_DEST"; then
    note "$PYZ_DEST is up to date"
  else
    # copy then rename: a process starting meanwhile never sees half a file
    run install -m 0755 -o root -g root "$PYZ" "$PYZ_DEST.new"
    run mv -f "$PYZ_DEST.new" "$PYZ_DEST"
    CHANGED=1
  fi
  if [[ -L $BIN_LINK && $(readlink "$BIN_LINK") == "$PYZ_DEST" ]]; then
    note "$BIN_LINK -> $PYZ_DEST exists"
  else
    run ln -sfn "$PYZ_DEST" "$BIN_LINK"
  fi
  if ((!DRY_RUN)); then
    local version
    version=$("$PYTHON" "$PYZ_DEST" --version) || fail "the installed $PYZ_DEST does not run with $PYTHON"
    note "installed $version"
  fi
}

write_config() {
  local content
  if [[ -e $CONF ]]; then
    note "keeping the existing $CONF (it is never overwritten; delete it to have it written again)"
    if [[ -n $SERVER_URL || -n $TOKEN ]]; then note "warning: --server-url/--token are not applied to an existing $CONF"; fi
    return
  fi
  content="# scitq configuration, written by install.sh when absent: edit freely.
# Every option with its default and environment variable: scitq config show
"
  if [[ $ROLE == server ]]; then
    content+="[server]
# The server refuses other addresses until an admin token exists:
#   scitq token create --role admin NAME
listen = 127.0.0.1
port = 5000
# PostgreSQL instead: database = postgresql://USER:PASSWORD@HOST:5432/scitq
database = sqlite:///$STATE_DIR/scitq.db
"
    write_file "$CONF" 600 scitq:scitq "$content" # the services run as scitq
  else
    [[ -n $TOKEN ]] || note "warning: no --token; add [worker] token to $CONF unless the server needs none"
    content+="[worker]
server = $SERVER_URL
token = $TOKEN
"
    write_file "$CONF" 600 root:root "$content" # the worker runs as root
  fi
}

install_units() {
  local units=() unit
  if [[ $ROLE == server ]]; then units=(scitq-server.service scitq-dispatcher.service scitq.target); else units=(scitq-worker.service); fi
  for unit in "${units[@]}"; do
    [[ -f $HERE/systemd/$unit ]] || fail "$HERE/systemd/$unit is missing"
    if [[ -f $UNIT_DIR/$unit ]] && cmp -s "$HERE/systemd/$unit" "$UNIT_DIR/$unit"; then
      note "$UNIT_DIR/$unit is up to date"
    else
      run install -D -m 0644 "$HERE/systemd/$unit" "$UNIT_DIR/$unit"
      CHANGED=1
    fi
  done
}

start_services() {
  if ! systemd_running; then
    note "systemd is not running here (a container?): units installed, not started"
    if [[ $ROLE == server ]]; then
      note "start by hand as user scitq in $STATE_DIR: scitq server --no-dispatcher, and scitq dispatcher"
    else
      note "start by hand as root in $STATE_DIR: scitq worker run"
    fi
    return
  fi
  if [[ $ROLE == server ]]; then
    run systemctl enable scitq-server.service scitq-dispatcher.service scitq.target
    run systemctl start scitq.target
  else
    run systemctl enable scitq-worker.service
    if ((CHANGED)); then run systemctl restart scitq-worker.service; else run systemctl start scitq-worker.service; fi
  fi
}

reload_units() {
  if systemd_running; then run systemctl daemon-reload; fi
}

upgrade_schema() {
  # The server and the dispatcher must not both initialise an empty database at first start,
  # and a new pyz may bring migrations: stop them while the schema is brought up to date.
  if ((CHANGED)) && systemd_running; then run systemctl stop scitq.target; fi
  if ((!DRY_RUN)) && ! runuser -u scitq -- test -r "$CONF"; then
    fail "user scitq, which runs the services, cannot read $CONF: chown scitq $CONF"
  fi
  run runuser -u scitq -- env -C "$STATE_DIR" "$PYTHON" "$PYZ_DEST" db upgrade
}

note "installing the scitq $ROLE role from $PYZ$( ((DRY_RUN)) && echo ' (dry run: nothing is changed)')"
install_packages
create_user_and_dirs
install_pyz
write_config
install_units
reload_units
if [[ $ROLE == server ]]; then upgrade_schema; fi
start_services
note "done: the $ROLE role is installed (configuration: $CONF)"
