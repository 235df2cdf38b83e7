#!/usr/bin/env bash
# Start dpflows on 127.0.0.1 with an embedded SQLite ledger and a generated demo city.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dpflows demo "$@"
