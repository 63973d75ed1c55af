"""EPI's training cost on an accelerator, under JAX, without TensorFlow.

  python -m benchmarks.gpu.run --make_data=.gpu/fmnist.npz     # here, once
  KERAS_BACKEND=jax python -m benchmarks.gpu.run --data=.gpu/fmnist.npz \\
      --output_dir=$OUT                                         # there

The first command (any machine with Debian's dataset-fashion-mnist) writes a
slice of Fashion-MNIST as one .npz file, which travels with the checkout to
a machine that has JAX and a GPU but neither TensorFlow nor the network.
The second trains the schedule study's model (a CIFAR ResNet-20 on 28x28
images, `examples/models.py`) dense and with EPI through `keras_epi.fit`,
alternately, and records the whole-run wall time and test accuracy of each;
then measures a training-step `LatencyTable` of the model and times the
training steps of a MAC plan and of a latency plan with the same MACs
against the dense model's, alternately (`keras_epi.timing`). It uses only
Keras, JAX and NumPy; `--quick` runs it small, on the CPU too (how it is
tested before a GPU is lent).
"""

import dataclasses
import gzip
import json
import os
import time

from absl import logging
import keras
import numpy as np

from benchmarks import _harness
from examples import models as models_lib
import keras_epi
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  make_data: str = _harness.flag(None, "Write the data file here and stop.")
  data: str = _harness.flag(None, "The data file (--make_data's).")
  source_dir: str = "/usr/share/datasets/fashion-mnist"
  train_examples: int = 20000
  test_examples: int = 10000
  width: int = 32
  epochs: int = 30
  batch_size: int = 256
  learning_rate: float = 0.1
  warmup_epochs: float = 2.0
  ratio: float = 0.5
  epi_window: int = 5
  repeats: int = _harness.flag(2, "Dense/EPI pairs, in alternating order.")
  round_to: int = 8
  step_rounds: int = 15
  output_dir: str = _harness.flag("benchmarks/gpu/results", "Where the "
                                  "results go.")
  quick: bool = _harness.flag(False, "Smoke run: 512 examples, 2 epochs, "
                              "a narrow model.")


QUICK = {"train_examples": 512, "test_examples": 256, "width": 8,
         "epochs": 2, "batch_size": 64, "epi_window": 1, "repeats": 1,
         "step_rounds": 2, "warmup_epochs": 0.5,
         "output_dir": _harness.scratch("gpu")}


def make_data(config):
  """Fashion-MNIST's first examples as uint8 arrays in one .npz."""
  def idx(name):
    with gzip.open(os.path.join(config.source_dir, f"{name}.gz")) as f:
      data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
             for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
  os.makedirs(os.path.dirname(os.path.abspath(config.make_data)),
              exist_ok=True)
  np.savez_compressed(
      config.make_data,
      x_train=idx("train-images-idx3-ubyte")[:config.train_examples],
      y_train=idx("train-labels-idx1-ubyte")[:config.train_examples],
      x_test=idx("t10k-images-idx3-ubyte")[:config.test_examples],
      y_test=idx("t10k-labels-idx1-ubyte")[:config.test_examples])


def load(config):
  with np.load(config.data) as f:
    x, y = f["x_train"][:config.train_examples], f["y_train"]
    x_test, y_test = f["x_test"][:config.test_examples], f["y_test"]
  mean, std = x.mean() / 255.0, x.std() / 255.0

  def prepare(images):
    return ((images[..., None].astype("float32") / 255.0 - mean) / std)
  return (prepare(x), y[:len(x)].astype("int32"), prepare(x_test),
          y_test[:len(x_test)].astype("int32"))


def build(config, steps):
  model = models_lib.resnet_cifar(20, (28, 28, 1), 10, width=config.width)
  model.compile(
      optimizer=keras.optimizers.SGD(
          models_lib.warmup_cosine(config.learning_rate, config.epochs,
                                   steps, config.warmup_epochs),
          momentum=0.9, nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  return model


def train(config, policy, seed, data):
  """One whole run (build, compile, fit): its record."""
  x, y, x_test, y_test = data
  steps = len(x) // config.batch_size
  keras.utils.set_random_seed(seed)
  start = time.perf_counter()
  model = build(config, steps)
  kwargs = dict(batch_size=config.batch_size, epochs=config.epochs,
                verbose=0)
  epi = None
  if policy == "dense":
    model.fit(x, y, **kwargs)
    final = model
  else:
    epi = keras_epi.EPICallback(prune_ratio=config.ratio,
                                window=config.epi_window, verbose=0)
    final, _ = keras_epi.fit(model, x, y, callbacks=[epi], **kwargs)
  wall = time.perf_counter() - start
  accuracy = final.evaluate(x_test, y_test, batch_size=1000, verbose=0,
                            return_dict=True)["accuracy"]
  return {"policy": policy, "seed": seed, "wall_seconds": wall,
          "test_accuracy": float(accuracy),
          "prune_epoch": epi and epi.prune_epoch,
          "macs_fraction": keras_epi.count_macs(final) /
                           keras_epi.count_macs(model),
          "training_cost": epi and epi.training_cost}


def plans_at_equal_macs(config, data):
  """A MAC plan and the latency plan (training-step table) with the same
  MACs, their training steps timed against the dense model's."""
  x, y = data[0][:config.batch_size], data[1][:config.batch_size]
  keras.utils.set_random_seed(0)
  model = build(config, 1)
  table = keras_epi.LatencyTable.measure(
      model, batch_size=config.batch_size, training=True,
      round_to=config.round_to)
  scores = keras_epi.magnitude_importance(model,
                                          keras_epi.channel_groups(model))
  mac_plan = keras_epi.select_channels(model, scores, config.ratio,
                                       budget="macs", round_to=config.round_to)
  target = keras_epi.count_macs(model, mac_plan)
  low, high = 0.0, keras_epi.max_latency_ratio(model, table,
                                               round_to=config.round_to)
  latency_plan = None
  for _ in range(20):  # the latency ratio whose plan has the MAC plan's MACs
    ratio = (low + high) / 2
    plan = keras_epi.select_channels(model, scores, ratio, budget="latency",
                                     latency_table=table,
                                     round_to=config.round_to)
    macs = keras_epi.count_macs(model, plan)
    if latency_plan is None or abs(macs - target) < abs(
        keras_epi.count_macs(model, latency_plan) - target):
      latency_plan = plan
    low, high = (ratio, high) if macs > target else (low, ratio)
  models = {"dense": model,
            "mac_plan": keras_epi.prune_model(model, mac_plan),
            "latency_plan": keras_epi.prune_model(model, latency_plan)}
  for m in models.values():
    m.compile(keras.optimizers.SGD(0.0),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  steps = timing.time_alternately(
      {k: (lambda m=m: m.train_on_batch(x, y)) for k, m in models.items()},
      rounds=config.step_rounds, warmup=3)
  return {
      "macs_fraction": {k: keras_epi.count_macs(m) /
                        keras_epi.count_macs(model)
                        for k, m in models.items()},
      "predicted_step_fraction": {k: table.predict(model, p) /
                                  table.predict(model)
                                  for k, p in (("mac_plan", mac_plan), (
                                      "latency_plan", latency_plan))},
      "step_seconds": steps["median_seconds"],
      "step_ratio_to_dense": steps["ratio"],
      "latency_plan_speedup_over_mac_plan": (
          steps["ratio"]["mac_plan"] / steps["ratio"]["latency_plan"]),
      "table_measure_seconds": table.metadata["measure_seconds"]}


def device():
  """The accelerator, as the backend names it."""
  if keras.backend.backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    return [str(d) for d in jax.devices()]
  return ["(not JAX)"]


def main(config):
  if config.make_data:
    make_data(config)
    return
  data = load(config)
  runs = []
  for r in range(config.repeats):
    for policy in timing.rotation(["dense", "epi"], r):
      runs.append(train(config, policy, r, data))
      logging.info("%s", runs[-1])
  results = {"date": _harness.now(), "machine": _harness.machine(),
             "backend": keras.backend.backend(), "devices": device(),
             "config": dataclasses.asdict(config), "runs": runs}
  by = {(r["seed"], r["policy"]): r["wall_seconds"] for r in runs}
  results["wall_ratio"] = [by[r, "epi"] / by[r, "dense"]
                           for r in range(config.repeats)]
  results["plans"] = plans_at_equal_macs(config, data)
  os.makedirs(config.output_dir, exist_ok=True)
  with open(os.path.join(config.output_dir, "gpu.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  print(json.dumps({k: results[k] for k in ("backend", "devices",
                                             "wall_ratio", "plans")},
                   indent=1, default=str))


if __name__ == "__main__":
  _harness.start(Config, main, QUICK)
