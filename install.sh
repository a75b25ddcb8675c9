#!/usr/bin/env bash
# install.sh -- make this Debian/Ubuntu machine a scitq server or worker, under systemd.
# Idempotent: run it again and nothing changes; run it with a newer scitq.pyz and it upgrades.
#
# Usage:
#   install.sh server [--database URL | --sqlite] [--public-url URL] [--https-port N]
#                     [--cert FILE --key FILE] [--api-processes N] [--pyz PATH] [--dry-run]
#   install.sh worker --server URL --join-token TOKEN [--name NAME] [--concurrency N]
#                     [--pyz PATH] [--dry-run]
#   install.sh uninstall [--purge] [--dry-run]
#
#   server      python3, PostgreSQL with a database and role for scitq (unless --database), rclone,
#               the scitq user, /etc/scitq.conf (from a commented template, never overwritten),
#               /var/lib/scitq, the pyz as /usr/local/bin/scitq, the schema (`scitq db upgrade`, which
#               writes the first admin token to /var/lib/scitq/admin.token, mode 600: the `scitq` CLI
#               run by root on this host reads it), the units scitq-server + scitq-dispatcher under scitq.target (logs: journalctl
#               -u 'scitq*'), and nginx serving the API over TLS on every address (--https-port,
#               default 443) with your certificate or a self-signed one whose fingerprint join
#               tokens carry, so workers pin it. Ends by checking /api/v1/health through TLS.
#   worker      python3, rclone, the pyz, /etc/scitq.conf ([worker] server and join_token), the unit
#               scitq-worker, enabled and started; ends when the worker has registered.
#               Mint the join token on the server: scitq worker join-token
#   uninstall   stop and remove the units, the nginx site and the binaries; keep the configuration,
#               the data and the database unless --purge.
#
#   --database URL    server: an existing PostgreSQL (postgresql://USER:PASS@HOST:PORT/DB); no local one
#   --sqlite          server: SQLite in /var/lib/scitq/scitq.db instead of PostgreSQL (for trials only)
#   --public-url URL  server: the URL workers use (default https://<this host's first address>[:port])
#   --https-port N    server: the port nginx serves the API on (default 443)
#   --api-processes N server: API processes behind nginx (default 1, or as many as run already; at
#                     most 16; more than 1 needs PostgreSQL): scitq-server on port 5000, then
#                     scitq-server@5001 and on. Run it again with another N to add or remove some.
#   --cert FILE, --key FILE
#                     server: the TLS certificate and key to serve (default: a self-signed pair,
#                     made once in /etc/scitq/tls)
#   --server URL      worker: the server's URL (as `scitq worker join-token` prints it)
#   --join-token T    worker: a join token (single use unless minted with --uses N)
#   --name NAME       worker: its name (default: the host name)
#   --concurrency N   worker: tasks run at once (default 1; changeable live from the server)
#   --pyz PATH        the scitq.pyz to install (default: dist/scitq.pyz beside this script, else
#                     ./scitq.pyz); build it with `python3 build_zipapp.py`
#   --purge           uninstall: also remove /etc/scitq.conf, /etc/scitq, /var/lib/scitq, the users
#                     and the local PostgreSQL database and role install.sh created
#   --dry-run         print every action without doing any (needs no root)
#
# Upgrades: a changed pyz stops the server and dispatcher, runs `scitq db upgrade` and starts them;
# workers keep their running tasks meanwhile and deliver their reports when the server is back. A
# worker is sent SIGUSR1: it claims nothing more, lets its running tasks finish (at most
# [worker] upgrade_deadline seconds, then hands them back to the queue) and systemd restarts it on
# the new pyz. Without systemd as PID 1 (a container) everything is installed but nothing started.
# Exit codes: 0 done, 2 bad arguments, 1 a failed step (the message says which).
set -euo pipefail

PROG=install.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB_DIR=/usr/local/lib/scitq
RELEASES=$LIB_DIR/releases
PYZ_DEST=$LIB_DIR/scitq.pyz
BIN_LINK=/usr/local/bin/scitq
STATE_DIR=/var/lib/scitq
CONF=/etc/scitq.conf
ETC_DIR=/etc/scitq
TLS_DIR=$ETC_DIR/tls
ADMIN_TOKEN=$STATE_DIR/admin.token   # [server] token_file, relative to the services' working dir
UNIT_DIR=/etc/systemd/system
NGINX_SITE=/etc/nginx/sites-available/scitq
NGINX_LINK=/etc/nginx/sites-enabled/scitq
PYTHON=/usr/bin/python3
API_PORT=5000
DB_NAME=scitq
DB_ROLE=scitq
TASK_USER=scitq-task   # [worker] task_user's default

die() { echo "$PROG: error: $*" >&2; exit 2; }
fail() { echo "$PROG: error: $*" >&2; exit 1; }
note() { echo "$PROG: $*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

ROLE="" PYZ="" SERVER_URL="" JOIN_TOKEN="" DATABASE="" SQLITE=0 PUBLIC_URL="" HTTPS_PORT=443
CERT="" KEY="" NAME="" CONCURRENCY="" PURGE=0 DRY_RUN=0 API_PROCESSES=
need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"; }
while (($#)); do
  case $1 in
    server | worker | uninstall)
      [[ -z $ROLE ]] || die "give one role, not '$ROLE' and '$1'"
      ROLE=$1 ;;
    --pyz | --server | --join-token | --database | --public-url | --https-port | --cert | --key | --name | --concurrency | \
    --api-processes)
      need_value "$@"; opt=${1#--}; val=$2; shift
      case $opt in
        pyz) PYZ=$val ;; server) SERVER_URL=$val ;; join-token) JOIN_TOKEN=$val ;; database) DATABASE=$val ;;
        public-url) PUBLIC_URL=$val ;; https-port) HTTPS_PORT=$val ;; cert) CERT=$val ;; key) KEY=$val ;;
        name) NAME=$val ;; concurrency) CONCURRENCY=$val ;; api-processes) API_PROCESSES=$val ;;
      esac ;;
    --server-url | --token) die "$1 is gone: use --server URL --join-token TOKEN (mint one on the server: scitq worker join-token)" ;;
    --sqlite) SQLITE=1 ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) die "unknown role '$1': expected server, worker or uninstall" ;;
  esac
  shift
done

# --- validate everything before doing anything ------------------------------------------------
[[ -n $ROLE ]] || die "missing role: install.sh server|worker|uninstall [options] (see --help)"
only_for() { # only_for ROLE OPTION VALUE: refuse an option given to another role
  [[ -z $3 || $3 == 0 || $ROLE == "$1" ]] || die "$2 is for the $1 role"
}
only_for server --database "$DATABASE"; only_for server --sqlite "$SQLITE"; only_for server --public-url "$PUBLIC_URL"
only_for server --cert "$CERT"; only_for server --key "$KEY"; only_for server --api-processes "$API_PROCESSES"
[[ $HTTPS_PORT == 443 || $ROLE == server ]] || die "--https-port is for the server role"
only_for worker --server "$SERVER_URL"; only_for worker --join-token "$JOIN_TOKEN"; only_for worker --name "$NAME"
only_for worker --concurrency "$CONCURRENCY"; only_for uninstall --purge "$PURGE"
if [[ $ROLE == server ]]; then
  [[ -z $DATABASE || $SQLITE == 0 ]] || die "give --database URL or --sqlite, not both"
  [[ -z $DATABASE || $DATABASE =~ ^postgresql://[^[:space:]]+$ ]] || die "--database must look like postgresql://USER:PASS@HOST:PORT/DB"
  if ! [[ $HTTPS_PORT =~ ^[0-9]{1,5}$ ]] || ((HTTPS_PORT < 1 || HTTPS_PORT > 65535)); then
    die "--https-port must be a port number (1-65535), not '$HTTPS_PORT'"
  fi
  [[ -z $PUBLIC_URL || $PUBLIC_URL =~ ^https://[^[:space:]/]+/?$ ]] || die "--public-url must look like https://HOST[:PORT], not '$PUBLIC_URL'"
  [[ -n $CERT && -n $KEY || -z $CERT && -z $KEY ]] || die "give --cert and --key together"
  if [[ -n $API_PROCESSES ]]; then
    if ! [[ $API_PROCESSES =~ ^[0-9]{1,2}$ ]] || ((API_PROCESSES < 1 || API_PROCESSES > 16)); then
      die "--api-processes must be a whole number from 1 to 16, not '$API_PROCESSES'"
    fi
    ((API_PROCESSES == 1 || SQLITE == 0)) ||
      die "--api-processes $API_PROCESSES needs PostgreSQL: SQLite takes one API process (drop --sqlite)"
  fi
  if [[ -n $CERT ]]; then [[ -r $CERT ]] || die "--cert: cannot read $CERT"; [[ -r $KEY ]] || die "--key: cannot read $KEY"; fi
fi
if [[ $ROLE == worker ]]; then
  if [[ -n $SERVER_URL ]] && ! [[ $SERVER_URL =~ ^https?://[^[:space:]/]+/?$ ]]; then
    die "--server must look like https://HOST[:PORT], not '$SERVER_URL'"
  fi
  SERVER_URL=${SERVER_URL%/}
  # it goes into an INI file: no spaces, quotes or newlines
  [[ -z $JOIN_TOKEN || $JOIN_TOKEN =~ ^[A-Za-z0-9._~+/=:-]+$ ]] || die "--join-token contains characters a token cannot have"
  [[ -z $NAME || $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--name must be letters, digits, '.', '_' or '-' (at most 63)"
  [[ -z $CONCURRENCY || $CONCURRENCY =~ ^[0-9]+$ ]] || die "--concurrency must be a whole number, not '$CONCURRENCY'"
  if [[ ! -e $CONF ]] && [[ -z $SERVER_URL || -z $JOIN_TOKEN ]]; then
    die "worker: --server URL and --join-token TOKEN are needed to write $CONF (mint a token on the server: scitq worker join-token)"
  fi
fi
((DRY_RUN)) || [[ $EUID -eq 0 ]] || die "run as root (or add --dry-run to see what would be done)"
if [[ $ROLE != uninstall ]]; then
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
fi

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
    printf '%s' "$content" | sed -E 's/^((join_)?token|database) *= *.+$/\1 = ********/; s/^/    /'
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
is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
scitq_as() { # scitq_as USER ARGS...: run the installed scitq as USER in the state dir
  local user=$1; shift
  runuser -u "$user" -- env -C "$STATE_DIR" SCITQ_CONFIG="$CONF" "$PYTHON" "$PYZ_DEST" "$@"
}
CHANGED=0   # the pyz changed: running services must restart on it
UNITS_CHANGED=0

install_packages() {
  local packages=(python3 ca-certificates rclone) missing=() p
  if [[ $ROLE == server ]]; then
    packages+=(python3-paramiko python3-libcloud openssl)
    if apt-cache show nginx-light >/dev/null 2>&1 || is_installed nginx-light; then packages+=(nginx-light); else packages+=(nginx); fi
    if [[ -z $DATABASE && $SQLITE == 0 ]]; then packages+=(postgresql); fi
  fi
  for p in "${packages[@]}"; do
    # rclone may come as a bare binary (provision uploads one to hosts that cannot download)
    is_installed "$p" || { [[ $p == rclone ]] && command -v rclone >/dev/null; } || missing+=("$p")
  done
  if [[ $ROLE == server ]] && [[ " ${missing[*]} " == *" nginx"* ]] && { is_installed nginx || is_installed nginx-full || is_installed nginx-core; }; then
    missing=("${missing[@]/nginx-light/}")   # some nginx is there already
  fi
  read -r -a missing <<<"${missing[*]}"
  if ((${#missing[@]} == 0)); then
    note "packages already installed: ${packages[*]}"
  else
    command -v apt-get >/dev/null || fail "apt-get not found: install ${missing[*]} with this system's package manager, then run again"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
      fail "could not install ${missing[*]}: see apt's message above"
  fi
  if ((!DRY_RUN)) && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    fail "$PYTHON is $("$PYTHON" -V 2>&1) but scitq needs Python 3.10 or newer"
  fi
}

# mark_ours DIR MODE OWNER: create DIR if absent and mark it as install.sh's own, so that
# `uninstall --purge` removes only directories this script made.
mark_ours() {
  local dir=$1 mode=$2 owner=$3
  if [[ ! -d $dir ]]; then
    run install -d -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$dir"
    if ((DRY_RUN)); then echo "[dry-run] mark $dir as made by install.sh"; else : >"$dir/.made-by-scitq-install"; fi
  else
    [[ $(stat -c %a "$dir") == "${mode#0}" ]] || run chmod "$mode" "$dir"
    [[ $(stat -c %U:%G "$dir") == "$owner" ]] || run chown "$owner" "$dir"
  fi
}

# ensure_dir DIR MODE: create DIR (owned by root) unless it exists.
ensure_dir() { [[ -d $1 ]] || run install -d -m "$2" "$1"; }

# enable UNIT...: enable the units that are not enabled yet.
enable() {
  local unit
  for unit in "$@"; do systemctl is-enabled --quiet "$unit" 2>/dev/null || run systemctl enable --quiet "$unit"; done
}

create_user_and_dirs() {
  if [[ $ROLE == server ]]; then
    if id -u scitq >/dev/null 2>&1; then
      note "user scitq exists"
    else
      run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
        --comment "scitq task queue" scitq
    fi
    mark_ours "$STATE_DIR" 0750 scitq:scitq
  else
    # The worker runs as root and keeps its token in its state (work/.scitq, mode 700); plain tasks
    # run as TASK_USER, who may traverse to its own work dir (0711) but read nothing else of it.
    if id -u "$TASK_USER" >/dev/null 2>&1; then
      note "user $TASK_USER (plain tasks run as it) exists"
    else
      run useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin \
        --comment "scitq tasks" "$TASK_USER"
    fi
    mark_ours "$STATE_DIR" 0711 root:root
    if [[ -d $STATE_DIR/work ]]; then
      [[ $(stat -c %a "$STATE_DIR/work") == 711 ]] || run chmod 0711 "$STATE_DIR/work"
    else
      run install -d -m 0711 "$STATE_DIR/work"
    fi
  fi
  mark_ours "$ETC_DIR" 0755 root:root
  ensure_dir "$LIB_DIR" 0755
  ensure_dir "$RELEASES" 0755
}

# The pyz goes to releases/scitq-<hash>.pyz and scitq.pyz links to it: a process that outlives an
# upgrade (a worker finishing its tasks) keeps reading the release it started from.
install_pyz() {
  local sum release version old
  if ((DRY_RUN)) && [[ ! -f $PYZ ]]; then sum=unknown; else sum=$(sha256sum "$PYZ" | cut -c1-16); fi
  release=$RELEASES/scitq-$sum.pyz
  if [[ -f $release ]] && cmp -s "$PYZ" "$release" && [[ $(readlink "$PYZ_DEST" 2>/dev/null) == "$release" ]]; then
    note "$PYZ_DEST is up to date ($(basename "$release"))"
  else
    if [[ -e $PYZ_DEST || -L $PYZ_DEST ]]; then CHANGED=1; fi
    run install -m 0755 -o root -g root "$PYZ" "$release.new"
    run mv -f "$release.new" "$release"
    run ln -sfn "$release" "$PYZ_DEST.new"
    run mv -Tf "$PYZ_DEST.new" "$PYZ_DEST"
    # keep the three newest releases: older ones cannot be in use any more
    if ((!DRY_RUN)); then
      while read -r old; do
        [[ $old != "$release" ]] && run rm -f "$old"
      done < <(find "$RELEASES" -maxdepth 1 -name 'scitq-*.pyz' -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2-)
    fi
  fi
  if [[ -L $BIN_LINK && $(readlink "$BIN_LINK") == "$PYZ_DEST" ]]; then
    note "$BIN_LINK -> $PYZ_DEST exists"
  else
    run ln -sfn "$PYZ_DEST" "$BIN_LINK"
  fi
  if ((!DRY_RUN)); then
    version=$("$PYTHON" "$PYZ_DEST" --version) || fail "the installed $PYZ_DEST does not run with $PYTHON"
    note "installed $version"
  fi
}

first_address() {
  local addr
  addr=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -n1 || true)
  [[ -n $addr ]] || addr=$(ip -4 -o addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)
  echo "${addr:-127.0.0.1}"
}

default_public_url() {
  local url
  url="https://$(first_address)"
  [[ $HTTPS_PORT == 443 ]] || url+=":$HTTPS_PORT"
  echo "$url"
}

# --- PostgreSQL ---------------------------------------------------------------------------------
pg_port() { pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $3; exit}'; }
psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$(pg_port)" "$@"; }

setup_postgresql() { # prints nothing on stdout but notes; sets DATABASE when it makes the role
  local password
  if ((DRY_RUN)); then
    echo "[dry-run] start PostgreSQL, create role $DB_ROLE and database $DB_NAME unless they exist"
    DATABASE="postgresql://$DB_ROLE:********@127.0.0.1:5432/$DB_NAME"
    return
  fi
  if [[ -z $(pg_port) ]]; then
    local cluster
    local version cluster
    read -r version cluster _ < <(pg_lsclusters -h 2>/dev/null) || true
    [[ -n $cluster ]] || fail "PostgreSQL is installed but has no cluster: pg_createcluster --start <version> main"
    if systemd_running; then run systemctl start postgresql; else run pg_ctlcluster "$version" "$cluster" start; fi
    for _ in $(seq 1 30); do [[ -n $(pg_port) ]] && break; sleep 1; done
    [[ -n $(pg_port) ]] || fail "PostgreSQL did not start: see journalctl -u postgresql"
  fi
  if [[ $(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'") == 1 ]] && [[ -e $CONF ]]; then
    note "PostgreSQL role $DB_ROLE exists (its password is in $CONF)"
  else
    password=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
    if [[ $(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'") == 1 ]]; then
      note "PostgreSQL role $DB_ROLE exists but $CONF does not: giving it a new password"
      echo "+ psql: ALTER ROLE $DB_ROLE PASSWORD ********"
      psql_admin -c "ALTER ROLE $DB_ROLE LOGIN PASSWORD '$password'"
    else
      echo "+ psql: CREATE ROLE $DB_ROLE LOGIN PASSWORD ********"
      psql_admin -c "CREATE ROLE $DB_ROLE LOGIN PASSWORD '$password'"
    fi
    DATABASE="postgresql://$DB_ROLE:$password@127.0.0.1:$(pg_port)/$DB_NAME"
  fi
  if [[ $(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") == 1 ]]; then
    note "PostgreSQL database $DB_NAME exists"
  else
    run runuser -u postgres -- createdb -p "$(pg_port)" -O "$DB_ROLE" "$DB_NAME"
  fi
}

# --- configuration ------------------------------------------------------------------------------
write_config() {
  local content
  if [[ -e $CONF ]]; then
    note "keeping the existing $CONF (it is never overwritten; delete it to have it written again)"
    if [[ -n $SERVER_URL || -n $JOIN_TOKEN || -n $NAME || -n $CONCURRENCY || -n $PUBLIC_URL ]]; then
      note "warning: the options given for $CONF are not applied to the existing file"
    fi
    return
  fi
  content="# scitq configuration, written by install.sh when absent: edit freely, it is never overwritten.
# Every option, its default and its environment variable: scitq config show
"
  if [[ $ROLE == server ]]; then
    local database=$DATABASE
    if [[ $SQLITE == 1 ]]; then
      database="sqlite:///$STATE_DIR/scitq.db"
      note "warning: SQLite is for trials: use PostgreSQL for real work (install.sh server without --sqlite)"
    fi
    content+="
[server]
# The API listens on this host only: nginx serves it to workers and people over TLS
# (/etc/nginx/sites-available/scitq). Give another address only behind a firewall.
listen = 127.0.0.1
port = $API_PORT
database = $database
# The certificate nginx presents: join tokens carry its fingerprint so workers pin it.
tls_certificate = $TLS_DIR/scitq.crt
# The URL workers use to reach this server, printed with join tokens.
public_url = ${PUBLIC_URL:-$(default_public_url)}
# Storage remotes tasks may use (rclone config, handed to workers): see the README.
# rclone_config = /etc/rclone.conf

# [dispatcher]
# lease = 30
# offline_after = 60

[client]
# The scitq CLI on this host: it talks to the API directly and reads the admin token
# from [client] token_file (default $ADMIN_TOKEN).
server = http://127.0.0.1:$API_PORT
"
    # the services run as scitq and read it; it holds the database password
    write_file "$CONF" 640 root:scitq "$content"
  else
    content+="
[worker]
server = $SERVER_URL
# Used once to register: the worker then keeps its own credential in its state
# ($STATE_DIR/work/.scitq, root only). Admin and user tokens are refused here.
join_token = $JOIN_TOKEN
${NAME:+name = $NAME
}concurrency = ${CONCURRENCY:-1}
# Plain tasks (no container) run as this unprivileged account, made by install.sh; root would let
# them read the worker's token and storage keys.
task_user = $TASK_USER
# What runs the tasks: none (plain commands), docker, podman or apptainer.
# engine = none
# How long running tasks may take to finish when the worker is upgraded (s).
# upgrade_deadline = 3600
"
    write_file "$CONF" 600 root:root "$content" # the worker runs as root
  fi
}

# --- TLS and nginx ------------------------------------------------------------------------------
setup_tls() {
  ensure_dir "$TLS_DIR" 0755
  if [[ -n $CERT ]]; then
    if cmp -s "$CERT" "$TLS_DIR/scitq.crt" && cmp -s "$KEY" "$TLS_DIR/scitq.key"; then
      note "$TLS_DIR/scitq.crt is up to date"
    else
      run install -m 0644 "$CERT" "$TLS_DIR/scitq.crt"
      run install -m 0600 "$KEY" "$TLS_DIR/scitq.key"
      NGINX_CHANGED=1
    fi
  elif [[ -s $TLS_DIR/scitq.crt && -s $TLS_DIR/scitq.key ]]; then
    note "keeping the certificate in $TLS_DIR"
  else
    local name san addr
    name=$(hostname -f 2>/dev/null || hostname)
    san="DNS:$name,DNS:localhost,IP:127.0.0.1"
    [[ $(hostname) == "$name" ]] || san+=",DNS:$(hostname)"
    for addr in $(hostname -I 2>/dev/null); do san+=",IP:$addr"; done
    run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=$name" -addext "subjectAltName=$san" -addext "basicConstraints=critical,CA:TRUE" \
      -keyout "$TLS_DIR/scitq.key.new" -out "$TLS_DIR/scitq.crt.new"
    run chmod 0600 "$TLS_DIR/scitq.key.new"
    run chmod 0644 "$TLS_DIR/scitq.crt.new"
    run mv -f "$TLS_DIR/scitq.key.new" "$TLS_DIR/scitq.key"
    run mv -f "$TLS_DIR/scitq.crt.new" "$TLS_DIR/scitq.crt"
    NGINX_CHANGED=1
  fi
}

fingerprint() { openssl x509 -in "$TLS_DIR/scitq.crt" -outform DER | sha256sum | cut -d' ' -f1; }

setup_nginx() {
  local content ipv6=""
  if [[ -s /proc/net/if_inet6 ]]; then ipv6="    listen [::]:$HTTPS_PORT ssl;
"; fi
  local upstream="" port
  for ((port = API_PORT; port < API_PORT + API_PROCESSES; port++)); do upstream+="    server 127.0.0.1:$port;
"; done
  content="# scitq API over TLS. Written by install.sh (rewritten when it runs again; copy it to keep changes).
# The API processes (install.sh server --api-processes N); long-polls make the least busy the best pick.
upstream scitq_api {
    least_conn;
${upstream}    # connections kept open to the API processes (a new one per request costs them ~1.1x the CPU
    # per request); closed here after 60 s idle, before the API's own 120-s timeout can race one
    keepalive 64;
    keepalive_timeout 60s;
}
# which API process served each request (\$upstream_addr) and how long it took
log_format scitq '\$remote_addr [\$time_local] \"\$request\" \$status \$body_bytes_sent '
                 'upstream=\$upstream_addr time=\$request_time';
server {
    listen $HTTPS_PORT ssl;
${ipv6}    server_name _;
    ssl_certificate $TLS_DIR/scitq.crt;
    ssl_certificate_key $TLS_DIR/scitq.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 64m;
    access_log /var/log/nginx/scitq.access.log scitq;
    location / {
        proxy_pass http://scitq_api;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";  # keep-alive to the upstream (see keepalive above)
        # the client's own Host: the server checks it (DNS rebinding)
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto https;
        # workers long-poll their claims; output streams in
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        proxy_buffering off;
    }
}
"
  if [[ -f $NGINX_SITE ]] && [[ $(cat "$NGINX_SITE") == "${content%$'\n'}" ]]; then
    note "$NGINX_SITE is up to date"
  else
    write_file "$NGINX_SITE" 644 root:root "$content"
    NGINX_CHANGED=1
  fi
  if [[ $(readlink "$NGINX_LINK" 2>/dev/null) != "$NGINX_SITE" ]]; then
    run ln -sfn "$NGINX_SITE" "$NGINX_LINK"
    NGINX_CHANGED=1
  fi
  ((DRY_RUN)) || nginx -t -q || fail "nginx refuses its configuration: see the message above"
  if systemd_running; then
    enable nginx
    if ((NGINX_CHANGED)) || ! systemctl is-active --quiet nginx; then run systemctl reload-or-restart nginx; fi
  fi
}
NGINX_CHANGED=0

# --- units --------------------------------------------------------------------------------------
install_units() {
  local units=() unit
  if [[ $ROLE == server ]]; then
    units=(scitq-server.service scitq-server@.service scitq-dispatcher.service scitq.target)
  else
    units=(scitq-worker.service)
  fi
  for unit in "${units[@]}"; do
    [[ -f $HERE/systemd/$unit ]] || fail "$HERE/systemd/$unit is missing"
    if [[ -f $UNIT_DIR/$unit ]] && cmp -s "$HERE/systemd/$unit" "$UNIT_DIR/$unit"; then
      note "$UNIT_DIR/$unit is up to date"
    else
      run install -D -m 0644 "$HERE/systemd/$unit" "$UNIT_DIR/$unit"
      UNITS_CHANGED=1
    fi
  done
  if ((UNITS_CHANGED)) && systemd_running; then run systemctl daemon-reload; fi
}

upgrade_schema() {
  if ((!DRY_RUN)) && ! runuser -u scitq -- test -r "$CONF"; then
    fail "user scitq, which runs the services, cannot read $CONF: chgrp scitq $CONF; chmod 640 $CONF"
  fi
  # The server and the dispatcher must not run old code on a newer schema: stop them first.
  if ((CHANGED)) && systemd_running && systemctl is-active --quiet scitq-server scitq-dispatcher; then
    run systemctl stop scitq.target scitq-server scitq-dispatcher
  fi
  if ((DRY_RUN)); then echo "[dry-run] scitq db upgrade (as user scitq)"; return; fi
  local pending
  pending=$(scitq_as scitq db status --json | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["pending"]))') ||
    fail "cannot read the database's schema version: see the message above"
  if ((pending == 0)); then note "the database schema is up to date"; return; fi
  echo "+ scitq db upgrade (as user scitq): $pending migration(s)"
  scitq_as scitq db upgrade || fail "the schema upgrade failed: see the message above"
}

create_admin_token() {
  local name reply secret
  # `db upgrade` on an empty database made it; a database older than that gets one here
  if [[ -s $ADMIN_TOKEN ]]; then note "the admin token is in $ADMIN_TOKEN"; return; fi
  if ((DRY_RUN)); then echo "[dry-run] scitq token create --role admin (secret into $ADMIN_TOKEN, mode 600)"; return; fi
  name="admin@$(hostname)"
  if scitq_as scitq token list --json | "$PYTHON" -c 'import json,sys; sys.exit(sys.argv[1] not in [t["name"] for t in json.load(sys.stdin)])' "$name"; then
    name="$name-$(date +%Y%m%d%H%M%S)"
  fi
  echo "+ scitq token create --role admin $name (secret into $ADMIN_TOKEN, mode 600)"
  reply=$(scitq_as scitq token create --role admin "$name" --json) || fail "could not create the admin token"
  secret=$(printf '%s' "$reply" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
  (umask 077; printf '%s\n' "$secret" >"$ADMIN_TOKEN.new")
  chown scitq:scitq "$ADMIN_TOKEN.new"
  mv -f "$ADMIN_TOKEN.new" "$ADMIN_TOKEN"
}

start_server() {
  if ! systemd_running; then
    note "systemd is not running here (a container?): units installed, nothing started"
    note "start by hand as user scitq in $STATE_DIR: scitq server --no-dispatcher, and scitq dispatcher"
    ((API_PROCESSES == 1)) || note "and the other API processes: scitq server --no-dispatcher --port 5001 (up to $((API_PORT + API_PROCESSES - 1)))"
    return
  fi
  enable scitq-server.service scitq-dispatcher.service scitq.target
  local unit extra=() port
  for unit in $(extra_api_units); do
    port=${unit#scitq-server@}; port=${port%.service}
    if ((port - API_PORT >= API_PROCESSES)); then
      run systemctl disable --now --quiet "$unit"
    fi
  done
  for ((port = API_PORT + 1; port < API_PORT + API_PROCESSES; port++)); do extra+=("scitq-server@$port.service"); done
  if ((${#extra[@]})); then enable "${extra[@]}"; fi
  if ((CHANGED || UNITS_CHANGED)); then
    run systemctl restart scitq.target scitq-server scitq-dispatcher "${extra[@]}"
  elif all_active scitq-server scitq-dispatcher "${extra[@]}"; then
    note "scitq-server and scitq-dispatcher are running${extra[*]:+, and ${extra[*]%.service}}"
  else
    run systemctl start scitq.target scitq-server scitq-dispatcher "${extra[@]}"
  fi
  for ((port = API_PORT; port < API_PORT + API_PROCESSES && !DRY_RUN; port++)); do
    check_health "http://127.0.0.1:$port" >/dev/null ||
      fail "the API process on port $port does not answer: see journalctl -u 'scitq-server*'"
  done
}

# all_active UNIT...: whether every one of the units is active (systemctl is-active says whether any is).
all_active() {
  local unit
  for unit in "$@"; do systemctl is-active --quiet "$unit" || return 1; done
}

# extra_api_units: the scitq-server@PORT instances enabled now (the API processes beyond the first).
extra_api_units() {
  local link
  for link in "$UNIT_DIR"/scitq.target.wants/scitq-server@*.service; do
    [[ -e $link || -L $link ]] && basename "$link"
  done
  return 0
}

# api_processes: --api-processes, else as many as are enabled now (re-runs keep them), else 1.
api_processes() {
  if [[ -n $API_PROCESSES ]]; then echo "$API_PROCESSES"; return; fi
  echo $(($(extra_api_units | wc -l) + 1))
}

# check_health URL [FINGERPRINT]: wait (60 s at most) until GET URL/api/v1/health answers 200 and
# print the version; an https URL is checked with its certificate pinned to FINGERPRINT.
check_health() {
  "$PYTHON" - "$1" "${2:-}" <<'EOF'
import hashlib, http.client, json, ssl, sys, time
from urllib.parse import urlsplit
url, pin = urlsplit(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE   # pinned below instead
start = time.monotonic()
deadline, last = start + 60, "no answer"
while time.monotonic() < deadline:
    try:
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=5)
            conn.connect()
            seen = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
            if seen != pin:
                conn.close()
                # nginx's old workers may still answer for a moment after a reload: a new
                # certificate is only wrong if it is still not served some seconds later
                if time.monotonic() - start > 15:
                    sys.exit(f"the certificate served is {seen}, not {pin}")
                time.sleep(0.5)
                continue
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
        conn.request("GET", "/api/v1/health")
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        if reply.status == 200:
            print(json.loads(body).get("version", "?"))
            sys.exit(0)
        last = f"HTTP {reply.status}"
    except (OSError, ValueError) as e:
        last = str(e)
    time.sleep(0.5)
sys.exit(f"no healthy answer within 60 s ({last})")
EOF
}

finish_server() {
  local url fp version
  if ((DRY_RUN)); then note "dry run done: nothing was changed"; return; fi
  fp=$(fingerprint)
  url=$(sed -n 's/^public_url *= *//p' "$CONF" | tail -n1)
  url=${url:-$(default_public_url)}
  if systemd_running; then
    # through nginx on this host, with the certificate pinned: what a worker will see
    version=$(check_health "https://127.0.0.1:$HTTPS_PORT" "$fp") || fail "the API does not answer through TLS on port $HTTPS_PORT: see journalctl -u scitq-server -u nginx"
    note "the API answers through TLS: $url (scitq $version)"
  fi
  cat <<EOF
$PROG: done: the scitq server is installed.
  API (TLS)          $url   certificate sha256 $fp
  configuration      $CONF   (scitq config show)
  admin token        $ADMIN_TOKEN (the scitq CLI on this host uses it; give people their own:
                     scitq token create --role user NAME)
  logs               journalctl -u scitq-server -u scitq-dispatcher
Left to do:
  - add workers: scitq worker join-token   then, on each worker host:
      install.sh worker --server $url --join-token TOKEN
  - storage: write the rclone remotes tasks use in /etc/rclone.conf (see the README)
  - open TCP port $HTTPS_PORT to the workers in your firewall; back up the database
EOF
}

# --- worker -------------------------------------------------------------------------------------
worker_state() { echo "$STATE_DIR/work/.scitq/state.json"; }
worker_registered() { "$PYTHON" -c 'import json,sys; sys.exit(not json.load(open(sys.argv[1])).get("worker_id"))' "$(worker_state)" 2>/dev/null; }

start_worker() {
  local pid_before pid=""
  if ! systemd_running; then
    note "systemd is not running here (a container?): unit installed, nothing started"
    note "start by hand as root in $STATE_DIR: scitq worker run"
    return
  fi
  enable scitq-worker.service
  if ((CHANGED)) && systemctl is-active --quiet scitq-worker; then
    # an upgrade: the agent drains (finishes its tasks, at most [worker] upgrade_deadline), exits,
    # and systemd starts it again on the new release
    pid_before=$(systemctl show -p MainPID --value scitq-worker)
    run systemctl kill --kill-who=main --signal=SIGUSR1 scitq-worker
    for _ in $(seq 1 30); do
      pid=$(systemctl show -p MainPID --value scitq-worker)
      if [[ $pid != "$pid_before" && $pid != 0 ]]; then break; fi
      sleep 1
    done
    if [[ $pid != "$pid_before" && $pid != 0 ]]; then
      note "the worker restarted on the new version"
    else
      note "the worker is finishing its running tasks; it restarts on the new version when they end"
      note "(at most [worker] upgrade_deadline seconds; follow it with: journalctl -fu scitq-worker)"
      return
    fi
  elif ((UNITS_CHANGED)) || ! systemctl is-active --quiet scitq-worker; then
    run systemctl restart scitq-worker.service
  else
    note "scitq-worker is running"
  fi
  for _ in $(seq 1 60); do
    if worker_registered; then
      note "done: the worker is registered with its server (logs: journalctl -u scitq-worker)"
      return
    fi
    if systemctl is-failed --quiet scitq-worker; then break; fi
    sleep 1
  done
  journalctl -u scitq-worker -n 15 --no-pager >&2 || true
  fail "the worker did not register: see its log above"
}

# --- uninstall ----------------------------------------------------------------------------------
uninstall() {
  local unit units=(scitq-worker.service scitq-server.service scitq-dispatcher.service scitq.target)
  for unit in $(extra_api_units); do
    if systemd_running; then run systemctl disable --now --quiet "$unit" || true; fi
  done
  units+=(scitq-server@.service)
  for unit in "${units[@]}"; do
    if [[ -f $UNIT_DIR/$unit ]]; then
      if systemd_running; then run systemctl disable --now --quiet "$unit" || true; fi
      run rm -f "$UNIT_DIR/$unit"
    fi
  done
  if systemd_running; then run systemctl daemon-reload; fi
  if [[ -e $NGINX_SITE || -L $NGINX_LINK ]]; then
    run rm -f "$NGINX_LINK" "$NGINX_SITE"
    if systemd_running && systemctl is-active --quiet nginx; then run systemctl reload nginx; fi
  fi
  if [[ -L $BIN_LINK ]]; then run rm -f "$BIN_LINK"; fi
  if [[ -d $LIB_DIR ]]; then
    run rm -f "$PYZ_DEST" "$RELEASES"/scitq-*.pyz
    run rmdir "$RELEASES" "$LIB_DIR"
  fi
  if ((!PURGE)); then
    note "done: scitq is uninstalled; kept $CONF, $ETC_DIR, $STATE_DIR and the database (--purge removes them)"
    return
  fi
  if command -v pg_lsclusters >/dev/null && [[ -n $(pg_port) ]] && grep -qs "^database *= *postgresql://$DB_ROLE:[^@]*@127.0.0.1:[0-9]*/$DB_NAME\$" "$CONF"; then
    run runuser -u postgres -- dropdb -p "$(pg_port)" --if-exists "$DB_NAME"
    run runuser -u postgres -- dropuser -p "$(pg_port)" --if-exists "$DB_ROLE"
  fi
  local dir
  for dir in "$STATE_DIR" "$ETC_DIR"; do
    if [[ -f $dir/.made-by-scitq-install ]]; then
      run rm -rf "$dir"
    elif [[ -d $dir ]]; then
      note "warning: keeping $dir: install.sh did not make it (no $dir/.made-by-scitq-install)"
    fi
  done
  run rm -f "$CONF"
  local user
  for user in scitq "$TASK_USER"; do
    if id -u "$user" >/dev/null 2>&1; then run userdel "$user"; fi
  done
  note "done: scitq is uninstalled and purged"
}

# --- main ---------------------------------------------------------------------------------------
if [[ $ROLE == uninstall ]]; then
  note "uninstalling scitq$( ((PURGE)) && echo ' (purge: configuration, data and database too)')$( ((DRY_RUN)) && echo ' (dry run: nothing is changed)')"
  uninstall
  exit 0
fi
note "installing the scitq $ROLE role from $PYZ$( ((DRY_RUN)) && echo ' (dry run: nothing is changed)')"
install_packages
create_user_and_dirs
install_pyz
if [[ $ROLE == server ]]; then
  API_PROCESSES=$(api_processes)
  if ((API_PROCESSES > 1)) && grep -qs '^database *= *sqlite' "$CONF"; then
    die "--api-processes $API_PROCESSES needs PostgreSQL: $CONF says SQLite, which takes one API process"
  fi
  if [[ ! -e $CONF && -z $DATABASE && $SQLITE == 0 ]]; then setup_postgresql; fi
  write_config
  setup_tls
  install_units
  upgrade_schema
  create_admin_token
  start_server
  setup_nginx
  finish_server
else
  write_config
  install_units
  start_worker
fi
