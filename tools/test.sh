#!/usr/bin/env bash
# The README's test command on a fresh machine: makes the project's virtual
# environment (.venv, see tools/venv.sh), installs keras_epi with its test
# extra into it, and runs the test suite on 2 cores. Extra arguments go to
# pytest (e.g. tools/test.sh tests/graph_test.py -k residual).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pytest -n 2 "$@"
