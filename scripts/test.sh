#!/usr/bin/env bash
# Set up .venv (see setup.sh), then run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
python -m pytest -q -p no:cacheprovider "$@"
