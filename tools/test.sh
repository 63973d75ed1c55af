#!/usr/bin/env bash
# The README's test command on a fresh machine: makes the project's virtual
# environment (.venv, see tools/venv.sh), installs keras_epi with its test
# extra into it, and runs the test suite on 2 cores under TensorFlow (the
# default backend), then the tests marked `backends` (pytest.ini) under JAX.
# KERAS_EPI_TEST_TORCH names a torch to install for a third run, under
# PyTorch (CI: "torch==2.13.0", the CPU build on its disk); where it is
# unset there is none, and tests/backends_test.py compares TensorFlow with
# JAX only. Extra arguments go to every pytest run (e.g. tools/test.sh
# tests/graph_test.py -k residual).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/venv.sh
"$PY" -m pip install -q -e ".[test]"
if [ -n "${KERAS_EPI_TEST_TORCH:-}" ]; then
  "$PY" -m pip install -q "$KERAS_EPI_TEST_TORCH"
fi
# pytest's status 5 is "no test selected" (arguments naming other tests).
run() { "$PY" -m pytest -n 2 "$@" || [ $? -eq 5 ]; }
KERAS_BACKEND=tensorflow run "$@"
KERAS_BACKEND=jax run -m backends "$@"
if [ -n "${KERAS_EPI_TEST_TORCH:-}" ]; then
  KERAS_BACKEND=torch run -m backends "$@"
fi
