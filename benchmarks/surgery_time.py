r"""How long keras_epi's surgery takes, against building the model.

For each model (keras.applications, weights=None, 224x224x3, 1000 classes):

(a) `keras_epi.prune_model(model, keep)` against building the model with
    `keras.applications.<Model>(weights=None)`. The plan is fixed:
    ``keep = select_channels(model, magnitude_importance(model, groups),
    ratio=0.5, budget="neurons")`` on the first build. In one process, after
    one warm-up round, every round builds a fresh model then prunes the
    planning model (`--rounds` rounds). Reported: the median and min-max of
    each, the median of the per-round ratio prune / build (the host's speed
    drifts within minutes, so paired ratios are steadier) and its min-max.
(b) `keras_epi.channel_groups(model)` alone: median (and min-max) of
    `--groups_calls` calls after one warm-up call.

The share of the machine's CPU used by other processes during each timed
call (from /proc/stat) is recorded in the JSON, so contended rounds can be
spotted; no round is dropped.

  python -m benchmarks.surgery_time                       # ~3-5 min, 2 cores
  python -m benchmarks.surgery_time --models=ResNet50 --rounds=3 \
      --output_dir=/tmp/surgery
"""

import gc
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np

from benchmarks import common
import keras_epi

_MODELS = flags.DEFINE_list(
    "models", ["ResNet50", "MobileNetV2", "ConvNeXtTiny"],
    "keras.applications builders to time.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 7, "Timed build/prune rounds after the warm-up round.")
_GROUPS_CALLS = flags.DEFINE_integer(
    "groups_calls", 15, "Timed channel_groups calls after one warm-up call.")
_RATIO = flags.DEFINE_float("ratio", 0.5,
                            "Neuron ratio removed by the fixed plan.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 224, "Input height/width.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "results"),
    "Where surgery_time.json and surgery_time.md are written.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")


class _ForeignLoad(common.CpuMonitor):
  """`common.CpuMonitor` with one running measurement: the foreign load
  since `start()`."""

  def start(self):
    self._start = self.snapshot()

  def load(self):
    return self.foreign_load(self._start)


def _timed(fn, monitor):
  """(wall seconds, foreign load, this process's CPU seconds, result)."""
  gc.collect()
  monitor.start()
  start, cpu = time.perf_counter(), time.process_time()
  result = fn()
  seconds = time.perf_counter() - start
  return seconds, monitor.load(), time.process_time() - cpu, result


def _summary(values):
  values = np.asarray(values, dtype=np.float64)
  return {"median": float(np.median(values)), "min": float(values.min()),
          "max": float(values.max())}


def _benchmark(name, monitor):
  builder = getattr(keras.applications, name)
  shape = (_INPUT_SIZE.value, _INPUT_SIZE.value, 3)

  def build():
    return builder(weights=None, input_shape=shape)

  keras.utils.set_random_seed(_SEED.value)
  model = build()
  groups = keras_epi.channel_groups(model)
  keep = keras_epi.select_channels(
      model, keras_epi.magnitude_importance(model, groups),
      ratio=_RATIO.value, budget="neurons")
  dense_macs = keras_epi.count_macs(model)
  pruned = keras_epi.prune_model(model, keep)  # warm-up round
  pruned_macs = keras_epi.count_macs(pruned)
  del pruned
  build()
  keras_epi.channel_groups(model)

  times = {"build": [], "prune_model": []}
  loads = {"build": [], "prune_model": []}
  cpu = {"build": [], "prune_model": []}
  for i in range(_ROUNDS.value):
    for step, fn in (("build", build),
                     ("prune_model", lambda: keras_epi.prune_model(model,
                                                                   keep))):
      seconds, load, cpu_seconds, result = _timed(fn, monitor)
      del result
      times[step].append(seconds)
      loads[step].append(load)
      cpu[step].append(cpu_seconds)
    logging.info("%s round %d: build %.2f s, prune_model %.2f s", name, i,
                 times["build"][-1], times["prune_model"][-1])
  groups_times, groups_loads = [], []
  for _ in range(_GROUPS_CALLS.value):
    seconds, load, _, _ = _timed(lambda: keras_epi.channel_groups(model),
                              monitor)
    groups_times.append(seconds)
    groups_loads.append(load)
  ratios = [p / b for p, b in zip(times["prune_model"], times["build"])]
  cpu_ratios = [p / b for p, b in zip(cpu["prune_model"], cpu["build"])]
  result = {
      "model": name, "input_shape": list(shape),
      "layers": len(model.layers), "params": int(model.count_params()),
      "groups": len(groups),
      "plan": {"ratio": _RATIO.value, "budget": "neurons",
               "importance": "magnitude",
               "kept_channels": int(sum(len(k) for k in keep.values())),
               "macs_fraction": pruned_macs / dense_macs},
      "build_s": _summary(times["build"]),
      "prune_model_s": _summary(times["prune_model"]),
      "paired_ratio": _summary(ratios),
      "ratio_of_medians": float(np.median(times["prune_model"]) /
                                np.median(times["build"])),
      "channel_groups_s": _summary(groups_times),
      "cpu_paired_ratio": _summary(cpu_ratios),
      "build_cpu_s": _summary(cpu["build"]),
      "prune_model_cpu_s": _summary(cpu["prune_model"]),
      "raw": {"build_s": times["build"],
              "prune_model_s": times["prune_model"],
              "paired_ratio": ratios, "channel_groups_s": groups_times,
              "cpu_s": cpu, "cpu_paired_ratio": cpu_ratios,
              "foreign_load": {**loads, "channel_groups": groups_loads}},
  }
  logging.info("%s: prune %.2f s / build %.2f s, paired ratio %.2f; "
               "channel_groups %.3f s", name, result["prune_model_s"]["median"],
               result["build_s"]["median"], result["paired_ratio"]["median"],
               result["channel_groups_s"]["median"])
  return result


def _markdown(results):
  m = results["machine"]
  lines = [
      "# Surgery time",
      "",
      f"Date {results['date']}; keras {m.get('keras')}, tensorflow "
      f"{m['tensorflow']}, keras_epi {m.get('keras_epi')} (git "
      f"{(m.get('git_commit') or 'n/a')[:7]}, working tree may differ); "
      f"{m.get('usable_cpus')} CPUs ({m.get('cpu_model')}).",
      "",
      "`python -m benchmarks.surgery_time` (see its docstring). "
      "keras.applications models, weights=None, "
      f"{results['setup']['input_size']}x{results['setup']['input_size']}x3, "
      "1000 classes. Plan: `select_channels(model, magnitude_importance(model,"
      f" groups), ratio={results['setup']['ratio']}, budget=\"neurons\")`. "
      f"{results['setup']['rounds']} alternated build / prune_model rounds "
      "after a warm-up round; channel_groups: "
      f"{results['setup']['groups_calls']} calls after a warm-up call. "
      "Medians, [min-max].",
      "",
      "| model | groups | MACs at plan | build | prune_model | prune / build "
      "(paired) | ratio of medians | CPU-time ratio (paired) | "
      "channel_groups |",
      "|---|---|---|---|---|---|---|---|---|",
  ]

  def s(d, digits=2):
    return (f"{d['median']:.{digits}f} s [{d['min']:.{digits}f}-"
            f"{d['max']:.{digits}f}]")

  for r in results["models"]:
    if "error" in r:
      lines.append(f"| {r['model']} | error: {r['error']} | | | | | | | |")
      continue
    p, c = r["paired_ratio"], r["cpu_paired_ratio"]
    lines.append(
        f"| {r['model']} | {r['groups']} | {r['plan']['macs_fraction']:.3f} "
        f"| {s(r['build_s'])} | {s(r['prune_model_s'])} | "
        f"**{p['median']:.2f}** [{p['min']:.2f}-{p['max']:.2f}] | "
        f"{r['ratio_of_medians']:.2f} | {c['median']:.2f} "
        f"[{c['min']:.2f}-{c['max']:.2f}] | {s(r['channel_groups_s'], 3)} |")
  loads = [x for r in results["models"] if "raw" in r
           for v in r["raw"]["foreign_load"].values() for x in v
           if x is not None]
  if loads:
    lines += ["", f"Foreign CPU load during the timed calls (other "
              f"processes, share of all CPUs): median {np.median(loads):.0%}, "
              f"max {max(loads):.0%}. The CPU-time ratio (this process's "
              "CPU seconds, all threads) is less sensitive to other "
              "processes than wall time."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  monitor = _ForeignLoad()
  rows = []
  for name in _MODELS.value:
    try:
      rows.append(_benchmark(name, monitor))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("%s failed", name)
      rows.append({"model": name,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
    keras.backend.clear_session()
    gc.collect()
  results = {
      "date": time.strftime("%Y-%m-%d %H:%M"),
      "machine": common.machine_info(),
      "setup": {"rounds": _ROUNDS.value, "groups_calls": _GROUPS_CALLS.value,
                "ratio": _RATIO.value, "input_size": _INPUT_SIZE.value,
                "seed": _SEED.value},
      "models": rows,
  }
  common.write_results(_OUTPUT_DIR.value, "surgery_time", results,
                       _markdown(results))


if __name__ == "__main__":
  app.run(main)
