"""Where an epoch's time goes when the model is small: the start of every
epoch against its steps, for a dense and a pruned model, with a new input
iterator every epoch (a finite `tf.data.Dataset`, as `fit` is usually
called) and with one iterator for the whole fit (the dataset repeated,
`steps_per_epoch` given).

  taskset -c 1 python -m benchmarks.training_cost.epoch_start   # results/

The schedule study's model, data and pipeline (`benchmarks.study.run`'s
`Study` at the settings of `benchmarks/schedule`: a CIFAR ResNet-20 on 2,048
28x28 Fashion-MNIST images, flips and crops, batch 128, one TensorFlow
thread). Each round fits each (model, input) pair `epochs_per_fit` epochs,
in the order `keras_epi.timing.rotation` gives; the first fit of each pair
(tracing) is not counted. Per epoch: the first step (from the epoch's start
to its first batch's end: the iterator's start and one step) and the rest.
"""

import dataclasses
import os
import time

import keras
import numpy as np

from benchmarks import _harness
from benchmarks.schedule import run as schedule
from benchmarks.study import run as study_lib
import keras_epi
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  rounds: int = 5
  epochs_per_fit: int = 4
  ratio: float = 0.5
  threads: int = _harness.flag(1, "TF intra- and inter-op threads (0: "
                               "TF's).")
  data_dir: str = _harness.flag(None, "Fashion-MNIST IDX files (None: "
                                "Debian's package).")
  output_dir: str = "benchmarks/training_cost/results"
  quick: bool = _harness.flag(False, "Smoke run: 2 rounds of 2 epochs, to "
                              "a scratch directory.")


QUICK = {"rounds": 2, "epochs_per_fit": 2,
         "output_dir": _harness.scratch("training_cost")}


class _EpochParts(keras.callbacks.Callback):
  """Per epoch: (seconds to the end of the first batch, the rest)."""

  def __init__(self):
    super().__init__()
    self.parts = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._first = time.perf_counter(), None

  def on_train_batch_end(self, batch, logs=None):
    if self._first is None:
      self._first = time.perf_counter() - self._start

  def on_epoch_end(self, epoch, logs=None):
    self.parts.append((self._first, time.perf_counter() - self._start -
                       self._first))


def run(config):
  _harness.set_threads(config.threads)
  settings = dataclasses.replace(schedule.Config(),
                                 data_dir=config.data_dir)
  study = study_lib.Study(settings, 0)
  dense = study.build()
  groups = keras_epi.channel_groups(dense)
  keep = keras_epi.select_channels(
      dense, keras_epi.magnitude_importance(dense, groups), config.ratio)
  models = {"dense": dense, "pruned": keras_epi.prune_model(dense, keep)}
  for model in models.values():
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
  repeated = study.train().repeat()

  def fit(name, mode):
    timer = _EpochParts()
    if mode == "new_iterator_per_epoch":
      models[name].fit(study.train(), epochs=config.epochs_per_fit,
                       verbose=0, callbacks=[timer])
    else:
      models[name].fit(repeated, steps_per_epoch=study.steps,
                       epochs=config.epochs_per_fit, verbose=0,
                       callbacks=[timer])
    return timer.parts

  pairs = [(n, m) for m in ("new_iterator_per_epoch", "one_iterator")
           for n in models]
  for name, mode in pairs:  # tracing
    fit(name, mode)
  parts = {f"{n}/{m}": [] for n, m in pairs}
  for r in range(config.rounds):
    for key in timing.rotation(list(parts), r):
      parts[key] += fit(*key.split("/"))
  summary = {}
  for key, values in parts.items():
    first, rest = np.array(values).T
    summary[key] = {"first_step_median": float(np.median(first)),
                    "first_step_quartiles": [float(q) for q in
                                             np.percentile(first, [25, 75])],
                    "rest_median": float(np.median(rest)),
                    "epoch_median": float(np.median(first + rest))}
  for mode in ("new_iterator_per_epoch", "one_iterator"):
    summary[f"pruned_over_dense/{mode}"] = (
        summary[f"pruned/{mode}"]["epoch_median"] /
        summary[f"dense/{mode}"]["epoch_median"])
  return {"date": _harness.now(), "machine": _harness.machine(),
          "setup": dataclasses.asdict(config), "steps_per_epoch": study.steps,
          "macs_fraction": keras_epi.count_macs(models["pruned"]) /
                           keras_epi.count_macs(dense),
          "summary": summary,
          "epochs": {k: [list(p) for p in v] for k, v in parts.items()}}


def markdown(results):
  s = results["summary"]
  rows = []
  for mode in ("new_iterator_per_epoch", "one_iterator"):
    for name in ("dense", "pruned"):
      p = s[f"{name}/{mode}"]
      rows.append([mode.replace("_", " "), name,
                   f"{p['first_step_median']:.2f} "
                   f"[{p['first_step_quartiles'][0]:.2f}, "
                   f"{p['first_step_quartiles'][1]:.2f}]",
                   f"{p['rest_median']:.2f}", f"{p['epoch_median']:.2f}"])
    rows.append([mode.replace("_", " "), "pruned / dense", "", "",
                 f"**{s[f'pruned_over_dense/{mode}']:.3f}**"])
  return "\n".join([
      "# Where a small model's epoch goes: its start and its steps", "",
      _harness.machine_line(results), "",
      f"{results['steps_per_epoch']} steps per epoch; the pruned model has "
      f"{results['macs_fraction']:.3f} of the MACs; "
      f"{results['setup']['threads'] or 'TF default'} TensorFlow thread(s). "
      "Seconds, medians over epochs [quartiles]; setup: "
      "benchmarks/training_cost/README.md.", "",
      *_harness.table(["input", "model", "first step (s)",
                       "rest of the epoch (s)", "epoch (s)"], rows)]) + "\n"


def main(config):
  results = run(config)
  _harness.write_report(os.path.join(config.output_dir, "epoch_start.json"),
                        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, QUICK)
