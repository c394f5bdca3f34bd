#!/usr/bin/env bash
# requirements.lock: every package of the README commands, CI and the benchmarks at an exact version with its
# hashes (pyproject's dependencies with the test and real extras and the dev group; trl, the bench extra, is in
# the test extra too), for CPython 3.11 on Linux x86_64, resolved by uv. pyproject keeps ranges; only
# scripts/setup.sh installs from the lock.
#   bash scripts/lock.sh           re-resolve to the newest releases that pyproject allows (then run the tests)
#   bash scripts/lock.sh --check   exit 1 if the lock no longer matches pyproject (run by .ci/run); writes nothing
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || command -v uv || true)
if [ -z "$uv" ]; then echo "lock.sh: uv not found: run 'bash scripts/setup.sh' first (it installs uv into .venv)" >&2; exit 2; fi
compile() {  # compile OUTPUT [extra uv options]
  local out=$1; shift
  "$uv" pip compile pyproject.toml --extra test --extra real --group dev \
    -c lock/constraints.txt --overrides lock/overrides.txt --find-links /opt/wheels \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
    --custom-compile-command "bash scripts/lock.sh" --quiet -o "$out" "$@"
}
if [ "${1:-}" = "--check" ]; then
  # uv keeps the versions already in the output file unless pyproject rules them out, so a re-resolution
  # seeded with the lock changes nothing exactly when the lock still satisfies pyproject
  tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
  cp requirements.lock "$tmp"
  compile "$tmp"
  if ! diff -u requirements.lock "$tmp" >&2; then
    echo "lock.sh: requirements.lock does not match pyproject.toml: run 'bash scripts/lock.sh' and the tests" >&2
    exit 1
  fi
  echo "lock.sh: requirements.lock matches pyproject.toml"
else
  compile requirements.lock --upgrade
  echo "lock.sh: wrote requirements.lock ($(grep -c '^[A-Za-z0-9]' requirements.lock) packages)"
fi
