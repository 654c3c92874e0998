#!/usr/bin/env bash
# The test command: sets up the venv if needed, lints, then runs the whole pytest suite (real Envoy included).
# Tests that need root or network namespaces skip themselves when they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
