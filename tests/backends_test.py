"""keras_epi on every Keras backend, each run in its own process.

tests/scripts/backend_run.py makes the same model, weights and data on the
backend it is given and writes what keras_epi made of them: Taylor scores
from the train step, filter magnitudes, the plan, the pruned model's output
and shapes, and a `keras_epi.fit` run. These tests require the same on
every backend installed (TensorFlow, JAX, and PyTorch where it is), one
without TensorFlow importable at all, and JAX's DataParallel on two host
devices equal to one device.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = [b for b in ("tensorflow", "jax", "torch")
            if importlib.util.find_spec(b) is not None]


def _run(directory, backend, *flags, devices=1):
  env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2")
  if devices > 1:
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run(
      [sys.executable, "-m", "tests.scripts.backend_run", str(directory),
       *flags], cwd=_ROOT, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  with open(os.path.join(directory, "result.json")) as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, "result.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  return meta, arrays


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = {}
  for backend in BACKENDS:
    out[backend] = _run(tmp_path_factory.mktemp(backend), backend)
  return out


def _check_run(meta):
  fit = meta["fit"]
  assert fit["prune_epoch"] == 1 and fit["prune_reason"] == "deadline"
  assert fit["epochs"] == [0, 1] and fit["loss_finite"]
  assert fit["params"][0] < fit["params"][1]
  assert fit["iterations"] == 2 * 4  # the step counter carried over
  assert fit["reload_error"] < 1e-6
  assert meta["macs"][0] < meta["macs"][1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_epi_prunes_and_trains_on(results, backend):
  meta, _ = results[backend]
  assert meta["backend"] == backend
  _check_run(meta)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one backend installed")
def test_same_scores_plan_and_pruned_model_on_every_backend(results):
  reference, ref = results["tensorflow"]
  for backend in BACKENDS[1:]:
    meta, arrays = results[backend]
    assert sorted(arrays) == sorted(ref)
    for key, value in ref.items():
      if key.startswith("keep/"):
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
      else:  # float32 arithmetic in another order
        np.testing.assert_allclose(arrays[key], value, rtol=1e-4,
                                   atol=1e-6, err_msg=f"{backend}: {key}")
    assert meta["shapes"] == reference["shapes"]
    assert meta["macs"] == reference["macs"]
  # The scores rank: not all equal, so the plan is theirs.
  taylor = np.concatenate([v for k, v in ref.items()
                           if k.startswith("taylor/")])
  assert taylor.min() >= 0 and len(np.unique(taylor)) > len(taylor) // 2


@pytest.mark.parametrize("backend", [b for b in BACKENDS
                                     if b != "tensorflow"])
def test_keras_epi_needs_no_tensorflow(tmp_path, results, backend):
  meta, arrays = _run(tmp_path, backend, "--no-tensorflow")
  assert not meta["tensorflow_imported"]
  _check_run(meta)
  _, ref = results[backend]
  for key, value in ref.items():
    np.testing.assert_array_equal(arrays[key], value, err_msg=key)


@pytest.mark.skipif("jax" not in BACKENDS, reason="JAX is not installed")
def test_jax_data_parallel_equals_one_device(tmp_path, results):
  meta, arrays = _run(tmp_path, "jax", "--data-parallel", devices=2)
  assert meta["devices"] == 2
  _check_run(meta)
  _, ref = results["jax"]
  for key, value in ref.items():
    if key.startswith("keep/"):
      np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(arrays[key], value, rtol=1e-4, atol=1e-6,
                                 err_msg=key)
