"""What EPICallback's scoring costs in training, and what pruning saves.

  python -m benchmarks.training_cost.run           # results/, ~25 min
  python -m benchmarks.training_cost.run --quick   # to a scratch directory
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from examples import models as models_lib
import keras_epi
from keras_epi import timing

_NEVER = 10**6  # the prune epoch of a callback that only scores


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = "resnet20"
  examples: int = 1024
  batch_size: int = 128
  input_shape: tuple = (28, 28, 1)
  rounds: int = 9
  epochs_per_fit: int = 3
  step_pairs: int = 200
  prune_ratio_macs: float = 0.5
  seed: int = 0
  output_dir: str = "benchmarks/training_cost/results"
  quick: bool = _harness.flag(False, "Smoke run: 256 examples, short fits, "
                              "to a scratch directory.")

_QUICK = {"examples": 256, "rounds": 2, "epochs_per_fit": 2, "step_pairs": 10,
          "output_dir": _harness.scratch("training_cost")}


def _compiled(model):
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def _scoring(criterion):
  return keras_epi.EPICallback(criterion=criterion, policy="fixed",
                               prune_epoch=_NEVER)


def _fit_rounds(config, models, data, callbacks=None):
  """Per round, every model fits `epochs_per_fit` epochs in rotating order:
  ``{name: [per round (wall, CPU) seconds of its epochs but the first]}``."""
  epochs = {name: [] for name in models}
  for i in range(config.rounds):
    for name in timing.rotation(list(models), i):
      timer = _harness.epoch_timer()
      extra = [_scoring(name)] if name in (callbacks or ()) else []
      models[name].fit(data, epochs=config.epochs_per_fit, verbose=0,
                       callbacks=[*extra, timer])
      epochs[name].append((timer.seconds[1:], timer.cpu_seconds[1:]))
  return epochs


def _step_overhead(config, build, data):
  """Single train steps, plain vs Taylor-scoring, alternated, and the
  callback's epoch-end work as a fraction of an epoch."""
  steps_per_epoch = config.examples // config.batch_size
  plain, taylor = build(), build()
  callback = _scoring("taylor")
  callback.set_model(taylor)
  callback.set_params({"epochs": 1, "steps": steps_per_epoch, "verbose": 0})
  for model in (plain, taylor):
    model.make_train_function()
  callback.on_train_begin()  # installs the hook, retraces the train step
  iterators = {id(m): iter(data.repeat()) for m in (plain, taylor)}

  def step(model):
    def call():
      if model is taylor:  # as fit does: the step's lease for the tap
        callback.on_train_batch_begin(0)
      return model.train_function(iterators[id(model)])["loss"]
    return call

  steps = timing.time_alternately(
      {"plain": step(plain), "taylor": step(taylor)},
      rounds=config.step_pairs, warmup=3, num_calls=1)
  epoch_end = []
  for epoch in range(5):
    callback.on_epoch_begin(epoch)
    for _ in range(2):  # scores to plan from
      step(taylor)()
    epoch_end.append(timing.measure(
        lambda e=epoch: callback.on_epoch_end(e, {}), 1))
  callback.on_train_end()
  ratio = steps["ratio"]["taylor"]
  low, high = steps["ratio_quartiles"]["taylor"]
  fraction = float(np.median(epoch_end)) / (
      steps_per_epoch * steps["median_seconds"]["plain"])
  return {"pairs": config.step_pairs,
          "median_step_seconds": steps["median_seconds"],
          "step_ratio": ratio, "step_ratio_quartiles": [low, ratio, high],
          "epoch_end_seconds": epoch_end, "steps_per_epoch": steps_per_epoch,
          "epoch_end_fraction_of_epoch": fraction,
          "overhead_per_epoch": ratio + fraction,
          "step_seconds": steps["seconds"], "order": steps["order"]}


def run(config):
  """Every measurement of `config`, as the JSON's dict."""
  keras.utils.set_random_seed(config.seed)
  rng = np.random.default_rng(config.seed)
  x = rng.normal(size=(config.examples, *config.input_shape))
  y = rng.integers(0, 10, size=config.examples)
  data = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).batch(
      config.batch_size, drop_remainder=True).cache().prefetch(2)

  def build():
    return _compiled(models_lib.build_model(config.model, config.input_shape,
                                            10))

  variants = ("taylor", "magnitude")
  epochs = _fit_rounds(config, {n: build() for n in ("plain", *variants)},
                       data, variants)
  paired = {n: {} for n in variants}
  for n in variants:
    for part, kind in enumerate(("wall", "cpu")):
      ratios = [float(np.median(e[part]) / np.median(d[part]))
                for e, d in zip(epochs[n], epochs["plain"])]
      paired[n][f"{kind}_ratio_per_round"] = ratios
      paired[n][f"{kind}_ratio_quartiles"] = [
          float(q) for q in np.percentile(ratios, [25, 50, 75])]
  flat = [{n: [t for r in e for t in r[part]] for n, e in epochs.items()}
          for part in (0, 1)]
  step_overhead = _step_overhead(config, build, data)
  callback = keras_epi.EPICallback(prune_ratio=config.prune_ratio_macs,
                                   budget="macs", policy="fixed",
                                   prune_epoch=1)
  pruned, _ = keras_epi.fit(build(), data, epochs=1, verbose=0,
                            callbacks=[callback])
  pruned = _compiled(keras.models.clone_model(pruned))
  dense = build()
  post = _fit_rounds(config, {"dense": dense, "pruned": pruned}, data)
  post = {n: [t for wall, _ in e for t in wall] for n, e in post.items()}
  return {
      "date": _harness.now(), "machine": _harness.machine(),
      "setup": dataclasses.asdict(config),
      "scoring_overhead": {
          "median_epoch_seconds": {n: float(np.median(t))
                                   for n, t in flat[0].items()},
          "ratio_to_plain_fit": {
              n: float(np.median(p["wall_ratio_per_round"]))
              for n, p in paired.items()},
          "paired": paired, "epoch_seconds": flat[0],
          "cpu_epoch_seconds": flat[1]},
      "scoring_overhead_per_step": step_overhead,
      "post_prune": {
          "macs_ratio": (keras_epi.count_macs(pruned) /
                         keras_epi.count_macs(dense)),
          "epoch_time_ratio": float(np.median(post["pruned"]) /
                                    np.median(post["dense"])),
          "median_epoch_seconds": {n: float(np.median(t))
                                   for n, t in post.items()},
          "epoch_seconds": post}}


def markdown(results):
  """The report of `results` (as written by `main`)."""
  step, post = results["scoring_overhead_per_step"], results["post_prune"]
  seconds = post["median_epoch_seconds"]

  def q(q):
    return f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]"

  rows = [["scoring, per train step: Taylor / plain",
           q(step["step_ratio_quartiles"])],
          ["epoch-end work of the callback, fraction of an epoch",
           f"{step['epoch_end_fraction_of_epoch']:.4f}"],
          ["scoring, per epoch (step ratio + epoch-end work)",
           f"**{step['overhead_per_epoch']:.3f}**"],
          *[[f"whole fits, {name} / plain: wall; CPU",
             f"{q(p['wall_ratio_quartiles'])}; {q(p['cpu_ratio_quartiles'])}"]
            for name, p in results["scoring_overhead"]["paired"].items()],
          ["post-prune: MAC ratio", f"{post['macs_ratio']:.3f}"],
          ["post-prune: epoch time, pruned / dense",
           f"**{post['epoch_time_ratio']:.3f}** ({seconds['pruned']:.2f} s "
           f"/ {seconds['dense']:.2f} s)"]]
  return "\n".join([
      "# Training cost of EPICallback and keras_epi.fit", "",
      _harness.machine_line(results), "",
      "Medians [25th, 75th percentiles] of paired ratios; the setup: "
      "benchmarks/training_cost/README.md.", "",
      *_harness.table(["", "value"], rows)]) + "\n"


def main(config):
  results = run(config)
  _harness.write_report(os.path.join(config.output_dir, "training_cost.json"),
                        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
