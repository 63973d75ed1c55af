r"""Inference speed of dense vs pruned keras.applications models on CPU.

Does a model pruned to half its multiply-accumulates (MACs) run twice as fast?
For each model (ResNet50, MobileNetV2; weights=None, 224x224x3, 1000 classes)
and each `--round_to`, this benchmark

1. prunes every channel group (`keras_epi.channel_groups`) to the same
   keep-fraction `f`, each group's kept count rounded to the nearest multiple
   of `round_to` (at least `round_to`, at most the group size), with `f`
   chosen on a grid so that `count_macs(pruned) / count_macs(dense)` is as
   close as possible to `--target_macs_ratio` (within `--macs_tolerance`,
   relative). Which channels are kept (`--importance`): `magnitude` keeps
   the highest `keras_epi.magnitude_importance` (L2 norm of each filter over
   sqrt of its size, summed over the group's producer layers, the Conv2D and
   Dense members that create the channels), `first` keeps channels `0..n-1`.
   With weights=None the choice changes no shape, so it cannot change the
   speed;
2. times a `tf.function(jit_compile=False)` forward pass
   (`model(x, training=False)`) of the dense and every pruned model in one
   process, alternating: each round measures dense, pruned_1, dense, pruned_8,
   ... (pairs back to back; pair order rotated and dense/pruned order swapped
   every other round), each measurement being the wall time of a fixed number
   of batches. Over `--repeats` quiet rounds (see `CpuMonitor`) it reports
     speed-up   = median over rounds of dense time / pruned time
     efficiency = speed-up / (dense MACs / pruned MACs)
   and the median times. Efficiency 1 means the pruned model is exactly as
   much faster as its MACs promise. The ratio of the median times is recorded
   too; the per-pair ratio is the headline because the host's speed drifts
   by tens of percent over minutes;
3. for the `--breakdown_round_to` models, times every MAC layer (Conv2D,
   DepthwiseConv2D, Dense) alone, dense vs pruned, to split the time into MAC
   layers and everything else, the MAC layers by kind (1x1, 3x3, depthwise,
   ...) and by whether the widths that pruning changed are multiples of 8 (the
   AVX2 float lane count), and lists the least efficient layers;
4. times `keras_epi.prune_model` on ResNet50 against building
   `keras.applications.ResNet50(weights=None)`.

TensorFlow's CPU kernels depend on `TF_ENABLE_ONEDNN_OPTS`, which must be set
before TensorFlow is imported, so each entry of `--backends` is measured in its
own worker process (`eigen`: TF_ENABLE_ONEDNN_OPTS=0, TensorFlow's own Eigen
kernels; `onednn`: TF_ENABLE_ONEDNN_OPTS=1, oneDNN primitives). The workers run
one after the other, never at the same time.

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
import math
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
import keras_epi

_MODELS = flags.DEFINE_list(
    "models", ["ResNet50", "MobileNetV2"],
    "keras.applications builders to benchmark.")
_INPUT_SIZE = flags.DEFINE_integer(
    "input_size", 224, "Height and width of the square RGB input.")
_CLASSES = flags.DEFINE_integer("classes", 1000, "Classifier outputs.")
_TARGET_MACS_RATIO = flags.DEFINE_float(
    "target_macs_ratio", 0.5, "Wanted count_macs(pruned) / count_macs(dense).")
_MACS_TOLERANCE = flags.DEFINE_float(
    "macs_tolerance", 0.02,
    "Allowed relative deviation of the reached MAC ratio from the target.")
_ROUND_TO = flags.DEFINE_list(
    "round_to", ["1", "8", "16", "32"],
    "Kept channels per group are rounded to a multiple of each of these "
    "(one pruned model per value).")
_MIN_WIDTH = flags.DEFINE_integer(
    "min_width", 0,
    "Groups of at most this many channels stay whole and no group is cut "
    "below it (0: off). Narrow layers run far below peak on CPUs, so cutting "
    "them saves little time; the search then cuts the wide groups deeper.")
_KEEP_RESIDUAL = flags.DEFINE_bool(
    "keep_residual", False,
    "Residual streams (groups with keras_epi.ChannelGroup.residual) stay "
    "whole; only the other groups are cut, deeper. On CPU an inverted-"
    "residual net's time follows its wide expanded activations, which these "
    "cuts shrink most per MAC saved.")
_FOLD_BATCHNORM = flags.DEFINE_bool(
    "fold_batchnorm", False,
    "Time the deployed form: keras_epi.fold_batchnorm applied to the dense "
    "and every pruned model (MACs are unchanged by folding).")
_IMPORTANCE = flags.DEFINE_enum(
    "importance", "magnitude", ["magnitude", "first"],
    "Which channels to keep: highest keras_epi.magnitude_importance (filter "
    "L2 norms summed over the group's producers), or the first n.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["1", "8"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 7,
    "Quiet alternating rounds of measurements wanted; medians are reported.")
_MAX_ROUNDS = flags.DEFINE_integer(
    "max_rounds", 12,
    "Rounds stop once --repeats quiet rounds are collected or after this "
    "many rounds.")
_MAX_FOREIGN_LOAD = flags.DEFINE_float(
    "max_foreign_load", 0.2,
    "A round is quiet if, during each of its measurements, other processes "
    "(and the hypervisor, steal time) used at most this fraction of the "
    "machine's CPU time (from /proc/stat).")
_MIN_QUIET_ROUNDS = flags.DEFINE_integer(
    "min_quiet_rounds", 5,
    "Medians use the quiet rounds if there are at least this many, else all "
    "rounds (and the result is marked contended).")
_MAX_WAIT_SECONDS = flags.DEFINE_float(
    "max_wait_seconds", 300,
    "Before each worker and the surgery timing, wait up to this long for a "
    "quiet window (foreign load <= --max_foreign_load for "
    "--quiet_window_seconds); then go on regardless.")
_QUIET_WINDOW_SECONDS = flags.DEFINE_float(
    "quiet_window_seconds", 10, "Length of the quiet window waited for.")
_SECONDS_PER_MEASUREMENT = flags.DEFINE_float(
    "seconds_per_measurement", 1.0,
    "The number of batches per measurement is chosen so that one dense "
    "measurement takes about this long.")
_WARMUP_BATCHES = flags.DEFINE_integer(
    "warmup_batches", 3, "Untimed batches per model before timing.")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", True, "Also time every MAC layer alone (dense vs pruned).")
_BREAKDOWN_ROUND_TO = flags.DEFINE_list(
    "breakdown_round_to", ["1", "8"],
    "round_to values whose pruned models get the layer breakdown.")
_BREAKDOWN_REPEATS = flags.DEFINE_integer(
    "breakdown_repeats", 3, "Alternating rounds per layer in the breakdown.")
_BREAKDOWN_SECONDS = flags.DEFINE_float(
    "breakdown_seconds", 0.01,
    "Each layer runs in a loop long enough that one dense measurement takes "
    "about this long.")
_BREAKDOWN_PROBE_ITERATIONS = flags.DEFINE_integer(
    "breakdown_probe_iterations", 16,
    "Loop iterations of the run that estimates a dense layer's time.")
_BREAKDOWN_MAX_ITERATIONS = flags.DEFINE_integer(
    "breakdown_max_iterations", 200, "Cap on loop iterations per layer.")
_WORST_LAYERS = flags.DEFINE_integer(
    "worst_layers", 5,
    "Layers with the lowest efficiency to list per model, round_to, batch.")
_BACKENDS = flags.DEFINE_list(
    "backends", ["eigen", "onednn"],
    "TensorFlow CPU kernels to measure, one worker process each: eigen "
    "(TF_ENABLE_ONEDNN_OPTS=0) or onednn (TF_ENABLE_ONEDNN_OPTS=1).")
_INTRA_OP_THREADS = flags.DEFINE_integer(
    "intra_op_threads", 0, "tf.config.threading intra-op threads; 0: TF's.")
_INTER_OP_THREADS = flags.DEFINE_integer(
    "inter_op_threads", 0, "tf.config.threading inter-op threads; 0: TF's.")
_SURGERY_ROUND_TO = flags.DEFINE_integer(
    "surgery_round_to", 8, "round_to of the ResNet50 plan timed in surgery.")
_SURGERY_REPEATS = flags.DEFINE_integer(
    "surgery_repeats", 5, "Alternating builds and prunes of ResNet50.")
_SURGERY_MAX_ROUNDS = flags.DEFINE_integer(
    "surgery_max_rounds", 8,
    "Surgery rounds stop after --surgery_repeats quiet ones or this many.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and inputs.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results",
    "Where the JSON and markdown go (with --quick and no --output_dir: a "
    "temporary directory).")
_OUTPUT_NAME = flags.DEFINE_string(
    "output_name", "inference_speed", "Base name of the result files.")
_QUICK = flags.DEFINE_bool(
    "quick", False,
    "Smoke run: round_to 8 only, batch 1, 3 short repeats, 1 surgery repeat.")
_WORKER_OUTPUT = flags.DEFINE_string(
    "worker_output", "",
    "Internal: run as the worker of the single backend in --backends and "
    "write its JSON here.")

_BACKEND_ENV = {"eigen": "0", "onednn": "1"}
_NOTES_MARKER = "<!-- notes -->"


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of one run (flags with --quick applied)."""
  models: tuple
  input_size: int
  classes: int
  target_macs_ratio: float
  macs_tolerance: float
  round_to: tuple
  min_width: int
  keep_residual: bool
  fold_batchnorm: bool
  importance: str
  batch_sizes: tuple
  repeats: int
  max_rounds: int
  max_foreign_load: float
  min_quiet_rounds: int
  max_wait_seconds: float
  quiet_window_seconds: float
  seconds_per_measurement: float
  warmup_batches: int
  breakdown: bool
  breakdown_round_to: tuple
  breakdown_repeats: int
  breakdown_seconds: float
  breakdown_probe_iterations: int
  breakdown_max_iterations: int
  worst_layers: int
  backends: tuple
  intra_op_threads: int
  inter_op_threads: int
  surgery_round_to: int
  surgery_repeats: int
  surgery_max_rounds: int
  seed: int
  output_dir: str
  output_name: str
  quick: bool

  def __post_init__(self):
    for model in self.models:
      if not hasattr(keras.applications, model):
        raise ValueError(f"--models: unknown keras.applications model "
                         f"{model!r}.")
    for name in ("round_to", "batch_sizes"):
      values = getattr(self, name)
      if not values or min(values) < 1:
        raise ValueError(f"--{name} must be positive integers, received "
                         f"{values}.")
    for name in ("repeats", "warmup_batches", "breakdown_repeats",
                 "surgery_repeats", "input_size", "classes",
                 "min_quiet_rounds", "breakdown_probe_iterations",
                 "breakdown_max_iterations"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, received "
                         f"{getattr(self, name)}.")
    if self.max_rounds < self.repeats:
      raise ValueError(f"--max_rounds ({self.max_rounds}) must be >= "
                       f"--repeats ({self.repeats}).")
    if self.surgery_max_rounds < self.surgery_repeats:
      raise ValueError(f"--surgery_max_rounds ({self.surgery_max_rounds}) "
                       f"must be >= --surgery_repeats "
                       f"({self.surgery_repeats}).")
    if not 0 < self.target_macs_ratio <= 1:
      raise ValueError("--target_macs_ratio must be in (0, 1], received "
                       f"{self.target_macs_ratio}.")
    unknown = [b for b in self.backends if b not in _BACKEND_ENV]
    if unknown or not self.backends:
      raise ValueError(f"--backends must be among {sorted(_BACKEND_ENV)}, "
                       f"received {list(self.backends)}.")


def _config_from_flags():
  """Reads the flags once; --quick replaces the costly settings."""
  def ints(values):
    return tuple(int(v) for v in values)

  values = dict(
      models=tuple(_MODELS.value), input_size=_INPUT_SIZE.value,
      classes=_CLASSES.value, target_macs_ratio=_TARGET_MACS_RATIO.value,
      macs_tolerance=_MACS_TOLERANCE.value, round_to=ints(_ROUND_TO.value),
      min_width=_MIN_WIDTH.value, keep_residual=_KEEP_RESIDUAL.value,
      fold_batchnorm=_FOLD_BATCHNORM.value,
      importance=_IMPORTANCE.value, batch_sizes=ints(_BATCH_SIZES.value),
      repeats=_REPEATS.value, max_rounds=_MAX_ROUNDS.value,
      max_foreign_load=_MAX_FOREIGN_LOAD.value,
      min_quiet_rounds=_MIN_QUIET_ROUNDS.value,
      max_wait_seconds=_MAX_WAIT_SECONDS.value,
      quiet_window_seconds=_QUIET_WINDOW_SECONDS.value,
      seconds_per_measurement=_SECONDS_PER_MEASUREMENT.value,
      warmup_batches=_WARMUP_BATCHES.value, breakdown=_BREAKDOWN.value,
      breakdown_round_to=ints(_BREAKDOWN_ROUND_TO.value),
      breakdown_repeats=_BREAKDOWN_REPEATS.value,
      breakdown_seconds=_BREAKDOWN_SECONDS.value,
      breakdown_probe_iterations=_BREAKDOWN_PROBE_ITERATIONS.value,
      breakdown_max_iterations=_BREAKDOWN_MAX_ITERATIONS.value,
      worst_layers=_WORST_LAYERS.value, backends=tuple(_BACKENDS.value),
      intra_op_threads=_INTRA_OP_THREADS.value,
      inter_op_threads=_INTER_OP_THREADS.value,
      surgery_round_to=_SURGERY_ROUND_TO.value,
      surgery_repeats=_SURGERY_REPEATS.value,
      surgery_max_rounds=_SURGERY_MAX_ROUNDS.value, seed=_SEED.value,
      output_dir=_OUTPUT_DIR.value, output_name=_OUTPUT_NAME.value,
      quick=_QUICK.value)
  if _QUICK.value and not _WORKER_OUTPUT.value:
    values.update(round_to=(8,), breakdown_round_to=(8,), batch_sizes=(1,),
                  repeats=3, max_rounds=3, min_quiet_rounds=2,
                  max_wait_seconds=0,
                  seconds_per_measurement=0.05, warmup_batches=1,
                  breakdown_repeats=1, breakdown_seconds=0.0,
                  surgery_repeats=1, surgery_max_rounds=1,
                  surgery_round_to=8)
    if not _OUTPUT_DIR.present:
      values["output_dir"] = os.path.join(tempfile.gettempdir(),
                                          "keras_epi_benchmarks")
  return Config(**values)


# -- pruning plans ------------------------------------------------------------


def _is_mac_layer(layer):
  return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                            keras.layers.Dense))


class MacPlanner:
  """Exact MAC count of a model for per-group kept counts, without surgery.

  Building a pruned ResNet50 takes seconds, so the keep-fraction search uses
  this closed form instead: a Conv2D (groups=1) or Dense costs
  `dense_macs * kept_in / c_in * kept_out / c_out`, a depthwise (or
  depthwise-like grouped) conv `dense_macs * kept_out / c_out`. The result of
  the search is checked against `keras_epi.count_macs` of the pruned model.
  Only top-level Conv2D, DepthwiseConv2D and Dense layers are modelled; other
  MAC layers raise.

  Args:
    model: A functional model, each layer called once.
    groups: `keras_epi.channel_groups(model)`.
  """

  def __init__(self, model, groups):
    self.groups = groups
    self.sizes = np.array([g.size for g in groups])
    self.residual = np.array([g.residual for g in groups], dtype=bool)
    producer = {id(layer.output): layer.name for layer in model.layers}
    # layer name -> [(group index, channels per group channel)]
    self._carried = {}
    for index, group in enumerate(groups):
      for name, positions in group.members:
        repeat = 1 if np.ndim(positions) == 1 else np.shape(positions)[1]
        self._carried.setdefault(name, []).append((index, repeat))
    self._channels = {layer.name: layer.output.shape[-1]
                      for layer in model.layers}
    self.terms = []  # (dense MACs, input producer or None, layer name)
    for layer in model.layers:
      if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv3D,
                            keras.layers.SeparableConv2D,
                            keras.layers.Conv2DTranspose, keras.Model)):
        raise ValueError(f"MacPlanner: layer '{layer.name}' "
                         f"({type(layer).__name__}) is not modelled.")
      if not _is_mac_layer(layer):
        continue
      c_in, c_out = layer.input.shape[-1], layer.output.shape[-1]
      positions = math.prod(layer.output.shape[1:-1])
      source = producer[id(layer.input)]
      if isinstance(layer, keras.layers.Dense):
        macs = positions * c_in * c_out
      elif isinstance(layer, keras.layers.DepthwiseConv2D):
        macs, source = positions * math.prod(layer.kernel_size) * c_out, None
      else:
        macs = (positions * math.prod(layer.kernel_size) *
                (c_in // layer.groups) * c_out)
        if layer.groups > 1:
          source = None  # depthwise-like: in and out shrink together
      self.terms.append((macs, source, layer.name))
    self.dense_macs = sum(t[0] for t in self.terms)

  def kept_channels(self, name, counts):
    """Output channels that layer `name` keeps for per-group `counts`."""
    removed = sum((self.sizes[i] - counts[i]) * repeat
                  for i, repeat in self._carried.get(name, ()))
    return self._channels[name] - removed

  def macs(self, counts):
    total = 0
    for macs, source, name in self.terms:
      kept, full = self.kept_channels(name, counts), self._channels[name]
      if source is not None:
        kept *= self.kept_channels(source, counts)
        full *= self._channels[source]
      total += int(macs * kept // full)  # exact: `full` divides `macs`
    return total

  def uniform_counts(self, fraction, round_to, min_width=0,
                     keep_residual=False):
    """Kept count per group: nearest multiple of round_to of fraction*size,
    at least round_to and min_width, at most the group size; with
    `keep_residual`, residual streams keep every channel."""
    multiples = np.floor(fraction * self.sizes / round_to + 0.5)
    counts = np.minimum(np.maximum(multiples, 1) * round_to, self.sizes)
    counts = np.maximum(counts, np.minimum(self.sizes, min_width))
    if keep_residual:
      counts = np.where(self.residual, self.sizes, counts)
    return counts.astype(int)

  def search(self, target_ratio, round_to, step=1e-3, min_width=0,
             keep_residual=False):
    """The fraction (on a grid of `step`) whose MAC ratio is nearest target.

    Returns:
      (fraction, counts, ratio).
    """
    best = None
    for fraction in np.arange(step, 1 + step / 2, step):
      counts = self.uniform_counts(fraction, round_to, min_width,
                                   keep_residual)
      ratio = self.macs(counts) / self.dense_macs
      if best is None or abs(ratio - target_ratio) < abs(best[2] -
                                                        target_ratio):
        best = (float(fraction), counts, ratio)
    return best


def _keep_plan(model, groups, counts, importance):
  """Indices to keep per group: the `counts[i]` best of group i."""
  if importance == "magnitude":
    scores = keras_epi.magnitude_importance(model, groups)
  else:
    scores = {g.name: -np.arange(g.size, dtype=np.float64) for g in groups}
  keep = {}
  for group, count in zip(groups, counts):
    if count < group.size:
      order = np.argsort(-scores[group.name], kind="stable")
      keep[group.name] = np.sort(order[:count])
  return keep


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
  planned_macs: int = 0
  counts: tuple = ()


def _pruned_variants(config, dense, groups, planner):
  """One pruned model per round_to, at the MAC ratio nearest the target."""
  dense_macs = keras_epi.count_macs(dense)
  if dense_macs != planner.dense_macs:
    raise AssertionError(f"MacPlanner counts {planner.dense_macs} MACs, "
                         f"keras_epi.count_macs {dense_macs}.")
  variants = []
  for round_to in config.round_to:
    fraction, counts, _ = planner.search(config.target_macs_ratio, round_to,
                                         min_width=config.min_width,
                                         keep_residual=config.keep_residual)
    keep = _keep_plan(dense, groups, counts, config.importance)
    start = time.perf_counter()
    pruned = keras_epi.prune_model(dense, keep)
    logging.info("%s round_to=%d: keep fraction %.3f, pruned in %.1f s",
                 dense.name, round_to, fraction, time.perf_counter() - start)
    variant = Variant(label=f"round_to={round_to}", model=pruned,
                      macs=keras_epi.count_macs(pruned),
                      params=pruned.count_params(), round_to=round_to,
                      keep_fraction=fraction,
                      planned_macs=planner.macs(counts),
                      counts=tuple(int(c) for c in counts))
    if variant.macs != variant.planned_macs:
      raise AssertionError(
          f"{dense.name} round_to={round_to}: planned {variant.planned_macs} "
          f"MACs, keras_epi.count_macs says {variant.macs}.")
    ratio = variant.macs / dense_macs
    if abs(ratio / config.target_macs_ratio - 1) > config.macs_tolerance:
      logging.warning("%s round_to=%d: MAC ratio %.4f is not within %.0f%% "
                      "of %.3f.", dense.name, round_to, ratio,
                      100 * config.macs_tolerance, config.target_macs_ratio)
    variants.append(variant)
  return variants


# -- timing -------------------------------------------------------------------


def _forward_function(model):
  @tf.function(jit_compile=False)
  def forward(x):
    return model(x, training=False)
  return forward


CpuMonitor = common.CpuMonitor


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


def _measure(call, num_calls):
  """Wall seconds of `num_calls` calls of `call()`; the last output is fetched
  (on CPU a tf.function call returns when its result is computed)."""
  start = time.perf_counter()
  for _ in range(num_calls):
    y = call()
  keras.ops.convert_to_numpy(y)
  return time.perf_counter() - start


def _calibrate(call, seconds):
  """Calls per measurement so that one measurement takes about `seconds`."""
  single = float(np.median([_measure(call, 1) for _ in range(3)]))
  return max(1, int(round(seconds / single)))


def _alternate(calls, num_calls, repeats):
  """Times each call `repeats` times, round-robin, rotating the start.

  Returns:
    A list, per call, of `repeats` measurements (seconds per call).
  """
  times = [[] for _ in calls]
  for round_index in range(repeats):
    for k in range(len(calls)):
      i = (round_index + k) % len(calls)
      times[i].append(_measure(calls[i], num_calls) / num_calls)
  return times


def _time_models(config, variants, batch_size, rng, monitor):
  """Times the dense model against each pruned one, in adjacent pairs.

  A round measures, for every pruned variant (their order rotating from round
  to round), the dense model and the pruned one back to back (which of the two
  goes first alternates between rounds), so each speed-up is a ratio of two
  measurements a second apart: the host's speed drifts by tens of percent over
  minutes even when no other process runs here. Rounds go on until
  `config.repeats` of them were quiet (see `CpuMonitor`) or
  `config.max_rounds` were run.

  Args:
    config: The `Config`.
    variants: The dense model, then the pruned ones.
    batch_size: Examples per batch.
    rng: NumPy generator for the input batch.
    monitor: A `CpuMonitor`.

  Returns:
    (batches per measurement, {"dense", "pruned", "load"}: per pruned variant,
    per round, seconds per batch and the larger foreign load of the pair,
    indices of the quiet rounds).
  """
  shape = (batch_size, config.input_size, config.input_size, 3)
  x = tf.constant(rng.uniform(-1, 1, shape).astype("float32"))
  calls = [functools.partial(_forward_function(v.model), x) for v in variants]
  for call in calls:
    _measure(call, config.warmup_batches)
  num_calls = _calibrate(calls[0], config.seconds_per_measurement)
  pruned = len(calls) - 1
  series = {k: [[] for _ in range(pruned)] for k in ("dense", "pruned",
                                                      "load")}
  quiet = []
  for round_index in range(config.max_rounds):
    for k in range(pruned):
      i = (round_index + k) % pruned
      pair = {}
      loads = []
      for which in (("dense", "pruned") if round_index % 2 == 0
                    else ("pruned", "dense")):
        snapshot = monitor.snapshot()
        call = calls[0] if which == "dense" else calls[i + 1]
        pair[which] = _measure(call, num_calls) / num_calls
        loads.append(monitor.foreign_load(snapshot))
      series["dense"][i].append(pair["dense"])
      series["pruned"][i].append(pair["pruned"])
      series["load"][i].append(
          None if None in loads else max(loads))
    round_loads = [load[-1] for load in series["load"]]
    if all(l is not None and l <= config.max_foreign_load
           for l in round_loads):
      quiet.append(round_index)
    if len(quiet) >= config.repeats or (
        round_index + 1 >= config.repeats and round_loads[0] is None):
      break
  return num_calls, series, quiet


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


def _loop_overhead():
  """Seconds per iteration of `_repeat_function`'s loop around a no-op."""
  fn = _repeat_function(lambda x, training: x)
  x, n = tf.zeros((1, 1)), 2000
  fn(x, tf.constant(1))
  empty = np.median([_measure(lambda: fn(x, tf.constant(0)), 1)
                     for _ in range(5)])
  full = np.median([_measure(lambda: fn(x, tf.constant(n)), 1)
                    for _ in range(5)])
  return max(0.0, float(full - empty) / n)


def _layer_breakdown(config, variants, batch_size, rng, loop_overhead):
  """Times every MAC layer of every variant alone, alternating variants.

  Returns:
    A list of per-layer rows: name, kind, per variant (c_in, c_out, MACs for
    one example, median seconds per layer call).
  """
  rows = []
  for dense_layer in variants[0].model.layers:
    if not _is_mac_layer(dense_layer):
      continue
    layers = [v.model.get_layer(dense_layer.name) for v in variants]
    fns, inputs = [], []
    for layer in layers:
      shape = (batch_size, *layer.input.shape[1:])
      inputs.append(tf.constant(rng.uniform(-1, 1, shape).astype("float32")))
      fns.append(_repeat_function(layer))
    zero, one = tf.constant(0), tf.constant(1)
    overheads = []
    for fn, x in zip(fns, inputs):
      _measure(functools.partial(fn, x, one), 1)
      overheads.append(float(np.median(
          [_measure(functools.partial(fn, x, zero), 1) for _ in range(3)])))
    probe = config.breakdown_probe_iterations
    single = (float(np.median(
        [_measure(functools.partial(fns[0], inputs[0], tf.constant(probe)), 1)
         for _ in range(3)])) - overheads[0]) / probe
    n = int(np.clip(round(config.breakdown_seconds / max(single, 1e-9)), 1,
                    config.breakdown_max_iterations))
    repeats = tf.constant(n)
    calls = [functools.partial(fn, x, repeats) for fn, x in zip(fns, inputs)]
    times = _alternate(calls, 1, config.breakdown_repeats)
    per_variant = []
    for layer, layer_times, overhead in zip(layers, times, overheads):
      per_variant.append({
          "c_in": layer.input.shape[-1], "c_out": layer.output.shape[-1],
          "macs": _single_layer_macs(layer),
          "seconds": max(
              (float(np.median(layer_times)) - overhead) / n - loop_overhead,
              0.0)})
    rows.append({"name": dense_layer.name, "kind": _layer_kind(dense_layer),
                 "repeats_per_measurement": n, "variants": per_variant})
  return rows


def _single_layer_macs(layer):
  """MACs of one layer for one example (same rule as keras_epi.count_macs)."""
  c_in, c_out = layer.input.shape[-1], layer.output.shape[-1]
  positions = math.prod(layer.output.shape[1:-1])
  if isinstance(layer, keras.layers.Dense):
    return positions * c_in * c_out
  kernel = math.prod(layer.kernel_size)
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return positions * kernel * c_out
  return positions * kernel * (c_in // layer.groups) * c_out


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
  keras.utils.set_random_seed(config.seed)
  dense = _build_model(config, name)
  groups = keras_epi.channel_groups(dense)
  planner = MacPlanner(dense, groups)
  dense_variant = Variant(label="dense", model=dense,
                          macs=keras_epi.count_macs(dense),
                          params=dense.count_params())
  variants = [dense_variant] + _pruned_variants(config, dense, groups,
                                                planner)
  if config.fold_batchnorm:
    for variant in variants:
      variant.model = keras_epi.fold_batchnorm(variant.model)
      if keras_epi.count_macs(variant.model) != variant.macs:
        raise AssertionError(f"{name} {variant.label}: folding changed the "
                             "MAC count.")
  result = {"model": name, "groups": len(groups),
            "dense": {"macs": dense_variant.macs,
                      "params": dense_variant.params},
            "pruned": []}
  for variant in variants[1:]:
    result["pruned"].append({
        "round_to": variant.round_to, "keep_fraction": variant.keep_fraction,
        "macs": variant.macs, "params": variant.params,
        "macs_ratio": variant.macs / dense_variant.macs,
        "params_ratio": variant.params / dense_variant.params,
        "ideal_speedup": dense_variant.macs / variant.macs,
        "macs_within_tolerance": bool(
            abs(variant.macs / dense_variant.macs / config.target_macs_ratio
                - 1) <= config.macs_tolerance),
        "kept_per_group": dict(zip((g.name for g in groups),
                                   variant.counts)),
        "group_sizes": {g.name: g.size for g in groups},
        "batches": {}})
  for batch_size in config.batch_sizes:
    start = time.perf_counter()
    num_calls, series, quiet = _time_models(config, variants, batch_size,
                                            rng, monitor)
    rounds = len(series["dense"][0])
    contended = len(quiet) < config.min_quiet_rounds
    used = list(range(rounds)) if contended else quiet
    dense_ms = [1e3 * float(np.median(np.take(t, used)))
                for t in series["dense"]]
    pruned_ms = [1e3 * float(np.median(np.take(t, used)))
                 for t in series["pruned"]]
    logging.info("%s batch %d: %s (%d of %d rounds quiet, %.0f s)", name,
                 batch_size, ", ".join(
                     f"{v.label} {p:.1f} ms vs dense {d:.1f} ms" for v, d, p
                     in zip(variants[1:], dense_ms, pruned_ms)),
                 len(quiet), rounds, time.perf_counter() - start)
    # Indices into `variants` with a breakdown; the dense model comes first.
    chosen = [0] + [i for i, v in enumerate(variants)
                    if i and v.round_to in config.breakdown_round_to]
    rows = None
    if config.breakdown and len(chosen) > 1:
      start = time.perf_counter()
      snapshot = monitor.snapshot()
      rows = _layer_breakdown(config, [variants[i] for i in chosen],
                              batch_size, rng, loop_overhead)
      breakdown_load = monitor.foreign_load(snapshot)
      logging.info("%s batch %d: layer breakdown in %.0f s", name, batch_size,
                   time.perf_counter() - start)
    for index, entry in enumerate(result["pruned"], start=1):
      dense_all = np.array(series["dense"][index - 1])
      pruned_all = np.array(series["pruned"][index - 1])
      paired = float(np.median(dense_all[used] / pruned_all[used]))
      d, p = dense_ms[index - 1], pruned_ms[index - 1]
      batch = {
          "batches_per_measurement": num_calls,
          "rounds": rounds, "quiet_rounds": quiet, "contended": contended,
          "rounds_used": len(used),
          "dense_ms": d, "pruned_ms": p,
          "dense_images_per_s": 1e3 * batch_size / d,
          "pruned_images_per_s": 1e3 * batch_size / p,
          "speedup": paired, "speedup_of_medians": d / p,
          "efficiency": paired / entry["ideal_speedup"],
          "efficiency_of_medians": d / p / entry["ideal_speedup"],
          "dense_ms_all": (1e3 * dense_all).tolist(),
          "pruned_ms_all": (1e3 * pruned_all).tolist(),
          "foreign_load_all": series["load"][index - 1],
      }
      if rows is not None and index in chosen:
        batch["breakdown"] = _summarize_breakdown(
            rows, chosen.index(index), (d / 1e3, p / 1e3),
            config.worst_layers)
        batch["breakdown"]["foreign_load"] = breakdown_load
      entry["batches"][str(batch_size)] = batch
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
  monitor = CpuMonitor()
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
  for field in dataclasses.fields(config):
    if field.name in ("backends", "output_dir", "output_name"):
      continue
    value = getattr(config, field.name)
    if isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{field.name}")
    elif isinstance(value, tuple):
      args.append(f"--{field.name}={','.join(str(v) for v in value)}")
    else:
      args.append(f"--{field.name}={value}")
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=_BACKEND_ENV[backend])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  logging.info("Starting worker: %s", " ".join(args))
  subprocess.run(args, env=env, cwd=root, check=True)
  with open(path) as f:
    return json.load(f)


# -- surgery time -------------------------------------------------------------


def _benchmark_surgery(config):
  """Median prune_model time on ResNet50 vs building ResNet50.

  Build, channel_groups and prune_model alternate; rounds go on until
  `surgery_repeats` were quiet (see `CpuMonitor`) or `surgery_max_rounds`
  were run.
  """
  keras.utils.set_random_seed(config.seed)
  dense = _build_model(config, "ResNet50")
  groups = keras_epi.channel_groups(dense)
  planner = MacPlanner(dense, groups)
  _, counts, _ = planner.search(config.target_macs_ratio,
                                config.surgery_round_to)
  keep = _keep_plan(dense, groups, counts, config.importance)
  monitor = CpuMonitor()
  steps = {
      "build": lambda: _build_model(config, "ResNet50"),
      "channel_groups": lambda: keras_epi.channel_groups(dense),
      "prune_model": lambda: keras_epi.prune_model(dense, keep),
  }
  times = {k: [] for k in steps}
  loads = {k: [] for k in steps}
  quiet = []
  for round_index in range(config.surgery_max_rounds):
    for name, step in steps.items():
      snapshot = monitor.snapshot()
      start = time.perf_counter()
      result = step()
      times[name].append(time.perf_counter() - start)
      loads[name].append(monitor.foreign_load(snapshot))
      del result
    if all(l[-1] is not None and l[-1] <= config.max_foreign_load
           for l in loads.values()):
      quiet.append(round_index)
    if len(quiet) >= config.surgery_repeats or (
        round_index + 1 >= config.surgery_repeats and
        loads["build"][-1] is None):
      break
  rounds = len(times["build"])
  contended = len(quiet) < min(config.min_quiet_rounds,
                               config.surgery_repeats)
  used = list(range(rounds)) if contended else quiet
  result = {"model": "ResNet50", "round_to": config.surgery_round_to,
            "rounds": rounds, "quiet_rounds": quiet, "contended": contended}
  for name in steps:
    result[f"{name}_s"] = float(np.median(np.take(times[name], used)))
    result[f"{name}_s_all"] = times[name]
    result[f"{name}_foreign_load_all"] = loads[name]
  result["ratio"] = result["prune_model_s"] / result["build_s"]
  logging.info("Surgery: prune_model %.2f s, build %.2f s, ratio %.2f "
               "(%d of %d rounds quiet)", result["prune_model_s"],
               result["build_s"], result["ratio"], len(quiet), rounds)
  return result


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
      f"`{results['config']['importance']}`. Dense and pruned are timed in "
      "back-to-back pairs, one pair per pruned model per round; speed-up = "
      "median over rounds of dense time / pruned time; efficiency = speed-up "
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
  s = results.get("surgery")
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
  os.makedirs(config.output_dir, exist_ok=True)
  base = os.path.join(config.output_dir, config.output_name)
  with open(base + ".json", "w") as f:
    json.dump(results, f, indent=1, sort_keys=False)
    f.write("\n")
  notes = f"{_NOTES_MARKER}\n"
  if os.path.exists(base + ".md"):
    with open(base + ".md") as f:
      old = f.read()
    if _NOTES_MARKER in old:
      notes = old[old.index(_NOTES_MARKER):]
  with open(base + ".md", "w") as f:
    f.write(_markdown(results) + "\n" + notes)
  logging.info("Wrote %s.json and %s.md", base, base)


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
      "config": dataclasses.asdict(config),
      "machine": common.machine_info(),
      "backends": [],
  }
  monitor = CpuMonitor()
  waits = {}
  with tempfile.TemporaryDirectory() as tmp:
    for backend in config.backends:
      waits[backend] = _wait_for_quiet(config, monitor)
      results["backends"].append(
          _spawn_worker(config, backend, os.path.join(tmp, backend + ".json")))
  waits["surgery"] = _wait_for_quiet(config, monitor)
  results["surgery"] = _benchmark_surgery(config)
  results["waited_for_quiet"] = {k: {"seconds": w, "foreign_load": l}
                                 for k, (w, l) in waits.items()}
  results["seconds"] = time.perf_counter() - start
  _write_results(config, results)
  logging.info("Done in %.0f s.", results["seconds"])


if __name__ == "__main__":
  app.run(main)
