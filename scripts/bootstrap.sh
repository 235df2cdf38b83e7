#!/usr/bin/env bash
# Create .venv with dpflows and everything its tests need. Idempotent; safe on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need, installed only when missing (so a ready machine pays nothing):
# the PostgreSQL server binaries for the PostgreSQL ledger tests, and Java for the Spark tests.
# Only as root with apt-get; otherwise say what is missing and go on (the tests then skip, or
# fail under CI=true, naming it).
apt_missing=()
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  apt_missing+=(postgresql)
fi
if ! command -v java >/dev/null 2>&1; then
  apt_missing+=(default-jre-headless)
fi
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

PY=${PYTHON:-python3}
# Headless Chromium for the planner's browser test (tests/ui): Debian's package, only when
# missing, only as root, only where apt-get exists; otherwise that test skips (fails in CI).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dpflows-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,postgres,spark]"
  touch "$stamp"
fi
