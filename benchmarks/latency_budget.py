r"""Does a latency budget deliver the speed-up it asks for?

For each model: measure a `keras_epi.LatencyTable` on it (timed), score
channels by `keras_epi.magnitude_importance`, plan
`keras_epi.select_channels(..., budget="latency", latency_table=table)` for
each requested ratio (0.5 asks for a predicted 2x), and a MAC plan
(``budget="macs"``) removing the same fraction of MACs as the latency plan
did; build both with `keras_epi.prune_model`. Then the dense model and every
plan are timed alternately in this process (`benchmarks.harness`), and the
report compares, per model, the table's prediction (`LatencyTable.predict`)
with the measured time, the requested speed-up with the measured one, and the
latency plan with the MAC plan of equal MACs. With ``--timed_passes`` (3 by
default) each ratio also gets a ``timed_`` plan from
`keras_epi.select_channels_timed`: the table's plan corrected by timing it
against the dense model here; its row is timed again in the rounds below,
independently of the timings that chose it. With ``--control`` (default)
a second build of each latency plan is timed as its own row: the two builds
of one architecture differ only by noise, which bounds what any error
below can resolve.

Two prediction errors are reported. The absolute one compares seconds
predicted from a table measured minutes earlier with seconds measured now;
this host drifts by tens of percent within minutes, and the dense row's own
error shows how much. The error of time/dense compares the plan's predicted
fraction of the dense time with the paired fraction measured in the same
rounds: what a ratio budget relies on, free of that drift. Plans and the
table use ``--round_to=8`` by default (widths off a multiple of 8 take
slower kernels; see the benchmarks README).

  python -m benchmarks.latency_budget                    # results/
  python -m benchmarks.latency_budget --training         # ResNet-20, batch 128
  python -m benchmarks.latency_budget --quick --models=resnet20   # to /tmp

Timing: ``predict_on_batch`` (what the table measures, so its per-call
overhead is in both the prediction and the measurement), or
``--timing=tf_function`` (``model(x, training=False)`` in a tf.function);
with --training, ``train_on_batch`` (SGD with learning rate 0, so every step
does the same work) against a ``training=True`` table. With --tflite the
float TFLite flatbuffers (`keras_epi.export_tflite`, BatchNormalization
folded) of the dense model and of every plan are timed too, in
`tf.lite.Interpreter` (inference; the table does not predict them).
"""

import dataclasses
import os
import sys
import tempfile
import time
import warnings

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_epi  # pylint: disable=g-import-not-at-top,wrong-import-position
import models as models_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_MODELS = flags.DEFINE_list(
    "models", ["ResNet50", "MobileNetV2", "resnet20"],
    "keras.applications names (weights=None, --image_size, 1000 classes) or "
    "CIFAR ResNets of examples/models.py (32x32x3, 10 classes). With "
    "--training and no --models: resnet20.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 8, "Examples per call (with --training and no "
    "--batch_size: 128).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224,
                                   "keras.applications input size.")
_RATIOS = flags.DEFINE_list(
    "ratios", ["0.5"], "Latency fractions to remove (0.5 asks for 2x).")
_ROUND_TO = flags.DEFINE_integer("round_to", 8,
                                 "Kept widths are multiples of this.")
_TABLE_WIDTHS = flags.DEFINE_list(
    "table_widths", ["0.25", "0.5", "0.75", "1.0"],
    "LatencyTable.measure(widths=...): fractions of each layer's width.")
_TABLE_REPEATS = flags.DEFINE_integer(
    "table_repeats", 5, "LatencyTable.measure(repeats=...).")
_SCORES = flags.DEFINE_enum(
    "scores", "magnitude", ["magnitude", "normalized"],
    "Channel scores: keras_epi.magnitude_importance, or the same divided by "
    "its group's mean (with weights=None, raw magnitudes differ between "
    "layers by their initialisation scale, which drives a global ranking to "
    "cut some layers to a channel or two).")
_TRAINING = flags.DEFINE_bool(
    "training", False, "Time a training step (train_on_batch) against a "
    "training=True table instead of inference.")
_TIMING = flags.DEFINE_enum(
    "timing", "predict_on_batch", ["predict_on_batch", "tf_function"],
    "How inference is called (ignored with --training).")
_TIMED_PASSES = flags.DEFINE_integer(
    "timed_passes", 3, "Per ratio, also a plan from "
    "keras_epi.select_channels_timed with this many timed passes (the "
    "table's plan corrected by timing it here); 0: none.")
_CONTROL = flags.DEFINE_bool(
    "control", True, "Per ratio, time a second build of the latency plan as "
    "its own row (control_): two builds of one architecture timed in the "
    "same rounds show this host's noise floor.")
_TFLITE = flags.DEFINE_bool("tflite", False,
                            "Also time the float TFLite models.")
_TFLITE_THREADS = flags.DEFINE_integer(
    "tflite_threads", 0, "tf.lite.Interpreter(num_threads=); 0: its "
    "default.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Alternation rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per callable.")
_SECONDS_PER_MEASUREMENT = flags.DEFINE_float(
    "seconds_per_measurement", 0.5,
    "Calls per measurement are set so that a dense one lasts this long.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Smoke run: 64x64 inputs, a 2-point table grid, 3 "
    "rounds; writes to $TMPDIR/keras_epi_benchmarks unless --output.")
_OUTPUT = flags.DEFINE_string(
    "output", "benchmarks/results/latency_budget.json",
    "JSON path; the markdown table goes beside it (.md).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (weights, inputs).")


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of one run (flags, with --quick and --training
  defaults applied)."""
  models: tuple
  batch_size: int
  image_size: int
  ratios: tuple
  round_to: int
  table_widths: tuple
  table_repeats: int
  table_warmup: int
  scores: str
  training: bool
  timing: str
  timed_passes: int
  control: bool
  tflite: bool
  tflite_threads: int
  rounds: int
  warmup: int
  seconds_per_measurement: float
  quick: bool
  output: str
  seed: int


def _config_from_flags():
  values = dict(
      models=tuple(_MODELS.value), batch_size=_BATCH_SIZE.value,
      image_size=_IMAGE_SIZE.value,
      ratios=tuple(float(r) for r in _RATIOS.value),
      round_to=_ROUND_TO.value,
      table_widths=tuple(float(w) for w in _TABLE_WIDTHS.value),
      table_repeats=_TABLE_REPEATS.value, table_warmup=2,
      scores=_SCORES.value, training=_TRAINING.value,
      timing="train_on_batch" if _TRAINING.value else _TIMING.value,
      timed_passes=_TIMED_PASSES.value, control=_CONTROL.value,
      tflite=_TFLITE.value, tflite_threads=_TFLITE_THREADS.value,
      rounds=_ROUNDS.value, warmup=_WARMUP.value,
      seconds_per_measurement=_SECONDS_PER_MEASUREMENT.value,
      quick=_QUICK.value, output=_OUTPUT.value, seed=_SEED.value)
  if _TRAINING.value:
    if not _MODELS.present:
      values["models"] = ("resnet20",)
    if not _BATCH_SIZE.present:
      values["batch_size"] = 128
  if _QUICK.value:
    quick = dict(image_size=64, table_widths=(0.5, 1.0), table_repeats=2,
                 table_warmup=1, rounds=3, warmup=1,
                 seconds_per_measurement=0.05)
    values.update({k: v for k, v in quick.items()
                   if k not in flags.FLAGS or not flags.FLAGS[k].present})
    if not _OUTPUT.present:
      values["output"] = os.path.join(tempfile.gettempdir(),
                                      "keras_epi_benchmarks",
                                      "latency_budget.json")
  for ratio in values["ratios"]:
    if not 0 < ratio < 1:
      raise app.UsageError(f"--ratios must be in (0, 1), got {ratio}.")
  return Config(**values)


def _build(config, name):
  if name in models_lib.CIFAR_RESNETS:
    return models_lib.build_model(name, (32, 32, 3), 10)
  return models_lib.build_model(name, (config.image_size,) * 2 + (3,), 1000)


def _caller(config, model, rng):
  """A no-argument callable running one step of `model` (see --timing)."""
  x = tf.constant(rng.uniform(-1, 1, (config.batch_size,
                                      *model.input_shape[1:]))
                  .astype("float32"))
  if config.training:
    model.compile(keras.optimizers.SGD(learning_rate=0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = tf.constant(rng.integers(0, model.output_shape[-1],
                                 config.batch_size))
    return lambda: model.train_on_batch(x, y)
  if config.timing == "tf_function":
    forward = tf.function(lambda x: model(x, training=False),
                          jit_compile=False)
    return lambda: forward(x)
  return lambda: model.predict_on_batch(x)


def _tflite_caller(config, model, directory, name, rng):
  path = os.path.join(directory, f"{name}.tflite")
  keras_epi.export_tflite(model, path)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(
        model_path=path, num_threads=config.tflite_threads or None)
  inp = interpreter.get_input_details()[0]
  shape = (config.batch_size, *inp["shape"][1:])
  interpreter.resize_tensor_input(inp["index"], shape)
  interpreter.allocate_tensors()
  out = interpreter.get_output_details()[0]["index"]
  x = rng.uniform(-1, 1, shape).astype("float32")

  def call():
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out)
  return call, os.path.getsize(path)


def _plans(config, model, table, dense_macs):
  """{plan name: (keep, info)}: per ratio a latency plan and a MAC plan of
  the same MACs fraction."""
  groups = keras_epi.channel_groups(model)
  scores = keras_epi.magnitude_importance(model, groups)
  if config.scores == "normalized":
    scores = {k: v / max(float(np.mean(v)), 1e-12) for k, v in scores.items()}
  plans = {}
  for ratio in config.ratios:
    if config.timed_passes:
      start = time.perf_counter()
      keep, passes = keras_epi.select_channels_timed(
          model, scores, ratio, table, passes=config.timed_passes,
          round_to=config.round_to)
      plans[f"timed_{ratio}"] = (keep, {
          "ratio": ratio, "budget": "latency_timed", "passes": passes,
          "timed_seconds": time.perf_counter() - start,
          "model": keras_epi.prune_model(model, keep)})
    try:
      keep = keras_epi.select_channels(
          model, scores, ratio, budget="latency", latency_table=table,
          round_to=config.round_to)
    except ValueError as e:  # an unreachable target says what is reachable
      logging.warning("ratio %s: %s", ratio, e)
      plans[f"latency_{ratio}"] = (None, {"ratio": ratio, "error": " ".join(
          str(e).split())})
      continue
    pruned = keras_epi.prune_model(model, keep)
    macs = keras_epi.count_macs(pruned) / dense_macs
    plans[f"latency_{ratio}"] = (keep, {"ratio": ratio, "budget": "latency",
                                        "model": pruned})
    if 0 < 1 - macs < 1:
      mac_keep = keras_epi.select_channels(
          model, scores, 1 - macs, budget="macs", round_to=config.round_to)
      plans[f"macs_{ratio}"] = (mac_keep, {
          "ratio": ratio, "budget": "macs", "macs_ratio_asked": 1 - macs,
          "model": keras_epi.prune_model(model, mac_keep)})
    if config.control:
      plans[f"control_{ratio}"] = (keep, {
          "ratio": ratio, "budget": "control",
          "model": keras_epi.prune_model(model, keep)})
  return plans


def _benchmark(config, name, rng):
  keras.utils.set_random_seed(config.seed)
  model = _build(config, name)
  dense_macs = keras_epi.count_macs(model)
  start = time.perf_counter()
  table = keras_epi.LatencyTable.measure(
      model, batch_size=config.batch_size, training=config.training,
      widths=config.table_widths, repeats=config.table_repeats,
      warmup=config.table_warmup, round_to=config.round_to)
  table_seconds = time.perf_counter() - start
  plans = _plans(config, model, table, dense_macs)
  entry = {"model": name, "input_shape": list(model.input_shape[1:]),
           "dense_macs": dense_macs, "table_seconds": table_seconds,
           "table_layers": len(table.entries),
           "table_distinct_layers": table.metadata.get("distinct_layers"),
           "table_fixed_seconds": table.fixed, "table_scale": table.scale,
           "table_calibration": table.metadata.get("calibration"),
           "plans": {}}
  models = {"dense": model}
  rows = {"dense": {"predicted_seconds": table.predict(model),
                    "macs_fraction": 1.0}}
  for plan_name, (keep, info) in plans.items():
    if keep is None:
      entry["plans"][plan_name] = info
      continue
    pruned = info.pop("model")
    models[plan_name] = pruned
    rows[plan_name] = dict(
        info, predicted_seconds=table.predict(model, keep),
        macs_fraction=keras_epi.count_macs(pruned) / dense_macs,
        widths={g: len(k) for g, k in keep.items()})
  timing = harness.time_alternately(
      {n: _caller(config, m, rng) for n, m in models.items()},
      rounds=config.rounds, warmup=config.warmup,
      seconds_per_measurement=config.seconds_per_measurement)
  for plan_name, row in rows.items():
    measured = timing["median_seconds"][plan_name]
    predicted = row["predicted_seconds"]
    low, high = timing["ratio_quartiles"][plan_name]
    row.update(
        measured_seconds=measured,
        prediction_error=(predicted - measured) / measured,
        # The fraction of dense predicted vs the paired fraction measured:
        # free of the machine's drift between the table and these rounds.
        relative_error=(predicted / rows["dense"]["predicted_seconds"]) /
        timing["ratio"][plan_name] - 1.0,
        predicted_speedup=rows["dense"]["predicted_seconds"] / predicted,
        measured_speedup=1.0 / timing["ratio"][plan_name],
        measured_speedup_quartiles=[1.0 / high, 1.0 / low])
    if row.get("budget") in ("latency", "latency_timed"):
      row["requested_speedup"] = 1.0 / (1.0 - row["ratio"])
  entry["plans"].update(rows)
  entry["timing"] = timing
  if config.tflite:
    with tempfile.TemporaryDirectory() as directory:
      calls, sizes = {}, {}
      for plan_name, m in models.items():
        calls[plan_name], sizes[plan_name] = _tflite_caller(
            config, m, directory, plan_name, rng)
      tflite = harness.time_alternately(
          calls, rounds=config.rounds, warmup=config.warmup,
          seconds_per_measurement=config.seconds_per_measurement)
    tflite["bytes"] = sizes
    entry["tflite"] = tflite
  return entry


def _fractions(entry):
  points = entry.get("table_calibration") or [{"fraction": 1.0}]
  return ", ".join(f"{p['fraction']:g}" for p in points)


def _ms(seconds):
  return f"{1000 * seconds:.2f}"


def _markdown(results):
  config = results["settings"]
  mode = "training step" if config["training"] else "inference"
  lines = [f"# Latency budget: predicted vs measured ({mode}, "
           f"{config['timing']}, batch {config['batch_size']})", "",
           f"{results['date']}, {results['machine'].get('cpu_model')}, "
           f"{results['machine']['usable_cpus']} CPUs. Medians over "
           f"{config['rounds']} alternated rounds; speed-up quartiles of "
           "the per-round paired ratios in brackets. Channel scores: "
           f"{config.get('scores', 'magnitude')} (random weights). Backend: "
           "TensorFlow (Keras 3).", ""]
  for entry in results["models"]:
    lines.append(f"## {entry['model']} {tuple(entry.get('input_shape', ()))}")
    if "error" in entry:
      lines += ["", f"Failed: {entry['error']}", ""]
      continue
    loads = [l for l in entry["timing"]["foreign_load"] if l is not None]
    lines += ["", f"Table: {entry['table_layers']} layers "
              f"({entry['table_distinct_layers']} distinct), measured in "
              f"{entry['table_seconds']:.1f} s; fixed term "
              f"{_ms(entry['table_fixed_seconds'])} ms, scale "
              f"{entry.get('table_scale', 1.0):.3f} (the line through the "
              f"whole model's times at uniform widths "
              f"{_fractions(entry)}). Largest foreign CPU "
              f"load in a round: {max(loads) if loads else float('nan'):.2f}.",
              "", "| model | MACs | predicted ms | measured ms | error | "
              "error of time/dense | speed-up asked | predicted | measured |",
              "|---|---|---|---|---|---|---|---|---|"]
    for plan_name, row in entry["plans"].items():
      if "error" in row:
        lines.append(f"| {plan_name} | failed: {row['error']} ||||||||")
        continue
      asked = row.get("requested_speedup")
      low, high = row["measured_speedup_quartiles"]
      lines.append(
          f"| {plan_name} | {row['macs_fraction']:.3f} | "
          f"{_ms(row['predicted_seconds'])} | "
          f"{_ms(row['measured_seconds'])} | "
          f"{100 * row['prediction_error']:+.1f}% | "
          f"{100 * row.get('relative_error', float('nan')):+.1f}% | "
          f"{'' if asked is None else f'{asked:.2f}x'} | "
          f"{row['predicted_speedup']:.2f}x | "
          f"{row['measured_speedup']:.2f}x [{low:.2f}, {high:.2f}] |")
    for plan_name, row in entry["plans"].items():
      if "passes" in row:
        steps = "; ".join(
            f"ratio {p['planned_ratio']:.4f}: predicted "
            f"{p['predicted_fraction']:.3f}, measured "
            f"{p['measured_fraction']:.3f}, estimated "
            f"{p['estimated_fraction']:.3f}"
            f"{' (chosen)' if p['chosen'] else ''}" for p in row["passes"])
        lines += ["", f"{plan_name} (keras_epi.select_channels_timed, "
                  f"{row['timed_seconds']:.0f} s): {steps}."]
    if "tflite" in entry:
      tflite = entry["tflite"]
      lines += ["", "TFLite (float, BN folded), inference:", "",
                "| model | bytes | measured ms | speed-up |",
                "|---|---|---|---|"]
      for plan_name in tflite["names"]:
        lines.append(
            f"| {plan_name} | {tflite['bytes'][plan_name]} | "
            f"{_ms(tflite['median_seconds'][plan_name])} | "
            f"{1.0 / tflite['ratio'][plan_name]:.2f}x |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  config = _config_from_flags()
  logging.info("Config: %s", config)
  rng = np.random.default_rng(config.seed)
  entries = []
  for name in config.models:
    try:
      entries.append(_benchmark(config, name, rng))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("%s failed", name)
      entries.append({"model": name, "error":
                      f"{type(e).__name__}: {str(e).splitlines()[0]}"})
    keras.backend.clear_session()
  results = harness.record(**dataclasses.asdict(config))
  results["models"] = entries
  directory, filename = os.path.split(os.path.abspath(config.output))
  common.write_results(directory, os.path.splitext(filename)[0], results,
                       _markdown(results))


if __name__ == "__main__":
  app.run(main)
