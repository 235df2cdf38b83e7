#!/usr/bin/env bash
# Create .venv with dpflows and what its tests need. Idempotent; fast when all is present.
#   bootstrap.sh               Python packages only (enough to run the service)
#   bootstrap.sh --test-deps   also the system packages the whole test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test-deps" ]; then
  # System packages, installed only when missing (a ready machine pays nothing): PostgreSQL's
  # server binaries (ledger contract and multi-host tests), Java (Spark ingestion tests),
  # Chromium (planner browser test) and nginx (the deployment in front of gunicorn, deploy/nginx.conf,
  # tested in tests/security/test_slow_clients.py; the tests run their own nginx process, never
  # Debian's service). Only as root with apt-get; otherwise say what is missing and go on: the
  # tests then skip naming it, or fail under CI=true.
  apt_missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_missing+=(postgresql)
  command -v java >/dev/null 2>&1 || apt_missing+=(default-jre-headless)
  command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx)
  if [ ${#apt_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: installing ${apt_missing[*]} with apt-get" >&2
      apt_log=$(mktemp)
      if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             "${apt_missing[@]}"; } >"$apt_log" 2>&1; then
        rm -f "$apt_log"
      else
        echo "bootstrap: warning: apt-get could not install ${apt_missing[*]}; last lines of $apt_log:" >&2
        tail -n 20 "$apt_log" >&2
      fi
    else
      echo "bootstrap: warning: ${apt_missing[*]} missing; install as root (apt-get install ${apt_missing[*]})" >&2
    fi
  fi
  extras="dev,postgres,spark"
else
  extras="dev,postgres"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.dpflows-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[${extras}]"
  touch "$stamp"
fi
