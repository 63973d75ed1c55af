"""tf.distribute tests, each in a subprocess (logical devices, TF_CONFIG)."""

import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _run(script, env=None, timeout=600):
  result = subprocess.run(
      [sys.executable, os.path.join(_HERE, "scripts", script)],
      capture_output=True, text=True, timeout=timeout, cwd=_ROOT,
      env={**os.environ, "PYTHONPATH": _ROOT, **(env or {})}, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_importance_equals_single_device_and_fit_continues():
  out = _run("mirrored_importance.py")
  assert out["replicas"] == 2
  assert out["groups"] == ["c1", "c2"]
  for name, error in out["relative_errors"].items():
    assert error <= 1e-4, (name, error)
  assert out["final_strategy"] == "MirroredStrategy"
  assert out["epochs"] == [0, 1, 2]
  assert out["macs_ratio"] < 0.7
  assert out["iterations"] == 6
