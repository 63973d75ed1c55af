"""Does a latency budget deliver the speed-up it asks for?

  python -m benchmarks.latency_budget.run --scores=normalized    # results/
  python -m benchmarks.latency_budget.run --quick --models=resnet20
  python -m benchmarks.latency_budget.run \
      --summarize=benchmarks/latency_budget/results/runs   # medians of runs
"""

import collections
import dataclasses
import glob
import json
import os
import re
import tempfile
import time
import warnings

from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from examples import models as models_lib
import keras_epi
from keras_epi import timing

_flag = _harness.flag


@dataclasses.dataclass(frozen=True)
class Config:
  models: tuple = _flag(("ResNet50", "MobileNetV2", "resnet20"),
                        "keras.applications names or CIFAR ResNets of "
                        "examples/models.py; with --training: resnet20.")
  batch_size: int = _flag(8, "Examples per call (--training: 128).")
  image_size: int = 224
  ratios: tuple = _flag((0.5,), "Latency fractions to remove (0.5: 2x).")
  round_to: int = _flag(8, "Kept widths (and the table's) are multiples.")
  table_widths: tuple = (0.25, 0.5, 0.75, 1.0)
  table_repeats: int = 5
  table_warmup: int = 2
  scores: str = _flag("magnitude", "magnitude, or normalized: "
                      "magnitude_importance over its group's mean.")
  training: bool = _flag(False, "Time train_on_batch against a "
                         "training=True table.")
  timing: str = "predict_on_batch"
  timed_passes: int = _flag(3, "select_channels_timed passes (0: none).")
  control: bool = _flag(True, "Time a second build of each latency plan.")
  tflite: bool = _flag(False, "Also time the float TFLite models.")
  tflite_threads: int = 0
  rounds: int = 7
  warmup: int = 2
  seconds_per_measurement: float = 0.5
  seed: int = 0
  output_dir: str = _flag("benchmarks/latency_budget/results",
                          "Where the JSON and markdown go.")
  output_name: str = _flag("latency_budget", "The result files' name.")
  quick: bool = _flag(False, "Smoke run: 64x64 inputs, a 2-point table, 3 "
                      "rounds, to a scratch directory.")
  summarize: str = _flag(None, "Measure nothing: write summary.{json,md} "
                         "of the <row>_run<k>.json files in this folder.")


_QUICK = {"image_size": 64, "table_widths": (0.5, 1.0), "table_repeats": 2,
          "table_warmup": 1, "rounds": 3, "warmup": 1,
          "seconds_per_measurement": 0.05,
          "output_dir": _harness.scratch("latency_budget")}
_FIGURES = ("measured_speedup", "relative_error", "prediction_error",
            "macs_fraction", "predicted_speedup", "speedup_miss")


def _caller(config, model, rng):
  """A no-argument callable running one step of `model`."""
  x = tf.constant(rng.uniform(-1, 1, (config.batch_size,
                                      *model.input_shape[1:]))
                  .astype("float32"))
  if not config.training:
    return lambda: model.predict_on_batch(x)
  model.compile(keras.optimizers.SGD(learning_rate=0.0),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  y = tf.constant(rng.integers(0, model.output_shape[-1], config.batch_size))
  return lambda: model.train_on_batch(x, y)


def _tflite_caller(config, model, path, rng):
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
  return call


def _plans(config, model, table, dense_macs):
  """{plan name: (keep or None, row)}: per ratio the timed plan, the latency
  plan (or its refusal), a MAC plan of the same MAC fraction and a second
  build of the latency plan."""
  scores = keras_epi.magnitude_importance(model,
                                          keras_epi.channel_groups(model))
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
          "timed_seconds": time.perf_counter() - start})
    try:
      keep = keras_epi.select_channels(
          model, scores, ratio, budget="latency", latency_table=table,
          round_to=config.round_to)
    except ValueError as e:  # an unreachable target says what is reachable
      logging.warning("ratio %s: %s", ratio, e)
      plans[f"latency_{ratio}"] = (None, {"ratio": ratio,
                                          "error": " ".join(str(e).split())})
      continue
    plans[f"latency_{ratio}"] = (keep, {"ratio": ratio, "budget": "latency"})
    macs = keras_epi.count_macs(model, keep) / dense_macs
    if 0 < 1 - macs < 1:
      plans[f"macs_{ratio}"] = (keras_epi.select_channels(
          model, scores, 1 - macs, budget="macs", round_to=config.round_to),
                                {"ratio": ratio, "budget": "macs",
                                 "macs_ratio_asked": 1 - macs})
    if config.control:
      plans[f"control_{ratio}"] = (keep, {"ratio": ratio,
                                          "budget": "control"})
  return plans


def _benchmark(config, name, rng):
  """The table, the plans and their timings for one model."""
  keras.utils.set_random_seed(config.seed)
  shape, classes = (((32, 32, 3), 10) if name in models_lib.CIFAR_RESNETS
                    else ((config.image_size,) * 2 + (3,), 1000))
  model = models_lib.build_model(name, shape, classes)
  dense_macs = keras_epi.count_macs(model)
  start = time.perf_counter()
  table = keras_epi.LatencyTable.measure(
      model, batch_size=config.batch_size, training=config.training,
      widths=config.table_widths, repeats=config.table_repeats,
      warmup=config.table_warmup, round_to=config.round_to)
  entry = {"model": name, "input_shape": list(model.input_shape[1:]),
           "dense_macs": dense_macs,
           "table_seconds": time.perf_counter() - start,
           "table_layers": len(table.entries),
           "table_distinct_layers": table.metadata.get("distinct_layers"),
           "table_fixed_seconds": table.fixed, "table_scale": table.scale,
           "table_calibration": table.metadata.get("calibration"),
           "plans": {}}
  models = {"dense": model}
  rows = {"dense": {"predicted_seconds": table.predict(model),
                    "macs_fraction": 1.0}}
  for plan, (keep, row) in _plans(config, model, table, dense_macs).items():
    if keep is None:
      entry["plans"][plan] = row
      continue
    models[plan] = keras_epi.prune_model(model, keep)
    rows[plan] = dict(
        row, predicted_seconds=table.predict(model, keep),
        macs_fraction=keras_epi.count_macs(model, keep) / dense_macs,
        widths={g: len(k) for g, k in keep.items()})
  kwargs = dict(rounds=config.rounds, warmup=config.warmup,
                seconds_per_measurement=config.seconds_per_measurement)
  timed = timing.time_alternately(
      {n: _caller(config, m, rng) for n, m in models.items()}, **kwargs)
  dense_predicted = rows["dense"]["predicted_seconds"]
  for plan, row in rows.items():
    measured, ratio = timed["median_seconds"][plan], timed["ratio"][plan]
    low, high = timed["ratio_quartiles"][plan]
    row.update(
        measured_seconds=measured,
        prediction_error=(row["predicted_seconds"] - measured) / measured,
        # The fraction of dense predicted vs the paired fraction measured:
        # free of the machine's drift between the table and these rounds.
        relative_error=row["predicted_seconds"] / dense_predicted / ratio - 1,
        predicted_speedup=dense_predicted / row["predicted_seconds"],
        measured_speedup=1.0 / ratio,
        measured_speedup_quartiles=[1.0 / high, 1.0 / low])
    if row.get("budget") in ("latency", "latency_timed"):
      row["requested_speedup"] = 1.0 / (1.0 - row["ratio"])
  entry["plans"].update(rows)
  entry["timing"] = timed
  if config.tflite:
    with tempfile.TemporaryDirectory() as directory:
      paths = {n: os.path.join(directory, f"{n}.tflite") for n in models}
      calls = {n: _tflite_caller(config, m, paths[n], rng)
               for n, m in models.items()}
      entry["tflite"] = dict(timing.time_alternately(calls, **kwargs),
                             bytes={n: os.path.getsize(p)
                                    for n, p in paths.items()})
  return entry


def _ms(seconds):
  return f"{1000 * seconds:.2f}"


def markdown(results):
  """The report of one run (as written by `main`)."""
  config = results["settings"]
  lines = [f"# Latency budget: predicted vs measured ("
           f"{'training step' if config['training'] else 'inference'}, "
           f"{config['timing']}, batch {config['batch_size']})", "",
           f"{_harness.machine_line(results)} Scores: {config['scores']}. "
           "Columns: benchmarks/latency_budget/README.md.", ""]
  for entry in results["models"]:
    lines += [f"## {entry['model']} {tuple(entry.get('input_shape', ()))}",
              ""]
    if "error" in entry:
      lines += [f"Failed: {entry['error']}", ""]
      continue
    lines += [
        f"Table: {entry['table_layers']} layers, measured in "
        f"{entry['table_seconds']:.1f} s; fixed term "
        f"{_ms(entry['table_fixed_seconds'])} ms, scale "
        f"{entry['table_scale']:.3f}. Largest foreign CPU load in a round: "
        f"{max(l or 0 for l in entry['timing']['foreign_load']):.2f}.", "",
        *_harness.table(
            ["model", "MACs", "predicted ms", "measured ms", "error",
             "error of time/dense", "speed-up asked", "predicted",
             "measured"],
            [[n, f"failed: {r['error']}"] if "error" in r else [
                n, f"{r['macs_fraction']:.3f}", _ms(r["predicted_seconds"]),
                _ms(r["measured_seconds"]),
                f"{100 * r['prediction_error']:+.1f}%",
                f"{100 * r['relative_error']:+.1f}%",
                _harness.fmt(r.get("requested_speedup"), ".2f", "", "x"),
                f"{r['predicted_speedup']:.2f}x",
                "{:.2f}x [{:.2f}, {:.2f}]".format(
                    r["measured_speedup"], *r["measured_speedup_quartiles"])]
             for n, r in entry["plans"].items()]), ""]
    if "tflite" in entry:
      t = entry["tflite"]
      lines += ["TFLite (float, BN folded), inference:", "", *_harness.table(
          ["model", "bytes", "measured ms", "speed-up"],
          [[n, t["bytes"][n], _ms(t["median_seconds"][n]),
            f"{1.0 / t['ratio'][n]:.2f}x"] for n in t["names"]]), ""]
  return "\n".join(lines)


def summarize(directory):
  """Per row of the ``<row>_run<k>.json`` files in `directory`: its
  settings, and per model and plan the median, range and values over runs
  of each figure; a plan refused in some runs counts the refusals."""
  runs = collections.defaultdict(list)
  for path in glob.glob(os.path.join(directory, "*_run*.json")):
    match = re.match(r"^(.+)_run(\d+)\.json$", os.path.basename(path))
    if match:
      with open(path, encoding="utf-8") as f:
        runs[match[1]].append((int(match[2]), json.load(f)))
  summary, machine = {}, None
  for row, found in sorted(runs.items()):
    results = [r for _, r in sorted(found, key=lambda kr: kr[0])]
    machine = machine or results[0].get("machine", {})
    models = collections.defaultdict(lambda: collections.defaultdict(list))
    for entry in (e for r in results for e in r.get("models", [])):
      for plan, values in (entry.get("plans") or
                           {"failed_runs": entry["error"]}).items():
        models[entry["model"]][plan].append(values)
    rows = {}
    for name, plans in models.items():
      rows[name] = {}
      for plan, values in plans.items():
        if plan == "failed_runs":
          rows[name][plan] = len(values)
          continue
        made = [dict(v) for v in values if "error" not in v]
        for v in made:
          if v.get("requested_speedup"):
            v["speedup_miss"] = (v["measured_speedup"] /
                                 v["requested_speedup"] - 1.0)
        figures = {"runs": len(made), "refused": len(values) - len(made)}
        for key in _FIGURES:
          series = [float(v[key]) for v in made if v.get(key) is not None]
          if series:
            figures[key] = dict(_harness.spread(series), values=series)
        asked = [v["requested_speedup"] for v in made
                 if "requested_speedup" in v]
        if asked:
          figures["requested_speedup"] = float(np.median(asked))
        refusals = [v["error"] for v in values if "error" in v]
        if refusals:
          figures["refusal"] = refusals[0]
        rows[name][plan] = figures
    settings = results[0].get("settings", {})
    summary[row] = dict(
        runs=len(results), dates=[r.get("date") for r in results],
        **{k: settings.get(k) for k in ("batch_size", "training", "round_to",
                                        "scores", "ratios")}, models=rows)
  return {"machine": machine, "rows": summary}


def summary_markdown(results):
  """The report of `summarize`."""

  def spread(f, spec, scale=1.0, unit=""):
    return "" if not f else "{} [{}, {}]{}".format(*(
        format(scale * f[k], spec) for k in ("median", "min", "max")), unit)

  lines = ["# Latency budget over repeated runs", "",
           "Medians [min, max] over runs, one run at a time. Columns: "
           "benchmarks/latency_budget/README.md.", ""]
  for row, data in results["rows"].items():
    rows = []
    for model, plans in data["models"].items():
      for plan, f in plans.items():
        miss = plan != "failed_runs" and f.get("speedup_miss")
        rows.append(
            [model, f"(failed in {f} runs)"] if plan == "failed_runs" else
            [model, plan, f"refused in {f['refused']}",
             f.get("refusal", "")[:160]] if not f["runs"] else
            [model, plan, f"{f['runs']}" + (
                f" (+{f['refused']} refused)" if f["refused"] else ""),
             spread(f.get("macs_fraction"), ".3f"),
             _harness.fmt(f.get("requested_speedup"), ".2f", "", "x"),
             spread(f.get("predicted_speedup"), ".2f"),
             spread(f.get("measured_speedup"), ".2f"),
             spread(f.get("relative_error"), "+.1f", 100, "%"),
             spread(f.get("prediction_error"), "+.1f", 100, "%"),
             spread(miss, "+.1f", 100, "%")])
    lines += [f"## {row}: "
              f"{'training step' if data['training'] else 'inference'}, "
              f"batch {data['batch_size']}, round_to {data['round_to']}, "
              f"{data['scores']} scores, {data['runs']} runs", "",
              *_harness.table(
                  ["model", "plan", "runs", "MACs", "speed-up asked",
                   "predicted", "measured", "error of time/dense",
                   "absolute error", "measured vs asked"], rows), ""]
  return "\n".join(lines)


def main(config):
  if config.summarize:
    results = summarize(config.summarize)
    if not results["rows"]:
      raise FileNotFoundError(f"No *_run<k>.json in {config.summarize}.")
    _harness.write_report(os.path.join(config.summarize, "summary.json"),
                          results, summary_markdown(results))
    return
  if config.training:
    present = {k: flags.FLAGS[k].present for k in ("models", "batch_size")}
    config = dataclasses.replace(
        config, timing="train_on_batch",
        models=config.models if present["models"] else ("resnet20",),
        batch_size=config.batch_size if present["batch_size"] else 128)
  if not all(0 < r < 1 for r in config.ratios):
    raise ValueError(f"--ratios must be in (0, 1), got {config.ratios}.")
  rng, entries = np.random.default_rng(config.seed), []
  for name in config.models:
    try:
      entries.append(_benchmark(config, name, rng))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("%s failed", name)
      entries.append({"model": name, "error": _harness.error_line(e)})
    keras.backend.clear_session()
  results = {"date": _harness.now(), "machine": _harness.machine(),
             "settings": dataclasses.asdict(config), "models": entries}
  _harness.write_report(
      os.path.join(config.output_dir, config.output_name + ".json"), results,
      markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
