"""Does a model pruned to half its MACs run twice as fast? Dense vs pruned
keras.applications models on CPU, each of --backends in its own worker
process (TF_ENABLE_ONEDNN_OPTS is read when TensorFlow is imported).

  python -m benchmarks.inference_speed.run           # results/, ~13 min
  python -m benchmarks.inference_speed.run --quick   # to a scratch directory
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from benchmarks.inference_speed import breakdown
import keras_epi
from keras_epi import timing

_BACKEND_ENV = {"eigen": "0", "onednn": "1"}
_GRID = 1000  # keep fractions k / _GRID, k = 1 .. _GRID
_flag = _harness.flag


@dataclasses.dataclass(frozen=True)
class Config:
  models: tuple = _flag(("ResNet50", "MobileNetV2"),
                        "keras.applications builders (weights=None).")
  input_size: int = 224
  classes: int = 1000
  target_macs_ratio: float = 0.5
  macs_tolerance: float = 0.02
  round_to: tuple = _flag((1, 8, 16, 32), "A pruned model per value: kept "
                          "widths are multiples of it.")
  min_width: int = _flag(0, "Groups of at most this many channels stay "
                         "whole, none is cut below it (0: off).")
  keep_residual: bool = _flag(False, "Residual streams stay whole.")
  fold_batchnorm: bool = _flag(False, "Time keras_epi.fold_batchnorm of "
                               "every model.")
  importance: str = "magnitude"
  batch_sizes: tuple = (1, 8)
  repeats: int = 7
  max_rounds: int = 12
  max_foreign_load: float = 0.2
  min_quiet_rounds: int = 5
  max_wait_seconds: float = _flag(300.0, "Before each worker, wait up to "
                                  "this long for a quiet window.")
  quiet_window_seconds: float = 10.0
  seconds_per_measurement: float = 1.0
  warmup_batches: int = 3
  breakdown: bool = _flag(True, "Also time every MAC layer alone.")
  breakdown_round_to: tuple = (1, 8)
  breakdown_repeats: int = 3
  breakdown_seconds: float = 0.01
  breakdown_probe_iterations: int = 16
  breakdown_max_iterations: int = 200
  worst_layers: int = 5
  backends: tuple = _flag(("eigen", "onednn"), "Worker processes: eigen "
                          "(TF_ENABLE_ONEDNN_OPTS=0) or onednn (=1).")
  intra_op_threads: int = _flag(0, "Intra-op threads; 0: TensorFlow's.")
  inter_op_threads: int = _flag(0, "Inter-op threads; 0: TensorFlow's.")
  seed: int = 0
  output_dir: str = _flag("benchmarks/inference_speed/results",
                          "Where the JSON and markdown go.")
  output_name: str = _flag("inference_speed", "The result files' name.")
  worker: str = _flag(None, "Internal: measure --backends[0] in this "
                      "process, write the results to this JSON file.")
  quick: bool = _flag(False, "Smoke run: MobileNetV2, round_to 8, batch 1, "
                      "short rounds, to a scratch directory.")


_QUICK = {"models": ("MobileNetV2",), "round_to": (8,),
          "breakdown_round_to": (8,), "batch_sizes": (1,), "repeats": 3,
          "max_rounds": 3, "min_quiet_rounds": 2, "max_wait_seconds": 0.0,
          "seconds_per_measurement": 0.05, "warmup_batches": 1,
          "breakdown_repeats": 1, "breakdown_seconds": 0.0,
          "output_dir": _harness.scratch("inference_speed")}


def search_plan(config, model, scores, round_to):
  """(keep fraction, plan, MACs): of the plans `keras_epi.uniform_plan(model,
  k / 1000)` (with --keep_residual, --min_width), the one whose MAC ratio is
  nearest the target, at the smallest such k (bisection: the ratio rises
  with k)."""
  dense = keras_epi.count_macs(model)
  sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}

  @functools.cache
  def plan(k):
    keep = keras_epi.uniform_plan(model, k / _GRID, scores=scores,
                                  round_to=round_to,
                                  keep_residual=config.keep_residual)
    for name, size in sizes.items() if config.min_width else ():
      if size <= config.min_width:
        keep.pop(name, None)
      elif name in keep and len(keep[name]) < config.min_width:
        keep[name] = np.sort(np.argsort(-scores[name], kind="stable")
                             [:config.min_width])
    return keep, keras_epi.count_macs(model, keep)

  def ratio(k):
    return plan(k)[1] / dense

  def first(value):  # the smallest k whose ratio is >= value
    low, high = 1, _GRID
    while low < high:
      mid = (low + high) // 2
      low, high = (low, mid) if ratio(mid) >= value else (mid + 1, high)
    return low

  target = config.target_macs_ratio
  k = first(target)
  if k > 1 and target - ratio(k - 1) <= ratio(k) - target:
    k = first(ratio(k - 1))
  return k / _GRID, *plan(k)


def _variants(config, name):
  """The groups, and the dense model then one pruned model per round_to."""
  keras.utils.set_random_seed(config.seed)
  dense = getattr(keras.applications, name)(
      weights=None, input_shape=(config.input_size, config.input_size, 3),
      classes=config.classes)
  groups = keras_epi.channel_groups(dense)
  scores = keras_epi.magnitude_importance(dense, groups)
  variants = [dict(label="dense", model=dense, round_to=0)]
  for round_to in config.round_to:
    fraction, keep, macs = search_plan(config, dense, scores, round_to)
    variants.append(dict(
        label=f"round_to={round_to}", model=keras_epi.prune_model(dense, keep),
        round_to=round_to, keep_fraction=fraction, plan_macs=macs,
        kept={g.name: len(keep.get(g.name, range(g.size))) for g in groups}))
  for v in variants:
    v.update(macs=keras_epi.count_macs(v["model"]),
             params=v["model"].count_params(),
             layer_macs=keras_epi.count_macs(v["model"], per_layer=True))
    if v["macs"] != v.get("plan_macs", v["macs"]):
      raise AssertionError(f"{name} {v['label']}: count_macs gives "
                           f"{v['plan_macs']} for the plan, {v['macs']} for "
                           "the pruned model.")
    if config.fold_batchnorm:
      v["model"] = keras_epi.fold_batchnorm(v["model"])
  return groups, variants


def _wait_for_quiet(config, monitor):
  """Waits (at most max_wait_seconds) for a quiet_window_seconds window in
  which others used at most max_foreign_load of the CPUs; returns (seconds
  waited, foreign load of the last window)."""
  start = time.perf_counter()
  while config.max_wait_seconds > 0:
    snapshot = monitor.snapshot()
    time.sleep(config.quiet_window_seconds)
    load, waited = monitor.foreign_load(snapshot), time.perf_counter() - start
    if (load is None or load <= config.max_foreign_load or
        waited >= config.max_wait_seconds):
      return waited, load
  return 0.0, None


def _time_quiet(config, calls, monitor):
  """`timing.time_alternately` of `calls`, timing more rounds (up to
  max_rounds) until `repeats` were quiet. ``used``: the quiet rounds, or all
  when fewer than min_quiet_rounds were (``contended``)."""
  kwargs = dict(monitor=monitor, warmup=config.warmup_batches,
                seconds_per_measurement=config.seconds_per_measurement)
  result = timing.time_alternately(calls, rounds=config.repeats, **kwargs)
  kwargs.update(warmup=0, num_calls=result["num_calls"])
  while True:
    loads = result["foreign_load"]
    quiet = [i for i, load in enumerate(loads)
             if load is not None and load <= config.max_foreign_load]
    missing = min(config.repeats - len(quiet), config.max_rounds - len(loads))
    if missing <= 0 or None in loads:
      break
    more = timing.time_alternately(calls, rounds=missing, **kwargs)
    for key in ("order", "foreign_load"):
      result[key] += more[key]
    for name, seconds in more["seconds"].items():
      result["seconds"][name] += seconds
  contended = len(quiet) < config.min_quiet_rounds
  return dict(result, quiet_rounds=quiet, contended=contended,
              used=list(range(len(loads))) if contended else quiet)


def _benchmark_model(config, name, rng, monitor, loop_overhead):
  """Plans, prunes and times one model; its JSON-ready results."""
  groups, variants = _variants(config, name)
  dense = variants[0]
  pruned = [{
      "round_to": v["round_to"], "keep_fraction": v["keep_fraction"],
      "macs": v["macs"], "params": v["params"],
      "macs_ratio": v["macs"] / dense["macs"],
      "params_ratio": v["params"] / dense["params"],
      "ideal_speedup": dense["macs"] / v["macs"],
      "macs_within_tolerance": bool(abs(v["macs"] / dense["macs"] /
                                        config.target_macs_ratio - 1)
                                    <= config.macs_tolerance),
      "kept_per_group": v["kept"],
      "group_sizes": {g.name: g.size for g in groups},
      "batches": {}} for v in variants[1:]]
  chosen = [0] + [i for i, v in enumerate(variants)  # dense first
                  if i and v["round_to"] in config.breakdown_round_to]
  for batch_size in config.batch_sizes:
    x = tf.constant(rng.uniform(-1, 1, (batch_size, config.input_size,
                                        config.input_size, 3))
                    .astype("float32"))
    calls = {v["label"]: functools.partial(tf.function(
        lambda x, m=v["model"]: m(x, training=False), jit_compile=False), x)
             for v in variants}
    timed = _time_quiet(config, calls, monitor)
    used, dense_all = timed["used"], np.array(timed["seconds"]["dense"])
    d = 1e3 * float(np.median(dense_all[used]))
    rows = None
    if config.breakdown and len(chosen) > 1:
      snapshot = monitor.snapshot()
      rows = breakdown.layer_breakdown(config, [variants[i] for i in chosen],
                                       batch_size, rng, loop_overhead,
                                       monitor)
      breakdown_load = monitor.foreign_load(snapshot)
    for index, entry in enumerate(pruned, start=1):
      pruned_all = np.array(timed["seconds"][variants[index]["label"]])
      paired = float(np.median(dense_all[used] / pruned_all[used]))
      p = 1e3 * float(np.median(pruned_all[used]))
      batch = entry["batches"][str(batch_size)] = {
          "batches_per_measurement": timed["num_calls"],
          "rounds": len(dense_all), "quiet_rounds": timed["quiet_rounds"],
          "contended": timed["contended"], "rounds_used": len(used),
          "dense_ms": d, "pruned_ms": p,
          "speedup": paired, "speedup_of_medians": d / p,
          "efficiency": paired / entry["ideal_speedup"],
          "efficiency_of_medians": d / p / entry["ideal_speedup"],
          "dense_ms_all": (1e3 * dense_all).tolist(),
          "pruned_ms_all": (1e3 * pruned_all).tolist(),
          "foreign_load_all": timed["foreign_load"], "order": timed["order"]}
      if rows is not None and index in chosen:
        batch["breakdown"] = dict(breakdown.summarize(
            rows, chosen.index(index), (d / 1e3, p / 1e3),
            config.worst_layers), foreign_load=breakdown_load)
      logging.info("%s batch %d round_to %d: speed-up %.2f", name,
                   batch_size, entry["round_to"], paired)
  return {"model": name, "groups": len(groups),
          "dense": {"macs": dense["macs"], "params": dense["params"]},
          "pruned": pruned}


def _run_worker(config):
  """Measures `config.backends[0]` in this process."""
  backend = config.backends[0]
  if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != _BACKEND_ENV[backend]:
    raise ValueError(f"The {backend} worker needs TF_ENABLE_ONEDNN_OPTS="
                     f"{_BACKEND_ENV[backend]}.")
  threading = tf.config.threading
  if config.intra_op_threads:
    threading.set_intra_op_parallelism_threads(config.intra_op_threads)
  if config.inter_op_threads:
    threading.set_inter_op_parallelism_threads(config.inter_op_threads)
  rng, start = np.random.default_rng(config.seed), time.perf_counter()
  load_before, monitor = os.getloadavg(), timing.CpuMonitor()
  loop_overhead = breakdown.loop_overhead() if config.breakdown else 0.0
  models = [_benchmark_model(config, name, rng, monitor, loop_overhead)
            for name in config.models]
  return {"backend": backend,
          "TF_ENABLE_ONEDNN_OPTS": _BACKEND_ENV[backend],
          "intra_op_threads": threading.get_intra_op_parallelism_threads(),
          "inter_op_threads": threading.get_inter_op_parallelism_threads(),
          "load_average_before": load_before,
          "load_average_after": os.getloadavg(),
          "while_loop_overhead_us": 1e6 * loop_overhead,
          "seconds": time.perf_counter() - start, "models": models}


def _breakdown_cells(d):
  w = d["worst_layers"][0] if d["worst_layers"] else None
  mac, other = d["mac_layers"], d["other_ops"]
  return [f"{mac['dense_ms']:.1f} -> {mac['pruned_ms']:.1f}",
          f"{mac['efficiency']:.2f}", ", ".join(
              f"{k} {_harness.fmt(v and v['efficiency'], '.2f', 'n/a')}"
              for k, v in d["by_kind"].items()),
          f"{other['dense_ms']:.1f} -> {other['pruned_ms']:.1f}",
          f"{w['name']} {w['dense_c_in']}->{w['c_in']}/{w['dense_c_out']}->"
          f"{w['c_out']}: {w['efficiency']:.2f}" if w else ""]


def markdown(results):
  """The report of `results` (as written by `main`)."""
  lines = ["# Inference speed: dense vs pruned", "",
           _harness.machine_line(results) + " Plans, timing and columns: "
           "benchmarks/inference_speed/README.md.", ""]
  for worker in results["backends"]:
    entries = [(m["model"], e, batch, b) for m in worker["models"]
               for e in m["pruned"] for batch, b in e["batches"].items()]
    lines += [f"## Backend `{worker['backend']}` (TF_ENABLE_ONEDNN_OPTS="
              f"{worker['TF_ENABLE_ONEDNN_OPTS']})", "",
              "Load average when the worker started: " + ", ".join(
                  f"{x:.1f}" for x in worker["load_average_before"]) + ".", "",
              *_harness.table(
                  ["model", "round_to", "keep", "GMACs", "MAC ratio",
                   "Mparams", "batch", "rounds used", "dense ms", "pruned ms",
                   "speed-up", "of medians", "ideal", "efficiency"],
                  [[m, e["round_to"], f"{e['keep_fraction']:.3f}",
                    f"{e['macs'] / 1e9:.3f}", f"{e['macs_ratio']:.3f}",
                    f"{e['params'] / 1e6:.2f}", batch,
                    f"all {b['rounds']} (contended)" if b["contended"] else
                    f"{len(b['quiet_rounds'])} quiet of {b['rounds']}",
                    f"{b['dense_ms']:.1f}", f"{b['pruned_ms']:.1f}",
                    f"{b['speedup']:.2f}", f"{b['speedup_of_medians']:.2f}",
                    f"{e['ideal_speedup']:.2f}", f"**{b['efficiency']:.2f}**"]
                   for m, e, batch, b in entries]), ""]
    rows = [[m, e["round_to"], batch, *_breakdown_cells(b["breakdown"])]
            for m, e, batch, b in entries if "breakdown" in b]
    if rows:
      lines += ["Where the time goes: every MAC layer timed alone, dense -> "
                "pruned; other ops = the whole model less them.", "",
                *_harness.table(
                    ["model", "round_to", "batch", "MAC layers ms",
                     "MAC-layer eff.", "eff. by kind", "other ops ms",
                     "worst layer"], rows), ""]
  return "\n".join(lines)


def main(config):
  if config.worker:  # one backend, in a process started below
    _harness.write_report(config.worker, _run_worker(config))
    return
  if not set(config.backends) <= set(_BACKEND_ENV):
    raise ValueError(f"--backends must be among {sorted(_BACKEND_ENV)}.")
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  start, monitor = time.perf_counter(), timing.CpuMonitor()
  waits, workers = {}, []
  with tempfile.TemporaryDirectory() as tmp:
    for backend in config.backends:
      waits[backend] = _wait_for_quiet(config, monitor)
      path = os.path.join(tmp, backend + ".json")
      subprocess.run(
          [sys.executable, "-m", "benchmarks.inference_speed.run",
           *sys.argv[1:], f"--backends={backend}", f"--worker={path}"],
          cwd=root, check=True,
          env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=_BACKEND_ENV[backend]))
      with open(path) as f:
        workers.append(json.load(f))
  machine = _harness.machine()
  results = {
      "benchmark": "inference_speed", "date_utc": machine["date"],
      "config": dataclasses.asdict(config), "machine": machine,
      "backends": workers,
      "waited_for_quiet": {k: {"seconds": w, "foreign_load": l}
                           for k, (w, l) in waits.items()},
      "seconds": time.perf_counter() - start}
  _harness.write_report(
      os.path.join(config.output_dir, config.output_name + ".json"), results,
      markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
