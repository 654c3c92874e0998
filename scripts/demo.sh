#!/usr/bin/env bash
# The main job: set up, then run dpagent. (Grows into "local CP + demo dataplanes" with the control plane.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dpagent run --help
