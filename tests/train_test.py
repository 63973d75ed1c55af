"""Tests of examples/train.py, run as a user would: in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN = os.path.join(_ROOT, "examples", "train.py")
_QUICK = ["--max_train_examples=512", "--batch_size=64", "--epochs=2",
          "--verbose=2", "--model=resnet20"]
# Every run reads the synthetic Fashion-MNIST IDX files of the
# `fashion_mnist_dir` fixture (tests/conftest.py) through --data_dir, so no
# test needs Debian's dataset-fashion-mnist package or the network.


def run_train(*args, env=None, timeout=900):
  return subprocess.run([sys.executable, _TRAIN, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=_ROOT,
                        env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_mnist_dir):
  model_dir = str(tmp_path_factory.mktemp("run"))
  result = run_train(f"--model_dir={model_dir}", "--policy=fixed",
                     "--prune_epoch=1", "--prune_ratio=0.5", *_QUICK,
                     f"--data_dir={fashion_mnist_dir}", "--export_tflite")
  assert result.returncode == 0, result.stderr[-4000:]
  return model_dir, result


def test_trainer_writes_every_output(quick_run):
  model_dir, _ = quick_run
  for name in ("config.json", "summary.json", "history.csv", "epi.png",
               "final.keras", "saved_model/saved_model.pb"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  events = [f for _, _, files in os.walk(os.path.join(model_dir, "logs"))
            for f in files if f.startswith("events.out")]
  assert events
  with open(os.path.join(model_dir, "config.json")) as f:
    config = json.load(f)
  assert config["prune_ratio"] == 0.5 and config["policy"] == "fixed"
  assert {"dataset", "model", "epochs", "strategy", "seed"} <= set(config)
  with open(os.path.join(model_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["prune_epoch"] == 1
  assert summary["macs_final"] < summary["macs_dense"]
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  assert summary["train_seconds"] > 0
  assert len(summary["history"]["loss"]) == 2


def test_saved_model_serves_uint8_and_matches_the_keras_model(
    quick_run, fashion_mnist_dir):
  model_dir, _ = quick_run
  sys.path.insert(0, os.path.join(_ROOT, "examples"))
  import data as data_lib  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  dataset = data_lib.load("fashion_mnist", data_dir=fashion_mnist_dir,
                          max_train_examples=512)
  images = next(iter(dataset.test.batch(5)))[0].numpy()
  served = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
  out = served.serve(tf.constant(images))
  model = keras.saving.load_model(os.path.join(model_dir, "final.keras"))
  want = model(data_lib.preprocess(images, dataset.mean, dataset.std),
               training=False)
  np.testing.assert_allclose(out["logits"].numpy(), np.asarray(want),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0,
                             rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_files_match_the_saved_model(quick_run, fashion_mnist_dir):
  model_dir, _ = quick_run
  with open(os.path.join(model_dir, "summary.json")) as f:
    summary = json.load(f)
  for kind, name in (("float", "model.tflite"),
                     ("dynamic", "model_dynamic.tflite")):
    path = os.path.join(model_dir, name)
    assert summary[f"tflite_{kind}"] == path
    assert summary[f"tflite_{kind}_bytes"] == os.path.getsize(path)
  # About 4 bytes a parameter of the pruned model, and int8 weights.
  assert (4 * summary["params_final"] < summary["tflite_float_bytes"] <
          4 * summary["params_final"] + 100_000)
  assert summary["tflite_dynamic_bytes"] < 0.5 * summary["tflite_float_bytes"]
  assert 0 <= summary["tflite_float_max_abs_error"] <= 1e-4
  assert (summary["tflite_float_max_abs_error"] <
          summary["tflite_dynamic_max_abs_error"] < 1.0)
  # Like the SavedModel, model.tflite takes uint8 images: same logits.
  sys.path.insert(0, os.path.join(_ROOT, "examples"))
  import data as data_lib  # pylint: disable=g-import-not-at-top
  dataset = data_lib.load("fashion_mnist", data_dir=fashion_mnist_dir,
                          max_train_examples=512)
  images = next(iter(dataset.test.batch(5)))[0].numpy()
  served = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
  want = served.serve(tf.constant(images))["logits"].numpy()
  interpreter = tf.lite.Interpreter(
      model_path=os.path.join(model_dir, "model.tflite"))
  runner = interpreter.get_signature_runner("serving_default")
  for n in (1, 5):
    got = runner(images=images[:n])["output_0"]
    np.testing.assert_allclose(got, want[:n], rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


def test_prune_event_is_logged(quick_run):
  _, result = quick_run
  assert "EPICallback: pruning after 1 dense epoch(s)" in result.stderr
  assert "epi:" in result.stdout + result.stderr


def test_latency_budget_measures_saves_and_meets_the_table(
    tmp_path, fashion_mnist_dir):
  # The trainer measures its own table (the path a user takes without
  # --latency_table) on the smallest grid: widths 0.5 and 1, one timed step
  # per point, 16x16 inputs (~18 s of the ~45 s run on 2 CPUs, mostly
  # tracing the standalone models).
  result = run_train(f"--model_dir={tmp_path}", "--budget=latency",
                     "--prune_ratio=0.3", "--latency_widths=0.5",
                     "--latency_repeats=1", "--policy=fixed",
                     "--prune_epoch=1", *_QUICK, "--image_size=16",
                     f"--data_dir={fashion_mnist_dir}")
  assert result.returncode == 0, result.stderr[-4000:]
  import keras  # pylint: disable=g-import-not-at-top
  import keras_epi  # pylint: disable=g-import-not-at-top
  path = tmp_path / "latency_table.json"
  table = keras_epi.LatencyTable.load(path)
  assert table.metadata["training"] is True
  assert table.metadata["batch_size"] == 64  # --batch_size, one replica
  assert table.metadata["widths"] == [0.5, 1.0]
  assert table.metadata["repeats"] == 1
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert summary["budget"] == "latency" and summary["prune_epoch"] == 1
  assert summary["latency_table"] == str(path)
  assert summary["macs_final"] < summary["macs_dense"]
  # The plan meets the budget as the table predicts it (select_channels'
  # promise), and the summary's prediction is the saved table's reading of
  # the saved final model.
  dense = summary["latency_predicted_dense"]
  final = summary["latency_predicted_final"]
  assert final <= (1 - 0.3) * dense * (1 + 1e-9)
  model = keras.saving.load_model(tmp_path / "final.keras")
  assert table.predict(model) == pytest.approx(final, rel=1e-9)
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["latency_widths"] == [0.5]
  assert config["latency_table"] is None


@pytest.mark.parametrize("args, message", [
    (["--dataset=not_a_dataset"], "Unknown dataset 'not_a_dataset'"),
    (["--model=resnet21"], "--model=resnet21 is unknown"),
    (["--prune_ratio=1.5"], "--prune_ratio must be in (0, 1)"),
    (["--policy=fixed"], "--policy=fixed needs --prune_epoch"),
    (["--policy=none", "--epi_prune_by=3"], "--epi_prune_by must be >= 1"),
    (["--strategy=multi_worker"], "needs TF_CONFIG"),
    (["--budget=latency", "--latency_table=/nonexistent/table.json"],
     "--latency_table=/nonexistent/table.json is not a file"),
    (["--latency_table=/nonexistent/table.json"],
     "--latency_table is only used with --budget=latency"),
    (["--budget=latency", "--latency_widths=0.5,2"],
     "--latency_widths must be fractions in (0, 1]"),
    (["--budget=latency", "--strategy=multi_worker"],
     "--budget=latency with --strategy=multi_worker needs --latency_table"),
])
def test_bad_flags_give_one_clear_message(args, message, tmp_path,
                                          fashion_mnist_dir):
  result = run_train(f"--model_dir={tmp_path}", *_QUICK,
                     f"--data_dir={fashion_mnist_dir}", *args)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  assert message in result.stderr


def test_missing_fashion_mnist_files_fall_back_to_tfds_then_fail_clearly(
    tmp_path, monkeypatch):
  sys.path.insert(0, os.path.join(_ROOT, "examples"))
  import data as data_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data_lib, "DEBIAN_FASHION_MNIST", str(tmp_path / "no"))
  with pytest.raises(data_lib.DataError, match="Install Debian's"):
    data_lib.load("fashion_mnist", data_dir=str(tmp_path / "empty_tfds"))


def _free_ports(n):
  import socket  # pylint: disable=g-import-not-at-top
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _architecture(stderr):
  lines = [l for l in stderr.splitlines() if "Pruned architecture:" in l]
  assert lines, stderr[-3000:]
  return json.loads(lines[-1].split("Pruned architecture:", 1)[1])


def test_multi_worker_on_loopback_workers_agree(tmp_path, fashion_mnist_dir):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  procs = []
  for index in range(2):
    env = {**os.environ, "TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})}
    procs.append(subprocess.Popen(
        [sys.executable, _TRAIN, f"--model_dir={tmp_path}/run",
         "--strategy=multi_worker", "--policy=fixed", "--prune_epoch=1",
         *_QUICK, f"--data_dir={fashion_mnist_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=_ROOT, env=env))
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  first, second = (_architecture(err) for _, err in outputs)
  assert first == second
  with open(tmp_path / "run" / "summary.json") as f:
    summary = json.load(f)
  assert summary["replicas"] == 2 and summary["prune_epoch"] == 1
  assert summary["widths_final"] == first


def test_mirrored_on_two_logical_cpus(tmp_path, fashion_mnist_dir):
  result = run_train(f"--model_dir={tmp_path}", "--strategy=mirrored",
                     "--logical_cpus=2", "--policy=fixed", "--prune_epoch=1",
                     *_QUICK, f"--data_dir={fashion_mnist_dir}")
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert summary["replicas"] == 2
  assert summary["widths_final"] == _architecture(result.stderr)
  assert summary["saved_model_max_abs_error"] <= 1e-5
