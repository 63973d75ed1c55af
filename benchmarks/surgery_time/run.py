"""How long keras_epi's surgery takes, against building the model.

  python -m benchmarks.surgery_time.run           # results/, ~3-5 min
  python -m benchmarks.surgery_time.run --quick   # to a scratch directory
"""

import dataclasses
import gc
import os
import time

import keras
import numpy as np

from benchmarks import _harness
import keras_epi
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  models: tuple = ("ResNet50", "MobileNetV2", "ConvNeXtTiny")
  rounds: int = 7
  groups_calls: int = 15
  ratio: float = 0.5
  input_size: int = 224
  seed: int = 0
  output_dir: str = "benchmarks/surgery_time/results"
  quick: bool = _harness.flag(False, "Smoke run: MobileNetV2 at 96 px, to a "
                              "scratch directory.")

_QUICK = {"models": ("MobileNetV2",), "rounds": 2, "groups_calls": 3,
          "input_size": 96, "output_dir": _harness.scratch("surgery_time")}


class _Monitor(timing.CpuMonitor):
  """Collects garbage before each measurement; keeps each one's foreign
  load and this process's CPU seconds, in the order measured."""

  def __init__(self):
    super().__init__()
    self.loads, self.cpu_seconds = [], []

  def snapshot(self):
    gc.collect()
    return super().snapshot(), time.process_time()

  def foreign_load(self, snapshot):
    self.cpu_seconds.append(time.process_time() - snapshot[1])
    self.loads.append(super().foreign_load(snapshot[0]))
    return self.loads[-1]


def _alternately(calls, rounds):
  """Single calls timed alternately: per name, seconds, CPU seconds and
  foreign loads."""
  calls = {n: lambda f=f: (f(), None)[1] for n, f in calls.items()}
  monitor = _Monitor()
  result = timing.time_alternately(calls, rounds=rounds, warmup=1,
                                   num_calls=1, monitor=monitor)
  names = [n for order in result["order"] for n in order]
  return result["seconds"], *({n: [v for m, v in zip(names, values) if m == n]
                               for n in calls}
                              for values in (monitor.cpu_seconds,
                                             monitor.loads))


def _benchmark(config, name):
  shape = (config.input_size,) * 2 + (3,)
  build = getattr(keras.applications, name)
  keras.utils.set_random_seed(config.seed)
  model = build(weights=None, input_shape=shape)
  groups = keras_epi.channel_groups(model)
  keep = keras_epi.select_channels(
      model, keras_epi.magnitude_importance(model, groups),
      ratio=config.ratio, budget="neurons")
  times, cpu, loads = _alternately(
      {"build": lambda: build(weights=None, input_shape=shape),
       "prune_model": lambda: keras_epi.prune_model(model, keep)},
      config.rounds)
  groups_times, _, groups_loads = _alternately(
      {"channel_groups": lambda: keras_epi.channel_groups(model)},
      config.groups_calls)
  ratios = [p / b for p, b in zip(times["prune_model"], times["build"])]
  cpu_ratios = [p / b for p, b in zip(cpu["prune_model"], cpu["build"])]
  return {
      "model": name, "input_shape": list(shape), "groups": len(groups),
      "layers": len(model.layers), "params": int(model.count_params()),
      "plan": {"ratio": config.ratio, "budget": "neurons",
               "importance": "magnitude",
               "kept_channels": int(sum(len(k) for k in keep.values())),
               "macs_fraction": (keras_epi.count_macs(model, keep) /
                                 keras_epi.count_macs(model))},
      **{f"{k}_s": _harness.spread(times[k]) for k in times},
      "paired_ratio": _harness.spread(ratios),
      "ratio_of_medians": float(np.median(times["prune_model"]) /
                                np.median(times["build"])),
      "channel_groups_s": _harness.spread(groups_times["channel_groups"]),
      "cpu_paired_ratio": _harness.spread(cpu_ratios),
      **{f"{k}_cpu_s": _harness.spread(cpu[k]) for k in cpu},
      "raw": {**{f"{k}_s": v for k, v in times.items()},
              "paired_ratio": ratios, "cpu_s": cpu,
              "cpu_paired_ratio": cpu_ratios,
              "channel_groups_s": groups_times["channel_groups"],
              "foreign_load": dict(loads, **groups_loads)}}


def _range(d, n=2, unit=""):
  return f"{d['median']:.{n}f}{unit} [{d['min']:.{n}f}-{d['max']:.{n}f}]"


def markdown(results):
  """The report of `results` (as written by `main`)."""
  rows = [[r["model"], f"error: {r['error']}"] if "error" in r else [
      r["model"], r["groups"], f"{r['plan']['macs_fraction']:.3f}",
      _range(r["build_s"], unit=" s"), _range(r["prune_model_s"], unit=" s"),
      "**{median:.2f}** [{min:.2f}-{max:.2f}]".format(**r["paired_ratio"]),
      f"{r['ratio_of_medians']:.2f}", _range(r["cpu_paired_ratio"]),
      _range(r["channel_groups_s"], 3, " s")] for r in results["models"]]
  loads = [x for r in results["models"] if "raw" in r
           for v in r["raw"]["foreign_load"].values() for x in v
           if x is not None]
  return "\n".join([
      "# Surgery time", "", _harness.machine_line(results), "",
      "Medians [min-max]; what is timed: benchmarks/surgery_time/README.md.",
      "", *_harness.table(
          ["model", "groups", "MACs at plan", "build", "prune_model",
           "prune / build (paired)", "ratio of medians",
           "CPU-time ratio (paired)", "channel_groups"], rows),
      *(["", f"Foreign CPU load during the timed calls: median "
         f"{np.median(loads):.0%}, max {max(loads):.0%}."] if loads else [])
  ]) + "\n"


def main(config):
  rows = []
  for name in config.models:
    try:
      rows.append(_benchmark(config, name))
    except Exception as e:  # pylint: disable=broad-except
      rows.append({"model": name, "error": _harness.error_line(e)})
    keras.backend.clear_session()
  results = {"date": _harness.now(), "machine": _harness.machine(),
             "setup": dataclasses.asdict(config), "models": rows}
  _harness.write_report(os.path.join(config.output_dir, "surgery_time.json"),
                        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
