#!/usr/bin/env bash
# Creates .venv with dpagent and its dev tools. Idempotent: a second run only re-checks.
# On a fresh Debian host it installs python3-venv first (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.dpagent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[dev]'
  # Optional: the python-iptables backend builds from source (needs a C compiler); its tests skip without it.
  .venv/bin/pip install -q 'python-iptables>=1.0' >/dev/null 2>&1 \
    || echo "note: python-iptables not installed (no compiler?); its backend's tests will be skipped"
  touch "$stamp"
fi
