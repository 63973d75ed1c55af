r"""Training-cost benchmarks of EPICallback and keras_epi.fit.

1. Scoring overhead: wall time per epoch of `model.fit` with an EPICallback
   that scores every step (Taylor: the gradients of the train step, seen by
   the optimizer hook; magnitude: weights at epoch end) but never prunes,
   divided by that of plain `model.fit`, same model and data. The variants
   run alternately, one short fit each, in rounds whose order rotates; the
   first epoch of every fit (tracing) is dropped. The host's speed drifts by
   tens of percent within minutes, so the overhead is the median over rounds
   of the *paired* ratio (a variant's median epoch / plain's median epoch in
   the same round), for wall time and for this process's CPU time.
   Whole fits are coarse (the per-round ratios of identical work spread by
   +-10-30%), so the overhead is also measured step by step:
1b. Per-step overhead: the same two models, the Taylor one with its
   EPICallback set up as `fit` does (`on_train_begin` installs the gradient
   hook and retraces the train step), run single train steps (the
   `train_function` that `fit` calls, each synchronised on its loss)
   alternately, order swapped every pair, for `--step_pairs` pairs; the
   overhead is the median paired step-time ratio. The callback's epoch-end
   work (reading the scores, planning the dominant sub-network, the
   indicator) is timed separately and added as a fraction of an epoch of
   `--examples / --batch_size` steps.
2. Post-prune speed: the epoch time of the pruned model that keras_epi.fit
   continues with, against the dense model's, alternately, next to the MAC
   ratio (the paper's training-cost saving comes from this).

  python -m benchmarks.training_cost --output=benchmarks/results/training_cost.json
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_epi  # pylint: disable=g-import-not-at-top,wrong-import-position
import models as models_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_MODEL = flags.DEFINE_string("model", "resnet20", "Model (examples/models).")
_EXAMPLES = flags.DEFINE_integer("examples", 2048, "Training examples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_IMAGE_SHAPE = flags.DEFINE_list("image_shape", ["28", "28", "1"],
                                 "Input shape (synthetic data).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternation rounds.")
_EPOCHS_PER_FIT = flags.DEFINE_integer(
    "epochs_per_fit", 3, "Epochs per fit; the first (tracing) is dropped.")
_STEP_PAIRS = flags.DEFINE_integer(
    "step_pairs", 200, "Alternated (plain, Taylor) train-step pairs.")
_PRUNE_RATIO = flags.DEFINE_float("prune_ratio", 0.5,
                                  "MAC fraction removed for part 2.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON results path.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")


def _compiled(model):
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def _epoch_seconds(model, data, callbacks, cpu=False):
  timer = common.epoch_timer(keras.callbacks.Callback)
  model.fit(data, epochs=_EPOCHS_PER_FIT.value, verbose=0,
            callbacks=[*callbacks, timer])
  if cpu:
    return timer.seconds[1:], timer.cpu_seconds[1:]
  return timer.seconds[1:]


def _paired(rounds, name):
  """Per round: median epoch of `name` / median epoch of plain."""
  return [float(np.median(r[name]) / np.median(r["plain"])) for r in rounds]


def _quartiles(values):
  return [float(q) for q in np.percentile(values, [25, 50, 75])]


def _step_overhead(build, data):
  """Part 1b: paired single-step times, plain vs Taylor-scoring, and the
  callback's epoch-end cost."""
  steps_per_epoch = _EXAMPLES.value // _BATCH_SIZE.value
  plain, taylor = build(), build()
  callback = keras_epi.EPICallback(criterion="taylor", policy="fixed",
                                   prune_epoch=10**6)
  callback.set_model(taylor)
  callback.set_params({"epochs": 1, "steps": steps_per_epoch, "verbose": 0})
  for model in (plain, taylor):
    model.make_train_function()
  callback.on_train_begin()  # installs the hook, retraces the train step
  iterators = {id(m): iter(data.repeat()) for m in (plain, taylor)}

  def step(model):
    start = time.perf_counter()
    if model is taylor:  # as fit does: the step's lease for the tap
      callback.on_train_batch_begin(0)
    float(model.train_function(iterators[id(model)])["loss"])
    return time.perf_counter() - start

  for _ in range(3):  # tracing and warm-up
    step(plain), step(taylor)  # pylint: disable=expression-not-assigned
  times = {"plain": [], "taylor": []}
  for i in range(_STEP_PAIRS.value):
    order = ("plain", "taylor") if i % 2 == 0 else ("taylor", "plain")
    for name in order:
      times[name].append(step(plain if name == "plain" else taylor))
  ratios = [t / p for t, p in zip(times["taylor"], times["plain"])]
  epoch_end = []
  for epoch in range(5):
    callback.on_epoch_begin(epoch)
    for _ in range(2):  # scores to plan from
      step(taylor)
    start = time.perf_counter()
    callback.on_epoch_end(epoch, {})
    epoch_end.append(time.perf_counter() - start)
  callback.on_train_end()
  step_seconds = float(np.median(times["plain"]))
  epoch_end_fraction = float(np.median(epoch_end)) / (steps_per_epoch *
                                                       step_seconds)
  return {
      "pairs": _STEP_PAIRS.value,
      "median_step_seconds": {k: float(np.median(v))
                              for k, v in times.items()},
      "step_ratio": float(np.median(ratios)),
      "step_ratio_quartiles": _quartiles(ratios),
      "epoch_end_seconds": epoch_end,
      "steps_per_epoch": steps_per_epoch,
      "epoch_end_fraction_of_epoch": epoch_end_fraction,
      "overhead_per_epoch": float(np.median(ratios)) + epoch_end_fraction,
      "step_seconds": times,
  }


def main(argv):
  del argv
  keras.utils.set_random_seed(_SEED.value)
  shape = tuple(int(s) for s in _IMAGE_SHAPE.value)
  rng = np.random.default_rng(_SEED.value)
  x = rng.normal(size=(_EXAMPLES.value, *shape)).astype("float32")
  y = rng.integers(0, 10, size=_EXAMPLES.value)
  data = tf.data.Dataset.from_tensor_slices((x, y)).batch(
      _BATCH_SIZE.value, drop_remainder=True).cache().prefetch(2)

  def build():
    return _compiled(models_lib.build_model(_MODEL.value, shape, 10))

  never = 10**6  # fixed policy that never fires: scoring only
  variants = {
      "plain": lambda: [],
      "taylor": lambda: [keras_epi.EPICallback(
          criterion="taylor", policy="fixed", prune_epoch=never)],
      "magnitude": lambda: [keras_epi.EPICallback(
          criterion="magnitude", policy="fixed", prune_epoch=never)],
  }
  models = {name: build() for name in variants}
  names = list(variants)
  wall_rounds, cpu_rounds = [], []
  for i in range(_ROUNDS.value):
    wall_rounds.append({})
    cpu_rounds.append({})
    for name in names[i % len(names):] + names[:i % len(names)]:
      wall_rounds[-1][name], cpu_rounds[-1][name] = _epoch_seconds(
          models[name], data, variants[name](), cpu=True)
  times = {name: [t for r in wall_rounds for t in r[name]] for name in names}
  median = {name: float(np.median(t)) for name, t in times.items()}
  overhead = {name: float(np.median(_paired(wall_rounds, name)))
              for name in names if name != "plain"}
  paired = {name: {"wall_ratio_per_round": _paired(wall_rounds, name),
                   "wall_ratio_quartiles": _quartiles(
                       _paired(wall_rounds, name)),
                   "cpu_ratio_per_round": _paired(cpu_rounds, name),
                   "cpu_ratio_quartiles": _quartiles(
                       _paired(cpu_rounds, name))}
            for name in names if name != "plain"}

  step_overhead = _step_overhead(build, data)

  # Part 2: the model keras_epi.fit continues with, against the dense one.
  dense = build()
  cb = keras_epi.EPICallback(prune_ratio=_PRUNE_RATIO.value, budget="macs",
                             policy="fixed", prune_epoch=1)
  pruned, _ = keras_epi.fit(dense, data, epochs=1, verbose=0, callbacks=[cb])
  pruned = _compiled(keras.models.clone_model(pruned))
  dense = build()
  epoch = {"dense": [], "pruned": []}
  for _ in range(_ROUNDS.value):
    epoch["dense"] += _epoch_seconds(dense, data, [])
    epoch["pruned"] += _epoch_seconds(pruned, data, [])
  macs_ratio = keras_epi.count_macs(pruned) / keras_epi.count_macs(dense)
  epoch_ratio = float(np.median(epoch["pruned"]) / np.median(epoch["dense"]))

  results = {
      "date": time.strftime("%Y-%m-%d"),
      "machine": common.machine_info(),
      "setup": {"model": _MODEL.value, "input_shape": shape,
                "examples": _EXAMPLES.value, "batch_size": _BATCH_SIZE.value,
                "rounds": _ROUNDS.value,
                "epochs_per_fit": _EPOCHS_PER_FIT.value,
                "prune_ratio_macs": _PRUNE_RATIO.value},
      "scoring_overhead": {
          "median_epoch_seconds": median,
          "ratio_to_plain_fit": overhead,
          "paired": paired,
          "epoch_seconds": times,
          "cpu_epoch_seconds": {name: [t for r in cpu_rounds for t in r[name]]
                                for name in names},
      },
      "scoring_overhead_per_step": step_overhead,
      "post_prune": {
          "macs_ratio": macs_ratio,
          "epoch_time_ratio": epoch_ratio,
          "median_epoch_seconds": {k: float(np.median(v))
                                   for k, v in epoch.items()},
          "epoch_seconds": epoch,
      },
  }
  text = json.dumps(results, indent=2)
  print(text)
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
