"""The peer a TF user would pick today: TFMOT magnitude pruning, same study.

tensorflow-model-optimization needs Keras 2, so this runs in its own
process under tf_keras (pip install -e ".[peer]"):

  TF_USE_LEGACY_KERAS=1 python -m benchmarks.study.tfmot_peer --seeds=0,1

It starts from the study's dense weights of each seed (benchmarks/study/run.py
run first) and writes ``runs/tfmot_seed<S>.json`` in the study's format.
"""

import dataclasses
import gzip
import io
import json
import os
import sys
import time

from absl import logging
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from benchmarks.study import run as study_lib
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  seeds: tuple = _harness.flag((0, 1), "Seeds (the dense runs to start from).")
  ratios: tuple = (0.3, 0.5)  # target sparsities (fraction of weights zeroed)
  threads: int = 0
  output_dir: str = study_lib.Config.output_dir
  work_dir: str = study_lib.Config.work_dir
  data_dir: str = _harness.flag(None, "Fashion-MNIST IDX files (None: "
                                "Debian's package, then tfds).")


def _weights_bytes(model):
  """gzip size of all weights (what unstructured sparsity saves on disk)."""
  buffer = io.BytesIO()
  np.savez(buffer, *model.get_weights())
  return len(gzip.compress(buffer.getvalue()))


def _nonzero(model):
  return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def run(config, study, ratio, dense_record):
  """Prunes the study seed's dense model to `ratio` sparsity; its record."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_model_optimization as tfmot
  import tf_keras
  # pylint: enable=g-import-not-at-top
  sparsity, settings = tfmot.sparsity.keras, study.config
  weights = np.load(os.path.join(config.work_dir,
                                 f"dense_seed{study.seed}.npz"))

  def dense():
    model = study.build(keras_module=tf_keras)
    for layer in model.layers:
      layer.set_weights([weights[f"{layer.name}/{i}"]
                         for i in range(len(layer.get_weights()))])
    return model

  tf_keras.utils.set_random_seed(study.seed)
  epochs, steps = 1 + settings.finetune_epochs, study.steps
  model = sparsity.prune_low_magnitude(dense(), pruning_schedule=(
      sparsity.PolynomialDecay(
          initial_sparsity=0.0, final_sparsity=ratio, begin_step=0,
          end_step=max(steps * (epochs - 1), 1),
          frequency=max(steps // 4, 1))))
  loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(optimizer=tf_keras.optimizers.SGD(
      tf_keras.optimizers.schedules.CosineDecay(
          settings.finetune_learning_rate, epochs * steps),
      momentum=0.9, nesterov=True), loss=loss, metrics=["accuracy"])
  timer = _harness.epoch_timer(tf_keras.callbacks.Callback)
  start = time.perf_counter()
  model.fit(study.train(), epochs=epochs, verbose=0,
            callbacks=[sparsity.UpdatePruningStep(), timer])
  seconds = time.perf_counter() - start
  final = sparsity.strip_pruning(model)
  final.compile(loss=loss, metrics=["accuracy"])
  reference = dense()
  forwards = {n: tf.function(lambda x, m=m: m(x, training=False))
              for n, m in (("dense", reference), ("pruned", final))}
  speed = timing.time_alternately(
      {n: lambda f=f: f(study.sample) for n, f in forwards.items()},
      rounds=5, warmup=1, num_calls=1)["median_seconds"]
  kernels = [layer.kernel.numpy() for layer in final.layers
             if hasattr(layer, "kernel")]
  zeroed = 1 - (sum(int(np.count_nonzero(k)) for k in kernels) /
                sum(k.size for k in kernels))
  logging.info("TFMOT ratio=%s seed=%d: kernel sparsity %.3f", ratio,
               study.seed, zeroed)
  return {
      "policy": "tfmot_magnitude", "prune_ratio": ratio, "seed": study.seed,
      "prune_epoch": settings.epochs + 1,
      "test_accuracy": float(final.evaluate(study.test, verbose=0)[1]),
      "validation_accuracy": float(final.evaluate(study.validation,
                                                  verbose=0)[1]),
      "train_seconds": dense_record["train_seconds"] + seconds,
      "finetune_seconds": seconds,
      "epoch_seconds": dense_record["epoch_seconds"] + timer.seconds,
      "macs_dense": dense_record["macs_dense"],
      # Unstructured zeros: dense kernels still run every multiply.
      "macs_final": dense_record["macs_dense"],
      "params_final": final.count_params(),
      "nonzero_params": _nonzero(final),
      "nonzero_params_dense": _nonzero(reference),
      "kernel_sparsity": zeroed, "gzip_bytes": _weights_bytes(final),
      "gzip_bytes_dense": _weights_bytes(reference),
      "throughput": len(study.sample) / speed["pruned"],
      "throughput_dense_same_process": len(study.sample) / speed["dense"],
      "epi": None, "epi_threshold": None, "widths_final": None,
      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "versions": {"tensorflow_model_optimization": tfmot.__version__,
                   "tf_keras": tf_keras.__version__}}


def main(config):
  if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    sys.exit("error: run with TF_USE_LEGACY_KERAS=1 (TFMOT needs Keras 2: "
             "pip install -e '.[peer]').")
  _harness.set_threads(config.threads)
  for seed in config.seeds:
    path = os.path.join(config.output_dir, "runs", f"runs_seed{seed}.json")
    if not os.path.exists(path):
      sys.exit(f"error: {path} is missing: run benchmarks.study.run "
               f"--seed={seed} first (its dense run).")
    with open(path) as f:
      runs = json.load(f)
    settings = runs["config"]
    study = study_lib.Study(study_lib.Config(
        data_dir=config.data_dir, **{k: settings[k] for k in (
            "depth", "image_size", "train_examples", "validation_examples",
            "batch_size", "weight_decay", "epochs", "finetune_epochs",
            "finetune_learning_rate")}), seed)
    dense_record = next(r for r in runs["runs"] if r["policy"] == "dense")
    _harness.write_report(
        os.path.join(config.output_dir, "runs", f"tfmot_seed{seed}.json"),
        {"config": {"peer": "tfmot", **settings},
         "machine": _harness.machine(),
         "runs": [run(config, study, ratio, dense_record)
                  for ratio in config.ratios]})


if __name__ == "__main__":
  _harness.start(Config, main)
