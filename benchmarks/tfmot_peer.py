r"""The peer a TF user would pick today: TFMOT magnitude pruning, same study.

tensorflow-model-optimization only supports Keras 2, so this runs in its own
process under tf_keras (keras_epi never imports it):

  pip install -e ".[peer]"
  TF_USE_LEGACY_KERAS=1 python -m benchmarks.tfmot_peer --seeds=0,1

For each seed it starts from the weights of benchmarks/study.py's dense run
of that seed (the same ResNet, rebuilt with tf_keras), wraps it in
`prune_low_magnitude` with a polynomial schedule to the target sparsity
(0 -> `ratio` of every conv and dense kernel's weights), fine-tunes for the
same number of epochs as the study's train-prune-finetune pipeline (1 + F at
the same small learning rate), strips the wrappers and measures accuracy,
non-zero parameters, compressed size and inference throughput against the
dense model, alternately in this process. Records go to
``<output_dir>/tfmot_seed<S>.json`` in the study's format;
``python -m benchmarks.study --merge`` includes them.
"""

import gzip
import io
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
  sys.exit("error: run with TF_USE_LEGACY_KERAS=1 (TFMOT needs Keras 2: "
           "pip install -e '.[peer]').")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top,wrong-import-position
import tf_keras  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import models as models_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds (dense runs to start "
                           "from).")
_RATIOS = flags.DEFINE_list("ratios", ["0.3", "0.5"],
                            "Target sparsities (fraction of weights zeroed).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results/study",
                                  "Where the study's run files are.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/keras_epi_study",
                                "Where the study's dense weights are.")
_THREADS = flags.DEFINE_integer("threads", 0, "TF threads (0: default).")


def build(config, shape, num_classes):
  return models_lib.resnet_cifar(config["depth"], shape, num_classes,
                                 weight_decay=config["weight_decay"],
                                 keras_module=tf_keras)


def load_dense(model, weights):
  """Sets `model`'s weights from the study's dense npz (by layer name)."""
  for layer in model.layers:
    values = [weights[f"{layer.name}/{i}"]
              for i in range(len(layer.get_weights()))]
    layer.set_weights(values)


def compressed_bytes(model):
  """gzip size of all weights (what unstructured sparsity saves on disk)."""
  buffer = io.BytesIO()
  np.savez(buffer, *model.get_weights())
  return len(gzip.compress(buffer.getvalue()))


def nonzero_params(model):
  return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def run(seed, ratio, config, dense_record, data):
  train, validation, test, steps, shape, num_classes, sample = data
  tf_keras.utils.set_random_seed(seed)
  weights = np.load(os.path.join(_WORK_DIR.value, f"dense_seed{seed}.npz"))
  dense = build(config, shape, num_classes)
  load_dense(dense, weights)
  epochs = 1 + config["finetune_epochs"]
  schedule = tfmot.sparsity.keras.PolynomialDecay(
      initial_sparsity=0.0, final_sparsity=ratio, begin_step=0,
      end_step=max(steps * (epochs - 1), 1), frequency=max(steps // 4, 1))
  model = tfmot.sparsity.keras.prune_low_magnitude(
      dense, pruning_schedule=schedule)
  learning_rate = tf_keras.optimizers.schedules.CosineDecay(
      config["finetune_learning_rate"], epochs * steps)
  model.compile(
      optimizer=tf_keras.optimizers.SGD(learning_rate, momentum=0.9,
                                        nesterov=True),
      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  timer = common.epoch_timer(tf_keras.callbacks.Callback)
  start = time.perf_counter()
  model.fit(train, epochs=epochs, verbose=0,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), timer])
  seconds = time.perf_counter() - start
  final = tfmot.sparsity.keras.strip_pruning(model)
  final.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(
      from_logits=True), metrics=["accuracy"])
  test_accuracy = final.evaluate(test, verbose=0)[1]
  validation_accuracy = final.evaluate(validation, verbose=0)[1]
  reference = build(config, shape, num_classes)
  load_dense(reference, weights)
  throughput = common.throughput({"dense": reference, "pruned": final},
                                 sample, rounds=5)
  kernels = [w for layer in final.layers for w in
             ([layer.kernel] if hasattr(layer, "kernel") else [])]
  sparsity = 1 - (sum(int(np.count_nonzero(k.numpy())) for k in kernels) /
                  sum(int(np.prod(k.shape)) for k in kernels))
  record = {
      "policy": "tfmot_magnitude", "prune_ratio": ratio, "seed": seed,
      "prune_epoch": config["epochs"] + 1,
      "test_accuracy": float(test_accuracy),
      "validation_accuracy": float(validation_accuracy),
      "train_seconds": dense_record["train_seconds"] + seconds,
      "finetune_seconds": seconds,
      "epoch_seconds": dense_record["epoch_seconds"] + timer.seconds,
      "macs_dense": dense_record["macs_dense"],
      # Unstructured zeros: dense kernels still run every multiply.
      "macs_final": dense_record["macs_dense"],
      "params_final": final.count_params(),
      "nonzero_params": nonzero_params(final),
      "nonzero_params_dense": nonzero_params(reference),
      "kernel_sparsity": sparsity,
      "gzip_bytes": compressed_bytes(final),
      "gzip_bytes_dense": compressed_bytes(reference),
      "throughput": throughput["pruned"],
      "throughput_dense_same_process": throughput["dense"],
      "epi": None, "epi_threshold": None, "widths_final": None,
      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "versions": {"tensorflow_model_optimization": tfmot.__version__,
                   "tf_keras": tf_keras.__version__},
  }
  logging.info("TFMOT ratio=%s seed=%d: test %.4f, kernel sparsity %.3f, "
               "speed %.2fx of dense", ratio, seed, test_accuracy, sparsity,
               throughput["pruned"] / throughput["dense"])
  return record


def main(argv):
  del argv
  if _THREADS.value:
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
  for seed in (int(s) for s in _SEEDS.value):
    path = os.path.join(_OUTPUT_DIR.value, f"runs_seed{seed}.json")
    if not os.path.exists(path):
      raise app.UsageError(f"{path} is missing: run benchmarks/study.py "
                           f"--seed={seed} first (its dense run).")
    with open(path) as f:
      study = json.load(f)
    config = study["config"]
    dense_record = next(r for r in study["runs"] if r["policy"] == "dense")
    dataset = data_lib.load("fashion_mnist", None, config["train_examples"],
                            config["validation_examples"], seed=0)
    size = config["image_size"]
    norm = dict(mean=dataset.mean, std=dataset.std, image_size=size)
    test = data_lib.pipeline(dataset.test, 500, False, **norm)
    data = (data_lib.pipeline(dataset.train, config["batch_size"], True,
                              augment=True, seed=seed, **norm),
            data_lib.pipeline(dataset.validation, 500, False, **norm),
            test, dataset.num_train // config["batch_size"],
            (size, size, dataset.image_shape[-1]), dataset.num_classes,
            next(iter(test.unbatch().batch(512)))[0])
    runs = [run(seed, float(r), config, dense_record, data)
            for r in _RATIOS.value]
    with open(os.path.join(_OUTPUT_DIR.value, f"tfmot_seed{seed}.json"),
              "w") as f:
      json.dump({"config": {"peer": "tfmot", **config},
                 "machine": common.machine_info(), "runs": runs}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
