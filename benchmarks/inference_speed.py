r"""Inference speed of dense vs pruned keras.applications models on CPU.

Does a model pruned to half its multiply-accumulates (MACs) run twice as fast?
For each model (ResNet50, MobileNetV2; weights=None, 224x224x3, 1000 classes)
and each `--round_to`, this benchmark

1. prunes every channel group to the same keep-fraction `f`, each group's
   kept count rounded to the nearest multiple of `round_to` (at least
   `round_to`, at most the group size), with `f` chosen on a 0.001 grid so
   that the plan's MAC ratio (`keras_epi.budget.planned_macs`, computed from
   the plan without building the model) is nearest `--target_macs_ratio`.
   Which channels are kept (`--importance`): `magnitude` keeps the highest
   `keras_epi.magnitude_importance` of each group, `first` channels
   `0..n-1` (with weights=None the choice changes no shape, hence no speed);
2. times a `tf.function(jit_compile=False)` forward pass
   (`model(x, training=False)`) of the dense and every pruned model in one
   process with `benchmarks.harness.time_alternately` (rounds in rotating
   order). It reports
     speed-up   = median over rounds of dense time / pruned time (same round)
     efficiency = speed-up / (dense MACs / pruned MACs)
   and the median times, over quiet rounds (`common.CpuMonitor`);
3. for the `--breakdown_round_to` models, times every MAC layer (Conv2D,
   DepthwiseConv2D, Dense) alone, dense vs pruned, to split the time into MAC
   layers and everything else, by kind (1x1, 3x3, depthwise, ...) and by
   whether the changed widths are multiples of 8 (the AVX2 float lane count);
4. times `keras_epi.prune_model` on ResNet50 against building
   `keras.applications.ResNet50(weights=None)`.

`TF_ENABLE_ONEDNN_OPTS` must be set before TensorFlow is imported, so each of
`--backends` is measured in its own worker process (`eigen`: =0, `onednn`:
=1), one after the other.

Usage, from the repository root:
  python -m benchmarks.inference_speed            # writes benchmarks/results/
  python -m benchmarks.inference_speed --quick    # smoke run, writes to /tmp

Writes `<output_dir>/<output_name>.json` (everything, including raw times) and
`<output_name>.md` (tables). Text below the line `<!-- notes -->` of an
existing `.md` is kept, so hand-written findings survive a re-run.
"""

import dataclasses
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
from benchmarks import harness
import keras_epi
from keras_epi import budget
from keras_epi import graph
from keras_epi import plan as plan_lib

flags.DEFINE_list("models", ["ResNet50", "MobileNetV2"],
                  "keras.applications builders to benchmark.")
flags.DEFINE_integer("input_size", 224, "Side of the square RGB input.")
flags.DEFINE_integer("classes", 1000, "Classifier outputs.")
flags.DEFINE_float("target_macs_ratio", 0.5,
                   "Wanted count_macs(pruned) / count_macs(dense).")
flags.DEFINE_float("macs_tolerance", 0.02,
                   "Relative deviation from the target that logs a warning.")
flags.DEFINE_list("round_to", ["1", "8", "16", "32"],
                  "One pruned model per value: kept channels per group are "
                  "rounded to a multiple of it.")
flags.DEFINE_integer(
    "min_width", 0, "Groups of at most this many channels stay whole and no "
    "group is cut below it (0: off); the search cuts wide groups deeper.")
flags.DEFINE_bool(
    "keep_residual", False, "Residual streams (ChannelGroup.residual) stay "
    "whole; the other groups are cut deeper.")
flags.DEFINE_bool(
    "fold_batchnorm", False, "Time keras_epi.fold_batchnorm of the dense and "
    "every pruned model (MACs are unchanged by folding).")
flags.DEFINE_enum(
    "importance", "magnitude", ["magnitude", "first"], "Channels kept: "
    "highest keras_epi.magnitude_importance, or the first n.")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
flags.DEFINE_integer("repeats", 7, "Quiet timing rounds wanted (medians).")
flags.DEFINE_integer("max_rounds", 12, "Most timing rounds per batch size.")
flags.DEFINE_float(
    "max_foreign_load", 0.2, "A round is quiet if other processes and steal "
    "time used at most this share of the CPUs in each of its measurements.")
flags.DEFINE_integer(
    "min_quiet_rounds", 5, "Medians use the quiet rounds if at least this "
    "many, else all rounds (marked contended).")
flags.DEFINE_float(
    "max_wait_seconds", 300, "Before each worker, "
    "wait up to this long for a quiet --quiet_window_seconds window.")
flags.DEFINE_float("quiet_window_seconds", 10, "The quiet window waited for.")
flags.DEFINE_float("seconds_per_measurement", 1.0,
                   "Batches per measurement: a dense one lasts about this.")
flags.DEFINE_integer("warmup_batches", 3, "Untimed batches per model.")
flags.DEFINE_bool("breakdown", True,
                  "Also time every MAC layer alone (dense vs pruned).")
flags.DEFINE_list("breakdown_round_to", ["1", "8"],
                  "round_to values whose pruned models get the breakdown.")
flags.DEFINE_integer("breakdown_repeats", 3, "Rounds per layer in it.")
flags.DEFINE_float("breakdown_seconds", 0.01,
                   "Loop length per layer: a dense measurement lasts this.")
flags.DEFINE_integer("breakdown_probe_iterations", 16,
                     "Loop iterations that estimate a dense layer's time.")
flags.DEFINE_integer("breakdown_max_iterations", 200,
                     "Most loop iterations per layer.")
flags.DEFINE_integer("worst_layers", 5,
                     "Least efficient layers listed per model and batch.")
flags.DEFINE_list(
    "backends", ["eigen", "onednn"], "One worker process each: eigen "
    "(TF_ENABLE_ONEDNN_OPTS=0) or onednn (TF_ENABLE_ONEDNN_OPTS=1).")
flags.DEFINE_integer("intra_op_threads", 0, "Intra-op threads; 0: TF's.")
flags.DEFINE_integer("inter_op_threads", 0, "Inter-op threads; 0: TF's.")
flags.DEFINE_integer("seed", 0, "Seed of weights and inputs.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results",
    "Where the JSON and markdown go (--quick: a temporary directory).")
flags.DEFINE_string("output_name", "inference_speed", "Result files' name.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Smoke run: round_to 8, batch 1, short rounds.")
_WORKER_OUTPUT = flags.DEFINE_string(
    "worker_output", "", "Internal: run as the worker of the one backend in "
    "--backends and write its JSON here.")

_BACKEND_ENV = {"eigen": "0", "onednn": "1"}
_NOTES_MARKER = "<!-- notes -->"

# The settings of a run, in the order of the JSON's "config"; each is a flag.
_SETTINGS = (
    "models", "input_size", "classes", "target_macs_ratio", "macs_tolerance",
    "round_to", "min_width", "keep_residual", "fold_batchnorm", "importance",
    "batch_sizes", "repeats", "max_rounds", "max_foreign_load",
    "min_quiet_rounds", "max_wait_seconds", "quiet_window_seconds",
    "seconds_per_measurement", "warmup_batches", "breakdown",
    "breakdown_round_to", "breakdown_repeats", "breakdown_seconds",
    "breakdown_probe_iterations", "breakdown_max_iterations", "worst_layers",
    "backends", "intra_op_threads", "inter_op_threads", "seed", "output_dir",
    "output_name", "quick")
_INT_LISTS = ("round_to", "batch_sizes", "breakdown_round_to")


def _config_from_flags():
  """The settings as a namespace (flags with --quick applied), checked."""
  values = {name: flags.FLAGS[name].value for name in _SETTINGS}
  for name in _INT_LISTS:
    values[name] = [int(v) for v in values[name]]
  if _QUICK.value and not _WORKER_OUTPUT.value:
    values.update(round_to=[8], breakdown_round_to=[8], batch_sizes=[1],
                  repeats=3, max_rounds=3, min_quiet_rounds=2,
                  max_wait_seconds=0, seconds_per_measurement=0.05,
                  warmup_batches=1, breakdown_repeats=1, breakdown_seconds=0.0)
    if not _OUTPUT_DIR.present:
      values["output_dir"] = os.path.join(tempfile.gettempdir(),
                                          "keras_epi_benchmarks")
  config = types.SimpleNamespace(**values)
  for model in config.models:
    if not hasattr(keras.applications, model):
      raise ValueError(f"--models: unknown keras.applications model "
                       f"{model!r}.")
  for name in _INT_LISTS[:2]:
    if not values[name] or min(values[name]) < 1:
      raise ValueError(f"--{name} must be positive integers, received "
                       f"{values[name]}.")
  for name in ("repeats", "warmup_batches", "breakdown_repeats",
               "input_size", "classes", "min_quiet_rounds",
               "breakdown_probe_iterations", "breakdown_max_iterations"):
    if values[name] < 1:
      raise ValueError(f"--{name} must be >= 1, received {values[name]}.")
  for rounds, repeats in (("max_rounds", "repeats"),):
    if values[rounds] < values[repeats]:
      raise ValueError(f"--{rounds} ({values[rounds]}) must be >= "
                       f"--{repeats} ({values[repeats]}).")
  if not 0 < config.target_macs_ratio <= 1:
    raise ValueError("--target_macs_ratio must be in (0, 1], received "
                     f"{config.target_macs_ratio}.")
  if not config.backends or any(b not in _BACKEND_ENV
                                for b in config.backends):
    raise ValueError(f"--backends must be among {sorted(_BACKEND_ENV)}, "
                     f"received {config.backends}.")
  return config


# -- pruning plans ------------------------------------------------------------


def uniform_counts(sizes, residual, fraction, round_to, min_width=0,
                   keep_residual=False):
  """Kept count per group: the nearest multiple of `round_to` of
  `fraction * size`, at least `round_to` and `min_width`, at most the group
  size; with `keep_residual`, the `residual` groups keep every channel."""
  multiples = np.floor(fraction * sizes / round_to + 0.5)
  counts = np.minimum(np.maximum(multiples, 1) * round_to, sizes)
  counts = np.maximum(counts, np.minimum(sizes, min_width))
  if keep_residual:
    counts = np.where(residual, sizes, counts)
  return counts.astype(int)


def search_plan(analysis, target_ratio, round_to, *, min_width=0,
                keep_residual=False, step=1e-3):
  """The keep-fraction (on a grid of `step`) whose MAC ratio is nearest
  `target_ratio`; MACs from `keras_epi.budget.planned_macs`.

  Args:
    analysis: `keras_epi.graph.analyze(model)`.
    target_ratio: Wanted pruned MACs / dense MACs.
    round_to, min_width, keep_residual: As in `uniform_counts`.
    step: The grid of fractions, `step, 2 * step, ..., 1`.

  Returns:
    (fraction, kept count per group of `analysis.groups`, planned MACs).
  """
  groups = analysis.groups
  sizes = np.array([g.size for g in groups])
  residual = np.array([g.residual for g in groups], dtype=bool)
  dense = budget.planned_macs(analysis, {})
  macs = {}  # many fractions round to the same counts
  best = None
  for fraction in np.arange(step, 1 + step / 2, step):
    counts = uniform_counts(sizes, residual, fraction, round_to, min_width,
                            keep_residual)
    key = counts.tobytes()
    if key not in macs:
      macs[key] = budget.planned_macs(
          analysis, {g.name: np.arange(c) for g, c in zip(groups, counts)
                     if c < g.size})
    ratio = macs[key] / dense
    if best is None or abs(ratio - target_ratio) < abs(best[2] -
                                                      target_ratio):
      best = (float(fraction), counts, ratio, macs[key])
  return best[0], best[1], best[3]


def _scores(model, groups, importance):
  if importance == "magnitude":
    return keras_epi.magnitude_importance(model, groups)
  return {g.name: -np.arange(g.size, dtype=np.float64) for g in groups}


def keep_plan(groups, counts, scores):
  """Indices to keep per group: the `counts[i]` best-scored of group i."""
  return {g.name: np.sort(np.argsort(-scores[g.name], kind="stable")[:count])
          for g, count in zip(groups, counts) if count < g.size}


def _build_model(config, name):
  return getattr(keras.applications, name)(
      weights=None, input_shape=(config.input_size, config.input_size, 3),
      classes=config.classes)


@dataclasses.dataclass
class Variant:
  """A dense or pruned model and what it costs."""
  label: str
  model: keras.Model
  macs: int
  params: int
  round_to: int = 0
  keep_fraction: float = 1.0
  counts: tuple = ()
  layer_macs: dict = dataclasses.field(default_factory=dict)


def _variant(label, model, **kwargs):
  analysis = graph.analyze(model, strict=False)
  layer_macs = {path: plan_lib.call_macs(call)
                for path, call in analysis.calls.items()}
  return Variant(label=label, model=model, macs=keras_epi.count_macs(model),
                 params=model.count_params(), layer_macs=layer_macs, **kwargs)


def _variants(config, name):
  """The dense model, then one pruned model per round_to."""
  keras.utils.set_random_seed(config.seed)
  dense = _build_model(config, name)
  analysis = graph.analyze(dense)
  scores = _scores(dense, analysis.groups, config.importance)
  variants = [_variant("dense", dense)]
  for round_to in config.round_to:
    fraction, counts, planned = search_plan(
        analysis, config.target_macs_ratio, round_to,
        min_width=config.min_width, keep_residual=config.keep_residual)
    start = time.perf_counter()
    pruned = keras_epi.prune_model(dense, keep_plan(analysis.groups, counts,
                                                    scores))
    logging.info("%s round_to=%d: keep fraction %.3f, pruned in %.1f s",
                 name, round_to, fraction, time.perf_counter() - start)
    variant = _variant(f"round_to={round_to}", pruned, round_to=round_to,
                       keep_fraction=fraction,
                       counts=tuple(int(c) for c in counts))
    if variant.macs != planned:
      raise AssertionError(f"{name} round_to={round_to}: planned {planned} "
                           f"MACs, keras_epi.count_macs says {variant.macs}.")
    ratio = variant.macs / variants[0].macs
    if abs(ratio / config.target_macs_ratio - 1) > config.macs_tolerance:
      logging.warning("%s round_to=%d: MAC ratio %.4f is not within %.0f%% "
                      "of %.3f.", name, round_to, ratio,
                      100 * config.macs_tolerance, config.target_macs_ratio)
    variants.append(variant)
  if config.fold_batchnorm:
    for variant in variants:
      variant.model = keras_epi.fold_batchnorm(variant.model)
  return analysis.groups, variants


# -- timing -------------------------------------------------------------------


def _wait_for_quiet(config, monitor):
  """Waits until other processes leave the CPUs alone for a window.

  Returns:
    (seconds waited, foreign load of the last window).
  """
  if config.max_wait_seconds <= 0:
    return 0.0, None
  start = time.perf_counter()
  while True:
    snapshot = monitor.snapshot()
    time.sleep(config.quiet_window_seconds)
    load = monitor.foreign_load(snapshot)
    waited = time.perf_counter() - start
    if load is None or load <= config.max_foreign_load or (
        waited >= config.max_wait_seconds):
      logging.info("Waited %.0f s for a quiet machine; foreign load %s.",
                   waited, load)
      return waited, load


def _time_quiet(calls, config, repeats, max_rounds, min_quiet, monitor,
                **kwargs):
  """`harness.time_alternately` until `repeats` rounds were quiet.

  A round is quiet when the foreign load of each of its measurements was at
  most `config.max_foreign_load`. After the first `repeats` rounds, the
  missing number of rounds is timed again (same calls per measurement, no
  warm-up) until `repeats` are quiet or `max_rounds` were run. The medians
  use the quiet rounds if there are at least `min_quiet`, else all rounds
  (`contended`).

  Returns:
    ``num_calls``, ``order``, ``seconds`` and ``foreign_load`` of the
    harness, over all rounds, and ``quiet_rounds``, ``contended`` and
    ``used`` (the indices of the rounds the medians use).
  """
  timing = harness.time_alternately(calls, rounds=repeats, monitor=monitor,
                                    **kwargs)
  kwargs.update(warmup=0, num_calls=timing["num_calls"])
  while True:
    loads = timing["foreign_load"]
    quiet = [i for i, load in enumerate(loads)
             if load is not None and load <= config.max_foreign_load]
    missing = min(repeats - len(quiet), max_rounds - len(loads))
    if missing <= 0 or None in loads:
      break
    more = harness.time_alternately(calls, rounds=missing, monitor=monitor,
                                    **kwargs)
    timing["order"] += more["order"]
    timing["foreign_load"] += more["foreign_load"]
    for name, seconds in more["seconds"].items():
      timing["seconds"][name] += seconds
  contended = len(quiet) < min_quiet
  return {"num_calls": timing["num_calls"], "order": timing["order"],
          "seconds": timing["seconds"], "foreign_load": loads,
          "quiet_rounds": quiet, "contended": contended,
          "used": list(range(len(loads))) if contended else quiet}


def _forward_function(model):
  @tf.function(jit_compile=False)
  def forward(x):
    return model(x, training=False)
  return forward


def _layer_kind(layer):
  if isinstance(layer, keras.layers.Dense):
    return "dense"
  if isinstance(layer, keras.layers.DepthwiseConv2D) or layer.groups > 1:
    return "depthwise"
  return "conv{}x{}".format(*layer.kernel_size)


def _repeat_function(layer):
  """`f(x, n)` runs `layer(x)` n times in one graph (a sequential while loop).

  One tf.function call costs about half a millisecond of overhead here, as
  much as a small layer at batch 1, so a layer is timed as
  `(T(n) - T(0)) / n` minus the loop's own cost per iteration
  (`_loop_overhead`, a few microseconds). parallel_iterations=1 keeps
  iterations from overlapping; grappler does not hoist loop-invariant nodes
  by default.
  """

  @tf.function(jit_compile=False)
  def repeat(x, n):
    def body(i, acc):
      y = layer(x, training=False)
      return i + 1, acc + tf.reshape(y, [-1])[0]
    _, acc = tf.while_loop(lambda i, _: i < n, body,
                           (tf.constant(0), tf.constant(0.0)),
                           parallel_iterations=1)
    return acc

  return repeat


def _median_seconds(call, times=3):
  return float(np.median([harness.measure(call, 1) for _ in range(times)]))


def _loop_overhead():
  """Seconds per iteration of `_repeat_function`'s loop around a no-op."""
  fn = _repeat_function(lambda x, training: x)
  x, n = tf.zeros((1, 1)), 2000
  fn(x, tf.constant(1))
  empty = _median_seconds(lambda: fn(x, tf.constant(0)), 5)
  full = _median_seconds(lambda: fn(x, tf.constant(n)), 5)
  return max(0.0, (full - empty) / n)


def _layer_breakdown(config, variants, batch_size, rng, loop_overhead,
                     monitor):
  """Times every MAC layer of every variant alone, alternating variants.

  Returns:
    A list of per-layer rows: name, kind, per variant (c_in, c_out, MACs for
    one example, median seconds per layer call).
  """
  rows = []
  for dense_layer in variants[0].model.layers:
    if not isinstance(dense_layer, (keras.layers.Conv2D, keras.layers.Dense,
                                    keras.layers.DepthwiseConv2D)):
      continue
    layers = [v.model.get_layer(dense_layer.name) for v in variants]
    fns, inputs, overheads = [], [], []
    for layer in layers:
      shape = (batch_size, *layer.input.shape[1:])
      x = tf.constant(rng.uniform(-1, 1, shape).astype("float32"))
      fn = _repeat_function(layer)
      harness.measure(functools.partial(fn, x, tf.constant(1)), 1)  # trace
      overheads.append(_median_seconds(
          functools.partial(fn, x, tf.constant(0))))
      fns.append(fn)
      inputs.append(x)
    probe = config.breakdown_probe_iterations
    single = (_median_seconds(functools.partial(
        fns[0], inputs[0], tf.constant(probe))) - overheads[0]) / probe
    n = int(np.clip(round(config.breakdown_seconds / max(single, 1e-9)), 1,
                    config.breakdown_max_iterations))
    timing = harness.time_alternately(
        {v.label: functools.partial(fn, x, tf.constant(n))
         for v, fn, x in zip(variants, fns, inputs)},
        rounds=config.breakdown_repeats, warmup=0, num_calls=1,
        monitor=monitor)
    per_variant = []
    for variant, layer, overhead in zip(variants, layers, overheads):
      seconds = timing["median_seconds"][variant.label]
      per_variant.append({
          "c_in": layer.input.shape[-1], "c_out": layer.output.shape[-1],
          "macs": variant.layer_macs[layer.name],
          "seconds": max((seconds - overhead) / n - loop_overhead, 0.0)})
    rows.append({"name": dense_layer.name, "kind": _layer_kind(dense_layer),
                 "repeats_per_measurement": n, "variants": per_variant})
  return rows


def _summarize_breakdown(rows, variant_index, model_seconds, worst):
  """Aggregates the breakdown of variant `variant_index` against dense."""

  def totals(selected):
    dense = sum(r["variants"][0]["seconds"] for r in selected)
    pruned = sum(r["variants"][variant_index]["seconds"] for r in selected)
    dense_macs = sum(r["variants"][0]["macs"] for r in selected)
    pruned_macs = sum(r["variants"][variant_index]["macs"] for r in selected)
    if not selected or not pruned or not pruned_macs:
      return None
    speedup = dense / pruned
    ideal = dense_macs / pruned_macs
    return {"layers": len(selected), "dense_ms": 1e3 * dense,
            "pruned_ms": 1e3 * pruned, "speedup": speedup, "ideal": ideal,
            "efficiency": speedup / ideal}

  def aligned(row):
    """Whether every width that pruning changed is a multiple of 8."""
    v, d = row["variants"][variant_index], row["variants"][0]
    sides = ["c_out"] if row["kind"] == "depthwise" else ["c_in", "c_out"]
    return all(v[k] % 8 == 0 for k in sides if v[k] != d[k])

  mac_layers = totals(rows)
  dense_other = model_seconds[0] - mac_layers["dense_ms"] / 1e3
  pruned_other = model_seconds[1] - mac_layers["pruned_ms"] / 1e3
  per_layer = []
  for row in rows:
    one = totals([row])
    if one is None:
      continue
    v = row["variants"][variant_index]
    per_layer.append({"name": row["name"], "kind": row["kind"],
                      "c_in": v["c_in"], "c_out": v["c_out"],
                      "dense_c_in": row["variants"][0]["c_in"],
                      "dense_c_out": row["variants"][0]["c_out"], **one})
  per_layer.sort(key=lambda r: r["efficiency"])
  kinds = sorted({r["kind"] for r in rows})
  return {
      "mac_layers": mac_layers,
      "other_ops": {
          "dense_ms": 1e3 * dense_other, "pruned_ms": 1e3 * pruned_other,
          "dense_share": dense_other / model_seconds[0],
          "pruned_share": pruned_other / model_seconds[1],
          "speedup": dense_other / pruned_other if pruned_other > 0 else None},
      "by_kind": {k: totals([r for r in rows if r["kind"] == k])
                  for k in kinds},
      "by_alignment": {
          "multiple_of_8": totals([r for r in rows if aligned(r)]),
          "not_multiple_of_8": totals([r for r in rows if not aligned(r)])},
      "worst_layers": per_layer[:worst],
  }


# -- worker: one backend ------------------------------------------------------


def _benchmark_model(config, name, rng, monitor, loop_overhead):
  """Plans, prunes and times one model; returns its JSON-ready results."""
  groups, variants = _variants(config, name)
  dense = variants[0]
  result = {"model": name, "groups": len(groups),
            "dense": {"macs": dense.macs, "params": dense.params},
            "pruned": []}
  for variant in variants[1:]:
    result["pruned"].append({
        "round_to": variant.round_to, "keep_fraction": variant.keep_fraction,
        "macs": variant.macs, "params": variant.params,
        "macs_ratio": variant.macs / dense.macs,
        "params_ratio": variant.params / dense.params,
        "ideal_speedup": dense.macs / variant.macs,
        "macs_within_tolerance": bool(
            abs(variant.macs / dense.macs / config.target_macs_ratio - 1)
            <= config.macs_tolerance),
        "kept_per_group": dict(zip((g.name for g in groups), variant.counts)),
        "group_sizes": {g.name: g.size for g in groups},
        "batches": {}})
  for batch_size in config.batch_sizes:
    start = time.perf_counter()
    shape = (batch_size, config.input_size, config.input_size, 3)
    x = tf.constant(rng.uniform(-1, 1, shape).astype("float32"))
    timing = _time_quiet(
        {v.label: functools.partial(_forward_function(v.model), x)
         for v in variants}, config, config.repeats, config.max_rounds,
        config.min_quiet_rounds, monitor, warmup=config.warmup_batches,
        seconds_per_measurement=config.seconds_per_measurement)
    used = timing["used"]
    dense_all = np.array(timing["seconds"]["dense"])
    d = 1e3 * float(np.median(dense_all[used]))
    # Indices into `variants` with a breakdown; the dense model comes first.
    chosen = [0] + [i for i, v in enumerate(variants)
                    if i and v.round_to in config.breakdown_round_to]
    rows = None
    if config.breakdown and len(chosen) > 1:
      snapshot = monitor.snapshot()
      rows = _layer_breakdown(config, [variants[i] for i in chosen],
                              batch_size, rng, loop_overhead, monitor)
      breakdown_load = monitor.foreign_load(snapshot)
    for index, entry in enumerate(result["pruned"], start=1):
      pruned_all = np.array(timing["seconds"][variants[index].label])
      paired = float(np.median(dense_all[used] / pruned_all[used]))
      p = 1e3 * float(np.median(pruned_all[used]))
      batch = {
          "batches_per_measurement": timing["num_calls"],
          "rounds": len(dense_all), "quiet_rounds": timing["quiet_rounds"],
          "contended": timing["contended"], "rounds_used": len(used),
          "dense_ms": d, "pruned_ms": p,
          "dense_images_per_s": 1e3 * batch_size / d,
          "pruned_images_per_s": 1e3 * batch_size / p,
          "speedup": paired, "speedup_of_medians": d / p,
          "efficiency": paired / entry["ideal_speedup"],
          "efficiency_of_medians": d / p / entry["ideal_speedup"],
          "dense_ms_all": (1e3 * dense_all).tolist(),
          "pruned_ms_all": (1e3 * pruned_all).tolist(),
          "foreign_load_all": timing["foreign_load"],
          "order": timing["order"],
      }
      if rows is not None and index in chosen:
        batch["breakdown"] = _summarize_breakdown(
            rows, chosen.index(index), (d / 1e3, p / 1e3),
            config.worst_layers)
        batch["breakdown"]["foreign_load"] = breakdown_load
      entry["batches"][str(batch_size)] = batch
      logging.info("%s batch %d %s: %.1f ms vs dense %.1f ms, speed-up %.2f",
                   name, batch_size, variants[index].label, p, d, paired)
    logging.info("%s batch %d: %d of %d rounds quiet, %.0f s", name,
                 batch_size, len(timing["quiet_rounds"]), len(dense_all),
                 time.perf_counter() - start)
  return result


def _run_worker(config):
  """Measures the single backend of `config.backends` in this process."""
  backend, = config.backends
  expected = _BACKEND_ENV[backend]
  if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != expected:
    raise ValueError(f"Worker for backend {backend!r} needs "
                     f"TF_ENABLE_ONEDNN_OPTS={expected}.")
  if config.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(
        config.intra_op_threads)
  if config.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(
        config.inter_op_threads)
  rng = np.random.default_rng(config.seed)
  start = time.perf_counter()
  load_before = os.getloadavg()
  monitor = common.CpuMonitor()
  loop_overhead = _loop_overhead() if config.breakdown else 0.0
  models = [_benchmark_model(config, name, rng, monitor, loop_overhead)
            for name in config.models]
  return {
      "backend": backend,
      "TF_ENABLE_ONEDNN_OPTS": expected,
      "intra_op_threads":
          tf.config.threading.get_intra_op_parallelism_threads(),
      "inter_op_threads":
          tf.config.threading.get_inter_op_parallelism_threads(),
      "load_average_before": load_before,
      "load_average_after": os.getloadavg(),
      "while_loop_overhead_us": 1e6 * loop_overhead,
      "seconds": time.perf_counter() - start,
      "models": models,
  }


def _spawn_worker(config, backend, path):
  """Runs this script as the worker of `backend`; returns its results."""
  args = [sys.executable, "-m", "benchmarks.inference_speed",
          f"--worker_output={path}", f"--backends={backend}"]
  for name, value in vars(config).items():
    if name in ("backends", "output_dir", "output_name"):
      continue
    if isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{name}")
    elif isinstance(value, list):
      args.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      args.append(f"--{name}={value}")
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=_BACKEND_ENV[backend])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  logging.info("Starting worker: %s", " ".join(args))
  subprocess.run(args, env=env, cwd=root, check=True)
  with open(path) as f:
    return json.load(f)


# -- reporting ----------------------------------------------------------------


def _fmt(value, digits=2):
  return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(results):
  """Markdown tables of the results."""
  machine = results["machine"]
  lines = [
      "# Inference speed: dense vs pruned (generated)", "",
      f"Generated by `python -m benchmarks.inference_speed` on "
      f"{results['date_utc']}: {machine.get('cpu_model')} (family "
      f"{machine.get('cpu_family')}, model {machine.get('cpu_model_number')},"
      f" {'/'.join(machine.get('simd', []))}), {machine['usable_cpus']} "
      f"usable CPUs, TensorFlow {machine['tensorflow']}, Keras "
      f"{machine['keras']}, commit {str(machine.get('git_commit'))[:10]}.", "",
      "Uniform keep-fraction per channel group, kept count rounded to a "
      "multiple of round_to"
      + (f", groups of at most {results['config'].get('min_width')} channels "
         "kept whole and none cut below that"
         if results['config'].get('min_width') else "")
      + (", residual streams (`ChannelGroup.residual`) kept whole"
         if results['config'].get('keep_residual') else "")
      + (", BatchNormalization folded into the convolutions "
         "(`keras_epi.fold_batchnorm`) in dense and pruned models alike"
         if results['config'].get('fold_batchnorm') else "") +
      ", MAC ratio target "
      f"{results['config']['target_macs_ratio']}, channels chosen by "
      f"`{results['config']['importance']}`. All models are timed in one "
      "process, each once per round in rotating order "
      "(`benchmarks.harness.time_alternately`); speed-up = median over "
      "rounds of dense time / pruned time (same round); efficiency = speed-up "
      "/ (dense MACs / pruned MACs); 'of medians' = median dense time / "
      "median pruned time (sensitive to the host's drift). Times are medians "
      "in ms per batch. A round is quiet when other processes and steal time "
      f"used at most {100 * results['config']['max_foreign_load']:.0f}% of "
      "the CPUs during each of its measurements; medians use the quiet "
      f"rounds when there are at least {results['config']['min_quiet_rounds']}"
      ".", ""]
  for worker in results["backends"]:
    load = ", ".join(f"{x:.1f}" for x in worker["load_average_before"])
    lines += [f"## Backend `{worker['backend']}` (TF_ENABLE_ONEDNN_OPTS="
              f"{worker['TF_ENABLE_ONEDNN_OPTS']})", "",
              f"Load average when the worker started: {load} (2 cores).", "",
              "| model | round_to | keep | GMACs | MAC ratio | Mparams | "
              "batch | rounds used | dense ms | pruned ms | speed-up | "
              "of medians | ideal | efficiency |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in worker["models"]:
      for entry in model["pruned"]:
        for batch, b in entry["batches"].items():
          lines.append(
              f"| {model['model']} | {entry['round_to']} | "
              f"{entry['keep_fraction']:.3f} | {entry['macs'] / 1e9:.3f} | "
              f"{entry['macs_ratio']:.3f} | {entry['params'] / 1e6:.2f} | "
              f"{batch} | {_rounds(b)} | {b['dense_ms']:.1f} | "
              f"{b['pruned_ms']:.1f} | "
              f"{b['speedup']:.2f} | {b['speedup_of_medians']:.2f} | "
              f"{entry['ideal_speedup']:.2f} | **{b['efficiency']:.2f}** |")
    rows = []
    for model in worker["models"]:
      for entry in model["pruned"]:
        for batch, b in entry["batches"].items():
          if "breakdown" not in b:
            continue
          d = b["breakdown"]
          kinds = ", ".join(f"{k} {_fmt(v and v['efficiency'])}"
                            for k, v in d["by_kind"].items())
          worst = d["worst_layers"][0] if d["worst_layers"] else None
          other = d["other_ops"]
          rows.append(
              f"| {model['model']} | {entry['round_to']} | {batch} | "
              f"{_fmt(d['mac_layers']['dense_ms'], 1)} -> "
              f"{_fmt(d['mac_layers']['pruned_ms'], 1)} | "
              f"{_fmt(d['mac_layers']['efficiency'])} | {kinds} | "
              f"{_fmt(other['dense_ms'], 1)} -> {_fmt(other['pruned_ms'], 1)}"
              " | " + (f"{worst['name']} {worst['dense_c_in']}->"
                       f"{worst['c_in']}/{worst['dense_c_out']}->"
                       f"{worst['c_out']}: {_fmt(worst['efficiency'])}"
                       if worst else "") + " |")
    if rows:
      lines += ["", "Where the time goes: every MAC layer timed alone (ms per "
                "batch, summed), its efficiency (speed-up over MAC "
                "reduction) overall and by kind; other ops = whole model "
                "minus the MAC layers (BatchNormalization, activations, "
                "padding, adds, call overhead; negative when the isolated "
                "layers sum to more than the model); the least efficient "
                "layer (c_in/c_out dense->pruned).", "",
                "| model | round_to | batch | MAC layers ms | MAC-layer eff. "
                "| eff. by kind | other ops ms | worst layer |",
                "|---|---|---|---|---|---|---|---|", *rows]
    lines.append("")
  s = results.get("surgery")  # results before benchmarks/surgery_time.py
  if s:
    lines += ["## Surgery time (ResNet50)", "",
              "| rounds used | keras_epi.prune_model | channel_groups alone | "
              "ResNet50(weights=None) | ratio (goal < 2) |",
              "|---|---|---|---|---|",
              f"| {_rounds(s)} | {s['prune_model_s']:.2f} s | "
              f"{s['channel_groups_s']:.2f} s | {s['build_s']:.2f} s | "
              f"**{s['ratio']:.2f}** |", ""]
  return "\n".join(lines)


def _rounds(entry):
  """'quiet/total' rounds, or 'all N (contended)' when medians use all."""
  if entry["contended"]:
    return f"all {entry['rounds']} (contended)"
  return f"{len(entry['quiet_rounds'])} quiet of {entry['rounds']}"



def _write_results(config, results):
  """`common.write_results`, keeping the notes of an existing `.md`."""
  notes = f"{_NOTES_MARKER}\n"
  path = os.path.join(config.output_dir, config.output_name + ".md")
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if _NOTES_MARKER in old:
      notes = old[old.index(_NOTES_MARKER):]
  common.write_results(config.output_dir, config.output_name, results,
                       _markdown(results) + "\n" + notes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _config_from_flags()
  if _WORKER_OUTPUT.value:
    if len(config.backends) != 1:
      raise ValueError("--worker_output needs exactly one --backends entry.")
    result = _run_worker(config)
    with open(_WORKER_OUTPUT.value, "w") as f:
      json.dump(result, f)
    return
  logging.info("Config: %s", config)
  start = time.perf_counter()
  results = {
      "benchmark": "inference_speed",
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "config": vars(config),
      "machine": common.machine_info(),
      "backends": [],
  }
  monitor = common.CpuMonitor()
  waits = {}
  with tempfile.TemporaryDirectory() as tmp:
    for backend in config.backends:
      waits[backend] = _wait_for_quiet(config, monitor)
      results["backends"].append(
          _spawn_worker(config, backend, os.path.join(tmp, backend + ".json")))
  results["waited_for_quiet"] = {k: {"seconds": w, "foreign_load": l}
                                 for k, (w, l) in waits.items()}
  results["seconds"] = time.perf_counter() - start
  _write_results(config, results)
  logging.info("Done in %.0f s.", results["seconds"])


if __name__ == "__main__":
  app.run(main)
