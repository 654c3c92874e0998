#!/usr/bin/env bash
# The main job: set up, then run a local control plane with two demo services and their agents (real Envoys,
# mTLS). Stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dpagent demo "$@"
