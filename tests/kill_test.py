"""SIGKILL at every point of an EPI run, then the same command again.

Each case runs tests/kill_worker.py in a subprocess that kills itself
(SIGKILL: no exception handler, no `finally`, no callback runs) at one
point, runs the same command again, and requires the final model to equal
that of an uninterrupted run: same pruned architecture, the same weights
(shuffle=False and deterministic ops make the data order and arithmetic
reproducible) and the same optimizer step counter.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(directory, runner, kill_at=None):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
             TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
  command = [sys.executable, "-m", "tests.kill_worker", str(directory),
             runner] + ([kill_at] if kill_at else [])
  return subprocess.run(command, cwd=_ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def _final(directory):
  with np.load(os.path.join(directory, "final.npz")) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  finals = {}
  for runner in ("fit", "model.fit"):
    directory = tmp_path_factory.mktemp(f"reference_{runner}")
    result = _run(directory, runner)
    assert result.returncode == 0, result.stderr[-3000:]
    finals[runner] = _final(directory)
  return finals


@pytest.mark.parametrize("runner, kill_at", [
    ("fit", "1:1"),      # mid-epoch, before the trigger
    ("fit", "cut"),      # in the prune step: the plan written
    ("fit", "weights"),  # in the prune step: pruned weights written
    ("fit", "state"),    # in the prune step: state written
    ("fit", "removed"),  # in the prune step: dense checkpoint removed
    ("fit", "2:1"),      # the first epoch after the prune
    ("fit", "4:2"),      # later
    ("model.fit", "1:2"),
    ("model.fit", "2:1"),
    ("model.fit", "3:3"),
])
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path, reference, runner, kill_at):
  killed = _run(tmp_path, runner, kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert not os.path.exists(tmp_path / "final.npz")

  resumed = _run(tmp_path, runner)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  final, expected = _final(tmp_path), reference[runner]
  assert int(final["prune_epoch"]) == 2
  assert int(final["iterations"]) == int(expected["iterations"])
  assert float(final["learning_rate"]) == float(expected["learning_rate"])
  assert sorted(final) == sorted(expected)
  for key in expected:
    assert final[key].shape == expected[key].shape, key
    np.testing.assert_allclose(final[key], expected[key], rtol=0, atol=1e-6,
                               err_msg=key)
