# Sourced by demo.sh and test.sh: creates .venv if missing and installs varirm into it.
# torch is installed first, exactly pinned, so that no other package pulls a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export VARIRM_CACHE="${VARIRM_CACHE:-$PWD/artifacts/cache}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
export PATH="$PWD/.venv/bin:$PATH"
