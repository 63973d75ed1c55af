"""Measured latency: a per-layer table of time against width, and its model.

A MAC count is a poor proxy for time: narrow convolutions vectorise badly,
BatchNormalization and activations cost time but no MACs, and every op has a
fixed cost that no width removes. HALP (Shen et al., "Structural Pruning via
Latency-Saliency Knapsack", NeurIPS 2022) measures instead: the latency of
each layer at each width, once, on the machine that will run the model, then
chooses channels under a latency budget. `LatencyTable` is that measurement:

* `LatencyTable.measure(model)` times every *counted* call of the model
  (those whose layer-registry rule has a `macs` formula: convolutions of all
  kinds and Dense) as a small standalone model at a grid of (input width,
  output width). It then times the whole model, dense and cut to a few
  uniform widths, and fits ``whole = scale * (sum of the layers) + fixed``
  through those points: `fixed` is the per-op and element-wise cost that no
  layer entry sees, and `scale` corrects what timing layers one by one gets
  wrong about them inside the model (caches, threads, fused ops).
* `predict(model, keep)` reads the table at a plan's widths (bilinear
  interpolation), multiplies the sum by `scale` and adds `fixed`.
* `save` / `load`: plain JSON, with the machine, versions, backend, batch
  size and mode recorded beside the numbers.

`keras_epi.select_channels(..., budget="latency", latency_table=table)`
plans under it. Only Keras APIs are used to measure (`predict_on_batch`,
`train_on_batch`), so tables can be measured under the TensorFlow, JAX and
torch backends alike.
"""

import bisect
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import warnings

from absl import logging
import keras
import numpy as np

from keras_epi import _validation as validation
from keras_epi import graph
from keras_epi import plan as plan_lib
from keras_epi import surgeon

_L = keras.layers
FORMAT = "keras_epi.LatencyTable"
FORMAT_VERSION = 2  # 2 added "scale"; version 1 files load with scale 1
_FIXED_LABEL = 0  # graph's label of channels that must be kept
_FOLLOWERS = (_L.BatchNormalization, _L.Activation, _L.ReLU, _L.LeakyReLU,
              _L.ELU)
_MAX_FOLLOWERS = 2


class LatencyTable:
  """Seconds per layer call against its channel widths, plus a fixed term.

  Build one with `LatencyTable.measure` (or `load`); a table can also be
  written by hand, which is how the tests make exact oracles. A model's
  predicted seconds are ``scale * sum(entries at its widths) + fixed``.

  Args:
    entries: ``{layer key: entry}``. The key is the layer's path
      (``"conv1"``, ``"backbone/conv1"``); a layer called more than once has
      ``"path#k"`` for its call ``k >= 1``. An entry is a dict with
      ``"in"``: increasing input widths (ints >= 1), ``"out"``: increasing
      output widths, or None when the output width follows the input
      (depthwise convolutions), and ``"seconds"``: the times, shaped
      ``(len(in), len(out))`` (or ``(len(in),)`` when ``"out"`` is None).
      Optional keys (``"class"``, ``"in_shape"``, ``"out_shape"``,
      ``"followers"``, ``"raw_seconds"``) are kept as they are;
      ``"in_shape"``, when given, is checked against the model predicted.
    fixed: Seconds of the whole model that no entry accounts for.
    scale: Factor from the sum of the entries to their time inside the
      whole model (> 0; 1 for a table written by hand).
    metadata: A JSON-serialisable dict (machine, versions, batch size, ...).

  Raises:
    ValueError: for malformed entries (the message names the entry).

  Example:

  ```python
  table = keras_epi.LatencyTable.measure(model, batch_size=8)
  table.save("latency.json")
  keep = keras_epi.select_channels(model, scores, 0.5, budget="latency",
                                   latency_table=table)
  table.predict(model, keep) / table.predict(model)   # about 0.5
  ```
  """

  def __init__(self, entries, fixed=0.0, metadata=None, scale=1.0):
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) for k in entries):
      raise ValueError(f"`entries` must be a dict {{layer key: entry}}, "
                       f"received {type(entries).__name__}.")
    if not validation.is_number(fixed) or not math.isfinite(fixed):
      raise ValueError(f"`fixed` must be a finite number of seconds, "
                       f"received {fixed!r}.")
    if not validation.is_number(scale) or not (math.isfinite(scale) and
                                                scale > 0):
      raise ValueError(f"`scale` must be a finite number > 0, received "
                       f"{scale!r}.")
    if metadata is not None and not isinstance(metadata, dict):
      raise ValueError(f"`metadata` must be a dict or None, received "
                       f"{type(metadata).__name__}.")
    self.entries = {key: _checked_entry(key, e) for key, e in entries.items()}
    self.fixed = float(fixed)
    self.scale = float(scale)
    self.metadata = dict(metadata or {})

  # -- measuring ------------------------------------------------------------

  @classmethod
  def measure(cls, model, *, batch_size=8, training=False,
              widths=(0.25, 0.5, 0.75, 1.0), repeats=5, warmup=2,
              ignore=(), calibrate=(0.0, 0.25, 0.5, 0.75), round_to=1):
    """Times `model`'s counted layers at a grid of widths on this machine.

    Every call of a layer whose registry rule has a `macs` formula
    (convolutions, Dense) becomes a standalone model: an input of the call's
    shape with the input width changed, a fresh layer made from the layer's
    config with the output width changed through its rule's `config`
    (`keras_epi.register_layer`'s `width`), and the layers that simply
    follow it: up to two BatchNormalization or activation layers
    (Activation, ReLU, LeakyReLU, ELU), each the only reader of the tensor
    before it, since their cost follows the same output width. Anything
    else (residual adds, pooling, concatenations, a BN after a branch) is
    left to the `fixed` term. Widths are ``round(f * C)`` for each fraction
    f, rounded to a multiple of `round_to` and at least 1, and the narrowest
    width a plan can give, `round_to` (full width always included), so that
    no plan is read below the grid; an axis whose channels the graph keeps whole (model inputs
    and outputs, `ignore`) is timed at its full width only, and a depthwise
    layer's output width follows its input width (one axis). Layers with the same class, config, shapes and
    followers are timed once.

    A time is the median of `repeats` calls after `warmup` calls, of
    ``predict_on_batch`` (``training=False``) or ``train_on_batch``
    (``training=True``: SGD with learning rate 0 and the mean of the output
    as the loss; a per-channel PReLU before the layer, where the layer does
    not read a model input, makes the step compute the input gradient as in
    the whole model). The inputs are backend tensors made once, and every
    standalone model returns only a per-example mean, so no array copy is
    timed. The time of the same call on a model without the layer (its
    input, the PReLU, the mean) is subtracted. Times are then made
    non-increasing as widths shrink (each is at most the time of every wider
    point), so that noise cannot make a narrower layer predict slower; the
    medians as measured are kept as ``"raw_seconds"``.

    Then whole models are timed, each a clone with fresh weights (so the
    caller's model, its weights and BatchNormalization statistics are
    untouched): the dense model and, for each fraction f of `calibrate`,
    the model with every channel group cut to its first ``round(f * size)``
    channels (rounded the same way; `keras_epi.prune_model`). They are
    timed in ``max(2 * repeats, 7)`` rounds, each timing every model in a
    rotating order (one untimed call, then the median of 3 back-to-back
    calls), so that a slow spell of the machine falls on all of them; the
    median over rounds is kept. `scale` and `fixed` are the line ``whole =
    scale * layers + fixed`` through the dense point that fits the others
    best (least squares), where ``layers`` is the sum of the entries at the
    model's widths: the dense model, which every ratio is taken against, is
    predicted as measured. With ``calibrate=()`` (or where the model cannot
    be cut, or the fit gives no positive scale), ``scale = 1`` and
    ``fixed`` = dense whole - the sum at full width.

    Args:
      model: A built functional or Sequential model with fixed input shapes.
      batch_size: Examples per timed call.
      training: Time a training step instead of inference.
      widths: Fractions of each layer's widths to time, in (0, 1].
      repeats: Timed calls per point (the median is kept).
      warmup: Untimed calls before them (the first traces and compiles).
      ignore: Layer names whose channels stay (see
        `keras_epi.channel_groups`): their widths are not varied.
      calibrate: Fractions in [0, 1) of uniform widths at which the whole
        model is also timed to fit `scale` and `fixed` (0: every group at
        its narrowest, `round_to` channels); ``()`` for the dense model
        alone.
      round_to: Time widths that are multiples of this (as the planner's
        `round_to` keeps them). On many back ends a width off a multiple
        of 8 or 16 takes a slower kernel, so a table measured at round
        widths predicts plans made with the same `round_to` better.

    Returns:
      A `LatencyTable` whose `metadata` records the machine (platform,
      processor, CPU count), the Keras and backend versions, the backend,
      `batch_size`, `training`, the date, the grid and how long the
      measurement took (``"measure_seconds"``).

    Raises:
      ValueError: for a bad argument, or a counted layer of unknown shape.
    """
    batch_size = _positive_int("batch_size", batch_size)
    repeats = _positive_int("repeats", repeats)
    if not validation.is_integer(warmup) or warmup < 0:
      raise ValueError(f"`warmup` must be an integer >= 0, received "
                       f"{warmup!r}.")
    if not isinstance(training, (bool, np.bool_)):
      raise ValueError(f"`training` must be True or False, received "
                       f"{training!r}.")
    widths = _fractions(widths)
    calibrate = _calibration_fractions(calibrate)
    round_to = _positive_int("round_to", round_to)
    started = time.perf_counter()
    analysis = graph.analyze(model, ignore, strict=False)
    timer = _Timer(batch_size, bool(training), int(warmup), repeats)
    entries, measured = {}, {}
    counted = plan_lib.counted_calls(analysis)
    for key, call in counted:
      _check_known_shapes(call)
      spec = _Spec(analysis, call, widths, bool(training), round_to)
      if spec.signature not in measured:
        measured[spec.signature] = spec.measure(timer)
        logging.info("LatencyTable: %s (%s) timed at %d widths",
                     key, type(call.op).__name__,
                     np.size(measured[spec.signature]))
      raw = measured[spec.signature]
      entries[key] = spec.entry(raw)
    layers = cls(entries).predictor(analysis)  # scale 1, fixed 0
    points = _calibration_points(model, analysis, calibrate, ignore, timer,
                                 layers, round_to)
    whole, full = points[0]["whole_seconds"], points[0]["layer_seconds"]
    scale, fixed = _fit(points)
    if fixed < 0:
      logging.info(
          "LatencyTable: the fixed term is negative (%.4g s): the layers "
          "timed alone (%.4g s at full width) cost more than inside the "
          "whole model (%.4g s).", fixed, full, whole)
    metadata = _environment()
    metadata.update({
        "model": model.name, "batch_size": batch_size,
        "training": bool(training), "widths": list(widths),
        "round_to": round_to,
        "repeats": repeats, "warmup": int(warmup),
        "whole_seconds": whole, "layer_seconds": full,
        "calibration": points,
        "distinct_layers": len(measured),
        "measure_seconds": time.perf_counter() - started,
        "timing": ("train_on_batch" if training else "predict_on_batch"),
    })
    return cls(entries, fixed, metadata, scale=scale)

  # -- predicting -----------------------------------------------------------

  def predict(self, model, keep=None, *, ignore=()):
    """Predicted seconds of `model`, or of `model` pruned by the plan `keep`.

    Per counted call, the entry of its key is read at the call's widths
    under the plan (`keras_epi.plan.ResolvedPlan`) by bilinear
    interpolation between the measured widths (linear for a depthwise
    entry); below the narrowest measured width the narrowest interval is
    extended linearly (`interpolate`). ``scale`` times the sum, plus
    `fixed`, is the prediction. Layers are keyed by
    path, which `keras_epi.prune_model` keeps, so a table measured on the
    dense model predicts both its plans and the pruned models themselves.

    Args:
      model: The model (dense, or already pruned).
      keep: A plan ``{group name: kept indices}``; None or ``{}`` for the
        model as it is.
      ignore: The `ignore` of `keras_epi.channel_groups`.

    Returns:
      Seconds per call at the table's batch size, a float.

    Raises:
      ValueError: for a counted layer the table has no entry for, or whose
        spatial shape differs from the one measured, or a bad `keep`.
    """
    analysis = graph.analyze(model, ignore, strict=bool(keep))
    return self.predictor(analysis)(keep or {})

  def predictor(self, analysis):
    """``f(keep) -> seconds`` for one `graph.Analysis` (for planners)."""
    items = []
    for key, call in plan_lib.counted_calls(analysis):
      entry = self.entries.get(key)
      if entry is None:
        missing = [k for k, _ in plan_lib.counted_calls(analysis)
                   if k not in self.entries]
        raise ValueError(
            f"The latency table has no entry for layer '{key}' "
            f"({type(call.op).__name__}) of model '{analysis.model.name}' "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}). "
            f"It was measured on model "
            f"'{self.metadata.get('model', '?')}'; measure this model with "
            "keras_epi.LatencyTable.measure.")
      shape = entry.get("in_shape")
      if shape is not None and call.in_shapes and (
          list(shape[:-1]) != list(call.in_shapes[0][:-1])):
        raise ValueError(
            f"Layer '{key}' ({type(call.op).__name__}) was measured on "
            f"inputs of shape {tuple(shape)}, but model "
            f"'{analysis.model.name}' gives it {tuple(call.in_shapes[0])}. "
            "Measure the table at this input size.")
      items.append((call, entry))

    def predict(keep):
      resolved = plan_lib.ResolvedPlan(analysis, keep)
      total = 0.0
      for call, entry in items:
        masks = resolved.masks(call)
        n_in = int(masks["in"].sum()) if masks["in"] is not None else 0
        n_out = int(masks["out"].sum())
        total += interpolate(entry, n_in, n_out)
      return self.scale * total + self.fixed
    return predict

  def time_plan(self, model, keep, *, ignore=(), repeats=None, warmup=None):
    """Measures the fraction of `model`'s time that the plan `keep` takes.

    The table predicts; this measures, on this machine, now: the dense model
    and the model pruned by `keep` (`keras_epi.prune_model`), both clones
    with fresh weights (the caller's model is untouched), are timed in
    alternating rounds as `measure` times its whole models (the table's
    batch size and mode, ``predict_on_batch`` or ``train_on_batch``). The
    measured fraction is the median over rounds of the paired ratio
    pruned / dense, so a slow spell of the machine falls on both.

    Args:
      model: The dense model the plan was made on.
      keep: A plan ``{group name: kept indices}``.
      ignore: The `ignore` of `keras_epi.channel_groups`.
      repeats: Rounds are ``max(2 * repeats, 7)``; default: the table's.
      warmup: Untimed calls before them; default: the table's.

    Returns:
      A dict of plain floats: ``measured_fraction`` (median paired ratio),
      ``measured_quartiles`` ([25th, 75th] percentiles of the paired
      ratios), ``predicted_fraction`` (``predict(model, keep) /
      predict(model)``), ``dense_seconds`` and ``pruned_seconds`` (medians
      per call), ``rounds``.

    Raises:
      ValueError: for a table without ``batch_size`` and ``training`` in
        its metadata (a table written by hand: add them), or a bad plan.
    """
    meta = self.metadata
    if not validation.is_integer(meta.get("batch_size")) or not isinstance(
        meta.get("training"), bool):
      raise ValueError(
          "LatencyTable.time_plan needs the batch size and mode the table "
          "was measured at: its metadata lacks an integer 'batch_size' or a "
          "boolean 'training' (add them to a table written by hand).")
    repeats = _positive_int("repeats", meta.get("repeats", 5)
                            if repeats is None else repeats)
    warmup = validation.integer(
        "warmup", meta.get("warmup", 2) if warmup is None else warmup, 0)
    timer = _Timer(int(meta["batch_size"]), meta["training"], warmup,
                   repeats)
    pruned = surgeon.prune_model(model, keep, ignore=ignore)
    dense, small = timer.rounds([timer.whole(model), timer.whole(pruned)])
    ratios = np.asarray(small) / np.asarray(dense)
    return {
        "measured_fraction": float(np.median(ratios)),
        "measured_quartiles": [float(q) for q in
                               np.percentile(ratios, [25, 75])],
        "predicted_fraction": (self.predict(model, keep, ignore=ignore) /
                               self.predict(model, ignore=ignore)),
        "dense_seconds": float(np.median(dense)),
        "pruned_seconds": float(np.median(small)),
        "rounds": len(ratios),
    }

  # -- files ----------------------------------------------------------------

  def to_dict(self):
    """The table as plain JSON-serialisable data."""
    return {"format": FORMAT, "version": FORMAT_VERSION,
            "metadata": self.metadata, "fixed": self.fixed,
            "scale": self.scale,
            "entries": {key: _plain(e) for key, e in self.entries.items()}}

  @classmethod
  def from_dict(cls, data):
    """The table of `to_dict`'s data. Raises ValueError if malformed."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
      raise ValueError(f"Not a {FORMAT}: expected a JSON object with "
                       f"\"format\": \"{FORMAT}\".")
    if data.get("version") not in (1, FORMAT_VERSION):
      raise ValueError(f"{FORMAT} version {data.get('version')!r} is not "
                       f"supported (this keras_epi reads 1 to "
                       f"{FORMAT_VERSION}).")
    for name in ("entries", "fixed"):
      if name not in data:
        raise ValueError(f"{FORMAT} without {name!r}.")
    return cls(data["entries"], data["fixed"], data.get("metadata"),
               scale=data.get("scale", 1.0))

  def save(self, path):
    """Writes the table as JSON to `path`."""
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_dict(), f, indent=1)

  @classmethod
  def load(cls, path):
    """Reads a table written by `save`.

    Raises:
      ValueError: if the file is not valid JSON or not a well-formed table
        (the message names the file and what is wrong).
    """
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{os.fspath(path)!r} is not a {FORMAT} "
                       f"(not JSON: {e}).") from None
    try:
      return cls.from_dict(data)
    except ValueError as e:
      raise ValueError(f"{os.fspath(path)!r}: {e}") from None

  def __eq__(self, other):
    if not isinstance(other, LatencyTable):
      return NotImplemented
    return self.to_dict() == other.to_dict()

  def __repr__(self):
    meta = self.metadata
    return (f"LatencyTable({len(self.entries)} layers, fixed={self.fixed:.4g}"
            f" s, scale={self.scale:.4g}, batch_size={meta.get('batch_size')}, "
            f"training={meta.get('training')}, "
            f"backend={meta.get('backend')!r})")


def interpolate(entry, n_in, n_out):
  """An entry's seconds at widths ``(n_in, n_out)``: bilinear between the
  measured widths (linear in `n_in` where ``entry["out"]`` is None).

  Below the narrowest measured width the first interval is extended
  linearly (an affine fit of the two narrowest points, so a per-call cost
  that does not shrink is kept), and the result is at least 0; above the
  widest, the widest value is taken."""
  seconds = entry["seconds"]
  i0, i1, s = _bracket(entry["in"], n_in)
  if entry["out"] is None:
    value = (1 - s) * seconds[i0] + s * seconds[i1]
  else:
    j0, j1, t = _bracket(entry["out"], n_out)
    value = ((1 - s) * ((1 - t) * seconds[i0, j0] + t * seconds[i0, j1]) +
             s * ((1 - t) * seconds[i1, j0] + t * seconds[i1, j1]))
  return max(float(value), 0.0)


def _bracket(grid, value):
  """``(i0, i1, weight of i1)`` of `value` among the increasing `grid`; the
  weight is negative below the grid (linear extrapolation)."""
  if len(grid) == 1 or value >= grid[-1]:
    return len(grid) - 1, len(grid) - 1, 0.0
  i1 = max(bisect.bisect_left(grid, value), 1)
  i0 = i1 - 1
  return i0, i1, (value - grid[i0]) / (grid[i1] - grid[i0])


# -- what is timed ------------------------------------------------------------


def _check_known_shapes(call):
  shapes = [*call.in_shapes[:1], *call.out_shapes[:1]]
  if any(d is None for s in shapes for d in s):
    raise ValueError(
        f"LatencyTable.measure: layer '{call.path}' ({type(call.op).__name__})"
        f" has an unknown shape (input {tuple(call.in_shapes[0])}, output "
        f"{tuple(call.out_shapes[0])}). Build the model with a fixed input "
        "shape, e.g. keras.Input((224, 224, 3)).")
  if len(call.in_shapes) != 1:
    raise ValueError(
        f"LatencyTable.measure: layer '{call.path}' "
        f"({type(call.op).__name__}) has {len(call.in_shapes)} inputs; only "
        "single-input layers can be timed alone. Pass it in `ignore=`.")


class _Spec:
  """One counted call: its grid, followers and standalone models."""

  def __init__(self, analysis, call, widths, training, round_to):
    self.call = call
    self.in_shape = tuple(call.in_shapes[0])
    self.out_shape = tuple(call.out_shapes[0])
    c_in, c_out = self.in_shape[-1], self.out_shape[-1]
    ins = analysis.find(call.ins[0])
    outs = analysis.find(call.outs[0])
    in_free = int((ins != _FIXED_LABEL).sum())
    out_free = int((outs != _FIXED_LABEL).sum())
    self.tied = bool(in_free and len(outs) and
                     set(outs.tolist()) <= set(ins.tolist()) and
                     c_out % c_in == 0)
    if not in_free or len(ins) != c_in:
      self.in_grid = [c_in]
    else:
      self.in_grid = _grid(c_in, c_in - in_free, widths, round_to)
    if self.tied:
      self.out_grid = None
    elif not out_free or call.rule.config is None or len(outs) != c_out:
      self.out_grid = [c_out]
    else:
      self.out_grid = _grid(c_out, c_out - out_free, widths, round_to)
    self.followers = _followers(analysis, call)
    tensor = call.node.input_tensors[0]
    self.dtype = tensor.dtype
    self.gate = training and not any(
        tensor is t for t in analysis.model.inputs)
    config = call.op.get_config()
    config.pop("name", None)
    self.signature = json.dumps(
        [type(call.op).__module__, type(call.op).__qualname__, config,
         self.in_shape, self.out_shape, self.in_grid, self.out_grid,
         self.gate, str(self.dtype)] +
        [[type(f.op).__qualname__, _nameless(f.op.get_config())]
         for f in self.followers], sort_keys=True, default=str)

  def widths(self):
    """``[(n_in, n_out)]`` of the grid, row-major."""
    c_in, c_out = self.in_shape[-1], self.out_shape[-1]
    if self.out_grid is None:
      return [(w, w * c_out // c_in) for w in self.in_grid]
    return [(a, b) for a in self.in_grid for b in self.out_grid]

  def model(self, n_in, n_out):
    """The standalone model of the call at these widths."""
    call = self.call
    x = keras.Input((*self.in_shape[:-1], n_in), dtype=self.dtype)
    h = _gate(x) if self.gate else x
    config = call.op.get_config()
    if call.rule.config is not None:
      config = call.rule.config(call.op, dict(config), n_in, n_out)
    h = surgeon.layer_from_config(call.op, config)(h)
    for follower in self.followers:
      h = surgeon.layer_from_config(follower.op,
                                    follower.op.get_config())(h)
    return keras.Model(x, _per_example_mean(h))

  def null_model(self, n_in):
    """The same model without the layer: what is subtracted."""
    x = keras.Input((*self.in_shape[:-1], n_in), dtype=self.dtype)
    h = _gate(x) if self.gate else x
    return keras.Model(x, _per_example_mean(h))

  def measure(self, timer):
    """Net seconds on the grid, as measured (NumPy, the entry's shape)."""
    values = []
    for n_in, n_out in self.widths():
      seconds = timer.time(self.model(n_in, n_out))
      null = timer.null(self, n_in)
      values.append(max(seconds - null, 0.0))
    shape = (len(self.in_grid),) if self.out_grid is None else (
        len(self.in_grid), len(self.out_grid))
    return np.asarray(values, dtype=np.float64).reshape(shape)

  def entry(self, raw):
    return {"in": list(self.in_grid), "out": self.out_grid,
            "seconds": _monotone(raw), "raw_seconds": raw,
            "class": type(self.call.op).__name__,
            "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "followers": [f.path for f in self.followers]}


def _grid(full, minimum, widths, round_to=1):
  values = {max(minimum, plan_lib.round_width(f * full, round_to, full))
            for f in (0.0, *widths)}
  values.add(full)
  return sorted(values)


def _followers(analysis, call):
  """Up to two BN/activation calls that alone read the call's output, in
  the same graph, at the same width."""
  readers = {}
  for other in analysis.all_calls:
    for t in other.node.input_tensors:
      readers.setdefault(id(t), {})[other.path] = other
  followers, current = [], call
  while len(followers) < _MAX_FOLLOWERS and len(current.node.outputs) == 1:
    nxt = list(readers.get(id(current.node.outputs[0]), {}).values())
    if len(nxt) != 1:
      break
    nxt = nxt[0]
    if not _simple_follower(nxt, call):
      break
    followers.append(nxt)
    current = nxt
  return followers


def _simple_follower(call, producer):
  op = call.op
  if not isinstance(op, _FOLLOWERS) or len(call.node.input_tensors) != 1:
    return False
  if tuple(call.out_shapes[0]) != tuple(producer.out_shapes[0]):
    return False
  if isinstance(op, _L.BatchNormalization):
    ndim = len(call.out_shapes[0]) + 1
    axes = op.axis if isinstance(op.axis, (list, tuple)) else [op.axis]
    return [a % ndim for a in axes] == [ndim - 1]
  activation = getattr(op, "activation", None)
  name = getattr(activation, "__name__", activation)
  return name not in ("softmax", "log_softmax")


def _nameless(config):
  config = dict(config)
  config.pop("name", None)
  return config


def _gate(x):
  """A cheap trainable per-channel op, so a train step computes the input
  gradient of the layer after it."""
  return _L.PReLU(shared_axes=list(range(1, len(x.shape) - 1)) or None)(x)


def _per_example_mean(h):
  return keras.ops.mean(keras.ops.cast(h, "float32"),
                        axis=tuple(range(1, len(h.shape))))


def _mean_loss(y_true, y_pred):
  del y_true
  return keras.ops.mean(y_pred)


def _monotone(raw):
  """Each value at most the values at every wider point (a running minimum
  from the widest point down, along each axis)."""
  out = np.asarray(raw, dtype=np.float64)
  for axis in range(out.ndim):
    out = np.flip(np.minimum.accumulate(np.flip(out, axis), axis=axis), axis)
  return out


class _Timer:
  """Medians of `predict_on_batch` / `train_on_batch` calls."""

  def __init__(self, batch_size, training, warmup, repeats):
    self.batch_size = batch_size
    self.training = training
    self.warmup = warmup
    self.repeats = repeats
    self._nulls = {}
    self._rng = np.random.default_rng(0)

  def inputs(self, model):
    tensors = []
    for t in model.inputs:
      shape = (self.batch_size, *t.shape[1:])
      if "float" in str(t.dtype):
        value = self._rng.normal(size=shape)
      else:
        value = np.zeros(shape)
      tensors.append(keras.ops.convert_to_tensor(value.astype(t.dtype)))
    return tensors[0] if len(tensors) == 1 else tensors

  def time(self, model):
    step = self.step(model)
    for _ in range(self.warmup):
      step()
    times = []
    for _ in range(self.repeats):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    return float(np.median(times))

  def time_together(self, models, burst=3):
    """Seconds per call of each of `models` when called back to back.

    ``max(2 * repeats, 7)`` rounds each time every model in an order that
    rotates from round to round: one untimed call (the model's weights
    come back into the caches after another model's call), then `burst`
    timed calls, of which the median is the round's value. The median over
    rounds is returned."""
    return [float(np.median(t)) for t in self.rounds(models, burst)]

  def rounds(self, models, burst=3):
    """`time_together`'s per-round seconds: one list per model."""
    steps = [self.step(m) for m in models]
    for step in steps:
      for _ in range(self.warmup):
        step()
    times = [[] for _ in steps]
    for r in range(max(2 * self.repeats, 7)):
      for k in range(len(steps)):
        i = (k + r) % len(steps)
        steps[i]()
        calls = []
        for _ in range(burst):
          start = time.perf_counter()
          steps[i]()
          calls.append(time.perf_counter() - start)
        times[i].append(float(np.median(calls)))
    return times

  def step(self, model):
    """One timed call of `model`, compiled for it."""
    x = self.inputs(model)
    if self.training:
      model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                    loss=_mean_loss)
      y = keras.ops.zeros((self.batch_size,))

      def step():
        with warnings.catch_warnings():  # a null model has no weights
          warnings.simplefilter("ignore")
          model.train_on_batch(x, y)
    else:
      def step():
        model.predict_on_batch(x)
    return step

  def null(self, spec, n_in):
    key = (spec.in_shape[:-1], n_in, str(spec.dtype), spec.gate)
    if key not in self._nulls:
      self._nulls[key] = self.time(spec.null_model(n_in))
    return self._nulls[key]

  def whole(self, model):
    """The model to time for the whole `model`: a clone (fresh weights,
    same architecture), so the caller's model gains no graph node and keeps
    its weights and BatchNormalization statistics."""
    try:
      model = keras.models.clone_model(model)
    except Exception as e:  # pylint: disable=broad-except
      if self.training:
        raise ValueError(
            f"LatencyTable.measure(training=True) times a clone of the model "
            f"(so that its weights stay as they are), but "
            f"keras.models.clone_model failed on model '{model.name}': "
            f"{e}") from e
      logging.info("LatencyTable: clone_model failed (%s); timing the "
                   "model itself.", e)
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype) for t in model.inputs]
    outputs = keras.tree.flatten(model(inputs[0] if len(inputs) == 1
                                       else inputs))
    total = _per_example_mean(outputs[0])
    for out in outputs[1:]:
      total = total + _per_example_mean(out)
    return keras.Model(inputs, total)


def _calibration_points(model, analysis, fractions, ignore, timer, layers,
                        round_to):
  """``[{fraction, layer_seconds, whole_seconds}]``: the dense model first,
  then `model` cut to each uniform fraction of its groups' widths."""
  plans = [(1.0, {})]
  for f in sorted(fractions, reverse=True):
    plans.append((f, {g.name: np.arange(plan_lib.round_width(
        f * g.size, round_to, g.size)) for g in analysis.groups}))
  models = [timer.whole(model)]
  for f, keep in plans[1:]:
    try:
      small = surgeon.prune_model(model, keep, ignore=ignore)
    except ValueError as e:  # e.g. a layer the surgeon cannot cut
      logging.warning("LatencyTable: the model cannot be cut to uniform "
                      "widths (%s); fitting `fixed` on the dense model "
                      "alone (scale 1).", e)
      plans = plans[:1]
      models = models[:1]
      break
    models.append(timer.whole(small))
  seconds = timer.time_together(models)
  return [{"fraction": f, "layer_seconds": layers(keep),
           "whole_seconds": s} for (f, keep), s in zip(plans, seconds)]


def _fit(points):
  """``(scale, fixed)`` of the least-squares line through the other points
  that passes through the first (the dense model, which every ratio is
  taken against, so it is predicted exactly); scale 1 if there is one
  point, or if the line has no positive slope (then with a warning)."""
  dense = points[0]
  x0, y0 = dense["layer_seconds"], dense["whole_seconds"]
  if len(points) > 1:
    x = np.array([p["layer_seconds"] for p in points[1:]]) - x0
    y = np.array([p["whole_seconds"] for p in points[1:]]) - y0
    if float(x @ x) > 0:
      scale = float(x @ y) / float(x @ x)
      if scale > 0 and math.isfinite(scale):
        return scale, y0 - scale * x0
    x, y = x + x0, y + y0
    logging.warning(
        "LatencyTable: the whole model's times at uniform widths %s do not "
        "grow with the layers' times %s; using scale 1 and the dense model "
        "alone. On a busy machine, measure again with more `repeats`.",
        [round(v, 6) for v in y], [round(v, 6) for v in x])
  return 1.0, dense["whole_seconds"] - dense["layer_seconds"]


# -- metadata and validation --------------------------------------------------


def _environment():
  backend = keras.backend.backend()
  package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch",
             "numpy": "numpy"}.get(backend, backend)
  env = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "keras": keras.__version__,
      "backend": backend,
      "backend_version": _version(package),
  }
  if "tensorflow" in sys.modules:
    env["tensorflow"] = _version("tensorflow")
  return env


def _version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _plain(entry):
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
          for k, v in entry.items()}


def _checked_entry(key, entry):
  """A copy of an entry with NumPy seconds; ValueError if malformed."""
  where = f"entry {key!r}"
  if not isinstance(entry, dict):
    raise ValueError(f"{where} must be a dict, received "
                     f"{type(entry).__name__}.")
  for name in ("in", "out", "seconds"):
    if name not in entry:
      raise ValueError(f"{where} has no {name!r}.")
  entry = dict(entry)
  entry["in"] = _widths(where, "in", entry["in"])
  if entry["out"] is not None:
    entry["out"] = _widths(where, "out", entry["out"])
  shape = (len(entry["in"]),) if entry["out"] is None else (
      len(entry["in"]), len(entry["out"]))
  for name in ("seconds", "raw_seconds"):
    if name not in entry:
      continue
    try:
      value = np.asarray(entry[name], dtype=np.float64)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: {name!r} must be numbers.") from None
    if value.shape != shape:
      raise ValueError(f"{where}: {name!r} has shape {value.shape}; its "
                       f"widths give {shape}.")
    if not np.isfinite(value).all() or (value < 0).any():
      raise ValueError(f"{where}: {name!r} must be finite seconds >= 0.")
    entry[name] = value
  shape = entry.get("in_shape")
  if shape is not None and not (isinstance(shape, (list, tuple)) and all(
      validation.is_integer(d) for d in shape) and shape):
    raise ValueError(f"{where}: 'in_shape' must be a list of ints.")
  return entry


def _widths(where, name, values):
  if not isinstance(values, (list, tuple)) or not values or not all(
      validation.is_integer(v) and v >= 1 for v in values) or any(
          a >= b for a, b in zip(values, values[1:])):
    raise ValueError(f"{where}: {name!r} must be increasing integers >= 1, "
                     f"received {values!r}.")
  return [int(v) for v in values]


def _fractions(widths):
  if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
    raise ValueError(f"`widths` must be fractions in (0, 1], received "
                     f"{widths!r}.")
  widths = list(widths)
  if not widths or not all(validation.is_number(f) and 0.0 < f <= 1.0 for f in widths):
    raise ValueError(f"`widths` must be fractions in (0, 1], received "
                     f"{widths!r}.")
  return sorted({float(f) for f in widths} | {1.0})


def _calibration_fractions(values):
  if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
    raise ValueError(f"`calibrate` must be fractions in [0, 1), received "
                     f"{values!r}.")
  values = list(values)
  if not all(validation.is_number(f) and 0.0 <= f < 1.0 for f in values):
    raise ValueError(f"`calibrate` must be fractions in [0, 1), received "
                     f"{values!r}.")
  return sorted({float(f) for f in values})


def _positive_int(name, value):
  if not validation.is_integer(value) or value < 1:
    raise ValueError(f"`{name}` must be an integer >= 1, received "
                     f"{value!r}.")
  return int(value)
