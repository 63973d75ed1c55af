r"""Prunes a keras.applications CNN and reports MACs, params and speed.

The demo of the foundation: channel groups, a dominant sub-network chosen by
filter magnitude under a MAC budget, physical surgery, and the speed of the
result measured against the dense model, alternately, in one process. The
pruned model is saved as `.keras`, loaded back with plain
`keras.saving.load_model` and checked against the in-memory one.

  python examples/prune_demo.py --model=ResNet50 --ratio=0.5 \
      --output_dir=/tmp/keras_epi_demo
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import keras

import keras_epi
from keras_epi import timing

_MODEL = flags.DEFINE_string("model", "ResNet50",
                             "keras.applications model name.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 224, "Input height/width.")
_RATIO = flags.DEFINE_float("ratio", 0.5, "Fraction of the budget removed.")
_BUDGET = flags.DEFINE_enum("budget", "macs", ["macs", "neurons"],
                            "What `ratio` is a fraction of.")
_ROUND_TO = flags.DEFINE_integer("round_to", 8,
                                 "Kept widths are multiples of this.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch for timing.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Alternated timing rounds (keras_epi.timing).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where the pruned model and summary go.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
flags.mark_flag_as_required("output_dir")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  model: str
  input_size: int
  ratio: float
  budget: str
  round_to: int
  batch_size: int
  repeats: int
  output_dir: str
  seed: int


def main(argv):
  del argv
  config = DemoConfig(
      model=_MODEL.value, input_size=_INPUT_SIZE.value, ratio=_RATIO.value,
      budget=_BUDGET.value, round_to=_ROUND_TO.value,
      batch_size=_BATCH_SIZE.value, repeats=_REPEATS.value,
      output_dir=_OUTPUT_DIR.value, seed=_SEED.value)
  if not hasattr(keras.applications, config.model):
    raise app.UsageError(f"--model={config.model} is not a keras.applications "
                         "model (e.g. ResNet50, MobileNetV2, VGG16).")
  if not 0 < config.ratio < 1:
    raise app.UsageError(f"--ratio must be in (0, 1), got {config.ratio}.")
  os.makedirs(config.output_dir, exist_ok=True)
  with open(os.path.join(config.output_dir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  logging.info("Config: %s", config)
  keras.utils.set_random_seed(config.seed)

  shape = (config.input_size, config.input_size, 3)
  start = time.perf_counter()
  dense = getattr(keras.applications, config.model)(weights=None,
                                                    input_shape=shape)
  build_seconds = time.perf_counter() - start

  groups = keras_epi.channel_groups(dense)
  scores = keras_epi.magnitude_importance(dense, groups)
  keep = keras_epi.select_channels(dense, scores, config.ratio,
                                   budget=config.budget,
                                   round_to=config.round_to)
  start = time.perf_counter()
  pruned = keras_epi.prune_model(dense, keep)
  surgery_seconds = time.perf_counter() - start

  path = os.path.join(config.output_dir, f"{config.model}_pruned.keras")
  pruned.save(path)
  x = np.random.default_rng(config.seed).uniform(
      0, 255, (config.batch_size, *shape)).astype("float32")
  reloaded = keras.saving.load_model(path)
  reload_error = float(np.max(np.abs(reloaded.predict(x, verbose=0) -
                                     pruned.predict(x, verbose=0))))

  calls = {}
  for name, model in (("dense", dense), ("pruned", pruned)):
    forward = tf.function(lambda t, m=model: m(t, training=False))
    calls[name] = lambda f=forward: f(x)
  # Alternated rounds (the machine is shared): medians and the paired ratio.
  timed = timing.time_alternately(calls, rounds=config.repeats, warmup=1,
                                  num_calls=3)
  median = timed["median_seconds"]

  macs = {"dense": keras_epi.count_macs(dense),
          "pruned": keras_epi.count_macs(pruned)}
  speedup = 1.0 / timed["ratio"]["pruned"]
  summary = {
      "model": config.model,
      "groups": len(groups),
      "macs_dense": macs["dense"], "macs_pruned": macs["pruned"],
      "params_dense": dense.count_params(),
      "params_pruned": pruned.count_params(),
      "seconds_per_batch_dense": median["dense"],
      "seconds_per_batch_pruned": median["pruned"],
      "speedup": speedup,
      "efficiency": speedup / (macs["dense"] / macs["pruned"]),
      "build_seconds": build_seconds, "surgery_seconds": surgery_seconds,
      "reload_max_abs_error": reload_error,
      "pruned_model": path,
  }
  with open(os.path.join(config.output_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logging.info(
      "%s: MACs %.3fG -> %.3fG (%.1f%%), params %.2fM -> %.2fM, "
      "%.1f ms -> %.1f ms per batch of %d (%.2fx, efficiency %.2f); "
      "surgery %.1fs (model build %.1fs); saved %s (reload error %.1e)",
      config.model, macs["dense"] / 1e9, macs["pruned"] / 1e9,
      100 * macs["pruned"] / macs["dense"], dense.count_params() / 1e6,
      pruned.count_params() / 1e6, 1e3 * median["dense"],
      1e3 * median["pruned"], config.batch_size, speedup,
      summary["efficiency"], surgery_seconds, build_seconds, path,
      reload_error)


if __name__ == "__main__":
  app.run(main)
