#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py: RM benchmark at 1B and QLoRA 8B, RLOO throughput, one verification seed),
# one command whenever a GPU is lent:
#   bash scripts/gpu_wheels.sh                        # here, once: .whl/ for the GPU machine, which has no network
#   device run, carry [".whl"]:  bash scripts/gpu_check.sh $OUT/gpu    # every part with its own time limit
#   bash scripts/gpu_check.sh /tmp/gpu --dry-run      # CPU, tiny shapes, the project's .venv: the same code paths
# Extra arguments go to gpu_check.py (e.g. --parts rm_1b qlora_8b). Wheels are byte-compiled as they are installed:
# these machines set PYTHONDONTWRITEBYTECODE, and every part's processes would otherwise compile them again.
set -uo pipefail
out=${1:?usage: bash scripts/gpu_check.sh OUT [--dry-run] [--parts PART ...] [--budget SECONDS]}
shift
out=$(realpath -m "$out")  # relative to where it was called from
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [[ " $* " == *" --dry-run "* ]]; then
  source scripts/setup.sh
  python=.venv/bin/python
else  # the GPU image's python3 (CUDA torch), with the carried wheels in front of its own packages
  python=python3
  if [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "gpu_check: installing .whl/ failed; the image's packages are used" >&2
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # varirm from this checkout
fi
exec "$python" scripts/gpu_check.py "$out" "$@"
