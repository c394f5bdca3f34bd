# Sourced by demo.sh and test.sh (and .ci/run): creates .venv if missing and installs exactly the locked set
# (requirements.lock, made by scripts/lock.sh) into it, then varirm itself (editable, no dependencies).
# Installer: uv (from the lock's own pin) where it installs, else pip with the same hashes (VARIRM_INSTALLER=pip
# forces pip). torch is the CPU build in /opt/wheels, exactly pinned with its hash, so no CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export VARIRM_CACHE="${VARIRM_CACHE:-$PWD/artifacts/cache}"
if [ ! -x .venv/bin/python ]; then
  python=$(command -v python3.11 || command -v python3)
  if ! "$python" -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")'; then
    echo "setup: requirements.lock is for CPython 3.11 on Linux x86_64; $python is not. In your own environment," \
         "pip install torch first, then pip install -e '.[test,real]' (pyproject's ranges, not the tested set)" >&2
    return 2 2>/dev/null || exit 2
  fi
  "$python" -m venv .venv
fi
uv_version=$(sed -n 's/^uv==\([^ ]*\) .*/\1/p' requirements.lock)
installer=${VARIRM_INSTALLER:-uv}
if [ "$installer" = uv ] && [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$uv_version" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$uv_version" 2>/dev/null || installer=pip
  [ "$installer" = uv ] || echo "setup: uv $uv_version could not be installed; installing the lock with pip" >&2
fi
if [ "$installer" = uv ]; then
  # sync: exactly the lock (packages not in it are removed); hashes checked; torch from /opt/wheels; bytecode
  # compiled now, as pip does (else every run compiles what it imports where PYTHONDONTWRITEBYTECODE is set)
  .venv/bin/uv pip sync -q --python .venv/bin/python --require-hashes --compile-bytecode --find-links /opt/wheels \
    requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps --no-build-isolation -e .
else
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps --find-links /opt/wheels \
    -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
fi
export PATH="$PWD/.venv/bin:$PATH"
