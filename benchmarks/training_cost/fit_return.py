"""The time between a fit's last `on_train_end` and `fit`'s return, with
tf.data's autotuning on (TensorFlow's default) and off.

  taskset -c 1 python -m benchmarks.training_cost.fit_return   # results/

When `fit` returns, its input iterator is deleted, and the iterator's
destructor waits for tf.data's autotuning thread (seen with
``py-spy dump --native`` during such a wait:
``RootDataset::Iterator::~Iterator`` ->
``UnboundedThreadPool::LogicalThreadWrapper::~LogicalThreadWrapper`` ->
``Notification::WaitForNotification``, under ``EagerTensor_dealloc`` at
`fit`'s return). `keras_epi.fit` runs two fits, so it pays this twice.

The schedule study's model, data and pipeline (as epoch_start.py), one
TensorFlow thread: `rounds` plain `Model.fit` calls of `epochs` epochs of
the dense model on the repeated pipeline, with autotuning on and off in
alternating order. Per fit: seconds from `on_train_end` to `fit`'s return,
and the epochs' seconds.
"""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from benchmarks.schedule import run as schedule
from benchmarks.study import run as study_lib
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  rounds: int = 4
  epochs: int = 5
  threads: int = _harness.flag(1, "TF intra- and inter-op threads (0: "
                               "TF's).")
  data_dir: str = _harness.flag(None, "Fashion-MNIST IDX files (None: "
                                "Debian's package).")
  output_dir: str = "benchmarks/training_cost/results"
  quick: bool = _harness.flag(False, "Smoke run: 1 round of 1 epoch, to a "
                              "scratch directory.")


QUICK = {"rounds": 1, "epochs": 1,
         "output_dir": _harness.scratch("training_cost")}
MODES = ("autotune_on", "autotune_off")


class _End(keras.callbacks.Callback):

  def on_train_begin(self, logs=None):
    self.begin = time.perf_counter()

  def on_train_end(self, logs=None):
    self.end = time.perf_counter()


def fit_once(study, mode, epochs):
  """One fit of a fresh dense model: (seconds after on_train_end, seconds
  of its epochs)."""
  keras.utils.set_random_seed(0)
  model = study.build()
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  data = study.train().repeat()
  if mode == "autotune_off":
    options = tf.data.Options()
    options.autotune.enabled = False
    data = data.with_options(options)
  end = _End()
  model.fit(data, steps_per_epoch=study.steps, epochs=epochs, verbose=0,
            callbacks=[end])
  returned = time.perf_counter()
  return returned - end.end, end.end - end.begin


def run(config):
  _harness.set_threads(config.threads)
  settings = dataclasses.replace(schedule.Config(),
                                 data_dir=config.data_dir)
  study = study_lib.Study(settings, 0)
  fits = {mode: [] for mode in MODES}
  for r in range(config.rounds):
    for mode in timing.rotation(list(MODES), r):
      after, epochs = fit_once(study, mode, config.epochs)
      fits[mode].append({"after_train_end": after, "epochs": epochs})
      keras.backend.clear_session()
  summary = {}
  for mode, values in fits.items():
    after = [v["after_train_end"] for v in values]
    summary[mode] = {"after_train_end_median": float(np.median(after)),
                     "after_train_end_max": float(np.max(after)),
                     "epochs_median": float(np.median(
                         [v["epochs"] for v in values]))}
  return {"date": _harness.now(), "machine": _harness.machine(),
          "setup": dataclasses.asdict(config), "steps_per_epoch": study.steps,
          "summary": summary, "fits": fits}


def markdown(results):
  rows = []
  for mode in MODES:
    s, fits = results["summary"][mode], results["fits"][mode]
    rows.append([mode.replace("_", " "), " ".join(
        f"{f['after_train_end']:.2f}" for f in fits),
                 f"{s['after_train_end_median']:.2f}",
                 f"{s['epochs_median']:.1f}"])
  c = results["setup"]
  return "\n".join([
      "# After the last epoch: from on_train_end to fit's return", "",
      _harness.machine_line(results), "",
      f"{c['rounds']} fits per mode of {c['epochs']} epochs "
      f"({results['steps_per_epoch']} steps each), alternating; "
      f"{c['threads'] or 'TF default'} TensorFlow thread(s). Setup: "
      "benchmarks/training_cost/README.md.", "",
      *_harness.table(["tf.data autotuning", "seconds after on_train_end, "
                       "per fit", "median", "epochs, median (s)"],
                      rows)]) + "\n"


def main(config):
  results = run(config)
  _harness.write_report(os.path.join(config.output_dir, "fit_return.json"),
                        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, QUICK)
