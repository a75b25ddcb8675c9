#!/usr/bin/env bash
# tests/run.sh -- install what the test suite needs on a Debian/Ubuntu machine and run it,
# on SQLite and on a real PostgreSQL (a throwaway cluster the tests start themselves).
#   tests/run.sh [PYTEST ARGS...]
# Needs root (apt-get, network namespaces, PostgreSQL as the postgres user) or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
PACKAGES=(python3 python3-venv python3-pip postgresql iproute2 iptables procps
          podman runc busybox-static docker-registry docker.io  # container tests (docker: a private dockerd per test session)
          mmdebstrap systemd-container openssh-client apt-utils  # nspawn machines (tests/support/machines.py)
          shellcheck python3-libcloud)  # python3-libcloud: the providers tested with the libcloud a Debian server has
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=${SCITQ_TEST_VENV:-.venv-test}
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  python3 -m venv "$VENV"
fi
echo "==> installing Python packages"
# scitq's own dependencies as pyproject.toml declares them (the pyz lock pins cp310 wheels), then the test tools
deps=$("$VENV/bin/python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["ssh"]))')
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q --disable-pip-version-check $deps -r requirements/test.txt

echo "==> lint: ruff and mypy (configured in pyproject.toml)"
"$VENV/bin/ruff" check scitq_app tests bench
"$VENV/bin/mypy" scitq_app

export SCITQ_TEST_REQUIRE_PG=1 SCITQ_TEST_REQUIRE_CONTAINERS=1 SCITQ_TEST_REQUIRE_MACHINES=1 SCITQ_TEST_REQUIRE_SYSTEM=1
echo "==> preparing the test machines (Debian image and local apt repository, cached in /var/tmp)"
# built once here, so the pytest workers only reuse it; SCITQ_TEST_MACHINES_REBUILD=1 forces a rebuild
"$VENV/bin/python" -m tests.support.machines prepare
unset SCITQ_TEST_MACHINES_REBUILD   # done just now: the test session must not rebuild it again

echo "==> running the tests (SQLite and PostgreSQL)"
set +e
# SCITQ_TEST_JOBS: how many tests run at once (pytest-xdist); 1 runs them one by one.
# loadgroup: the tests marked xdist_group("machines") share one worker, hence one set of machines
"$VENV/bin/python" -m pytest -q -n "${SCITQ_TEST_JOBS:-3}" --dist loadgroup "$@"
rc=$?
set -e
if [ $rc = 5 ]; then echo "no tests ran: that is a failure" >&2; exit 1; fi
exit $rc
