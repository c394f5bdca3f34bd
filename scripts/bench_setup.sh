#!/usr/bin/env bash
# Fresh-clone timings of the README's commands, as a new user meets them: set-up (no .venv, empty package caches)
# with uv and with the pip fallback, and with --suite also .ci/run (lock check, ruff, the whole test suite) and
# bash scripts/demo.sh after set-up. Each in a clone of HEAD in a new temporary directory with a copy of ../shared
# beside it. Writes results/bench_setup.json and .md (this CPU named).
#   bash scripts/bench_setup.sh [--suite]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD; commit=$(git rev-parse --short HEAD)  # what the clones hold
work=$(mktemp -d /tmp/varirm-bench-setup.XXXXXX); trap 'rm -rf "$work"' EXIT
suite=${1:-}
[ -d ../shared ] && cp -r ../shared "$work/shared"
seconds() {  # seconds NAME COMMAND...: run in $work/NAME (a fresh clone), print the wall time, fail loudly
  local dir="$work/$1"; shift
  [ -d "$dir" ] || git clone -q "$repo" "$dir"
  local start=$(date +%s.%N)
  (cd "$dir" && "$@") > "$work/$(basename "$dir").log" 2>&1 || { tail -20 "$work/$(basename "$dir").log" >&2; exit 1; }
  python3 -c "print(round($(date +%s.%N) - $start, 1))"
}
uv_s=$(UV_CACHE_DIR="$work/uv-cache" PIP_CACHE_DIR="$work/pip-cache-uv" seconds main bash -c 'source scripts/setup.sh')
pip_s=$(VARIRM_INSTALLER=pip PIP_CACHE_DIR="$work/pip-cache" seconds pip bash -c 'source scripts/setup.sh')
ci_s=null; demo_s=null; tests=null
if [ "$suite" = "--suite" ]; then
  ci_s=$(CI=true seconds main bash .ci/run)
  tests=$(grep -E "^[0-9]+ passed" "$work/main.log" | tail -1)
  demo_s=$(seconds main bash scripts/demo.sh)
  tests="\"$tests\""
fi
cpu=$(python3 -c "import platform, re; t=open('/proc/cpuinfo').read(); m=re.search(r'model name\s*:\s*(.*)', t); flags=set(re.search(r'flags\s*:\s*(.*)', t).group(1).split()); print((m.group(1).strip() if m else platform.machine()) + ', ' + ('AMX' if 'amx_bf16' in flags else 'AVX512-BF16' if 'avx512_bf16' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'))")
mkdir -p results
cat > results/bench_setup.json <<JSON
{"date": "$(date -u +%F)", "commit": "$commit", "cpu": "$cpu", "cores": $(nproc),
 "setup_uv_s": $uv_s, "setup_pip_s": $pip_s, "ci_run_s": $ci_s, "ci_tests": $tests, "demo_s": $demo_s}
JSON
python3 - <<'PY'
import json
r = json.load(open("results/bench_setup.json"))
lines = ["## Fresh-clone set-up, tests and demo", "",
         f"`bash scripts/bench_setup.sh` on {r['date']}, commit {r['commit']}, {r['cpu']}, {r['cores']} cores; each in a "
         "fresh clone with empty package caches.", "", "| what | seconds |", "|---|---|",
         f"| set-up with uv (`scripts/setup.sh`) | {r['setup_uv_s']} |",
         f"| set-up with pip (`VARIRM_INSTALLER=pip`) | {r['setup_pip_s']} |"]
if r["ci_run_s"] is not None:
    lines += [f"| `.ci/run` after set-up ({r['ci_tests']}) | {r['ci_run_s']} |",
              f"| `bash scripts/demo.sh` after set-up | {r['demo_s']} |"]
open("results/bench_setup.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
