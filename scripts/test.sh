#!/usr/bin/env bash
# Run the whole test suite (slow and end-to-end tests included) in the project's own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test-deps
exec .venv/bin/python -m pytest "$@"
