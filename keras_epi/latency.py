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
import json
import math
import os

import numpy as np

from keras_epi import _validation as validation
from keras_epi import graph
from keras_epi import latency_measure
from keras_epi import plan as plan_lib

FORMAT = "keras_epi.LatencyTable"
FORMAT_VERSION = 2  # 2 added "scale"; version 1 files load with scale 1
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
              ignore=(), calibrate=(0.0, 0.25, 0.5, 0.75), round_to=1,
              cache_dir=None, input_shape=None):
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
    no plan is read below the grid; an axis whose channels the graph keeps
    whole (model inputs and outputs, `ignore`) is timed at its full width
    only, and a depthwise layer's output width follows its input width (one
    axis). Layers with the same class, config, shapes and followers are
    timed once.

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
      cache_dir: A directory of tables measured before: a table of this
        model (its counted layers and shapes), these settings and this
        machine (CPU model, cores, platform, Keras and backend versions,
        `keras_epi.timing.same_machine`) is read back instead of measured
        again (its metadata then has ``"cached_from"``); a new one is
        saved there. None measures every time.
      input_shape: The per-example input shape (a list for several inputs)
        to time a model built on open sizes at, e.g. ``(224, 224, 3)``.
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
    return latency_measure.measure(
        cls, model, batch_size=batch_size, training=training, widths=widths,
        repeats=repeats, warmup=warmup, ignore=ignore, calibrate=calibrate,
        round_to=round_to, cache_dir=cache_dir, input_shape=input_shape)

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
      ValueError: for a counted layer the table has no entry for, whose
        spatial shape differs from the one measured, or that is wider than
        the table measured (a table of another model), or a bad `keep`.
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
      n_in = call.in_shapes[0][-1] if call.in_shapes else None
      n_out = call.out_shapes[0][-1]
      if (entry["out"] is not None and n_out > entry["out"][-1]) or (
          n_in is not None and n_in > entry["in"][-1]):
        raise ValueError(
            f"Layer '{key}' ({type(call.op).__name__}) of model "
            f"'{analysis.model.name}' has widths ({n_in}, {n_out}), wider "
            f"than the table measured (at most ({entry['in'][-1]}, "
            f"{(entry['out'] or entry['in'])[-1]})): the table is of "
            f"another model ('{self.metadata.get('model', '?')}'). Measure "
            "this model with keras_epi.LatencyTable.measure.")
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
    return latency_measure.time_plan(self, model, keep, ignore=ignore,
                                     repeats=repeats, warmup=warmup)

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


