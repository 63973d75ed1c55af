"""Measuring a `keras_epi.LatencyTable` on this machine (internal to it).

`measure` times every counted layer call of a model as a standalone model
at a grid of widths, then the whole model dense and cut to uniform widths,
and fits the table's `scale` and `fixed` (`fit_calibration`); `time_plan`
times a plan against the dense model. All timing goes through
`keras_epi.timing`, in alternating rounds, and uses only Keras APIs
(`predict_on_batch`, `train_on_batch`), so any backend can measure. With a
`cache_dir`, a table measured before for the same model, settings and
machine is read back instead of measured again.
"""

import hashlib
import math
import json
import os
import time
import warnings

from absl import logging
import keras
import numpy as np

from keras_epi import _functional as functional
from keras_epi import _validation as validation
from keras_epi import graph
from keras_epi import layers as layers_lib
from keras_epi import plan as plan_lib
from keras_epi import surgeon
from keras_epi import timing

_L = keras.layers
_MAX_FOLLOWERS = 2


def measure(table_class, model, *, batch_size, training, widths, repeats,
            warmup, ignore, calibrate, round_to, cache_dir=None,
            input_shape=None):
  """`LatencyTable.measure` (see there); `table_class` makes the table."""
  batch_size = validation.integer("batch_size", batch_size, 1)
  repeats = validation.integer("repeats", repeats, 1)
  warmup = validation.integer("warmup", warmup, 0)
  training = validation.boolean("training", training)
  widths = sorted(set(validation.fractions("widths", widths, "(0, 1]")) |
                  {1.0})
  calibrate = sorted(set(validation.fractions("calibrate", calibrate,
                                              "[0, 1)")))
  round_to = validation.integer("round_to", round_to, 1)
  started = time.perf_counter()
  shapes = functional.check_input_shapes(model, input_shape)
  analysis = graph.analyze(model, ignore, strict=False, input_shapes=shapes)
  settings = {"batch_size": batch_size,
              "training": training, "widths": list(widths),
              "round_to": round_to, "repeats": repeats, "warmup": warmup,
              "calibrate": list(calibrate), "ignore": sorted(ignore),
              "input_shape": shapes and [list(s) for s in shapes],
              "layers": _architecture(analysis)}
  if cache_dir is not None:
    cached = _cached(table_class, cache_dir, settings)
    if cached is not None:
      return cached
  timer = _Timer(batch_size, training, warmup, repeats, shapes)
  entries, measured = {}, {}
  counted = plan_lib.counted_calls(analysis)
  for key, call in counted:
    if call.rule.call_macs is not None:
      raise ValueError(
          f"LatencyTable times convolutions and Dense layers at a grid of "
          f"widths; layer '{key}' ({type(call.op).__name__}) is an attention "
          "layer, which it cannot time yet. Plan its model with "
          "budget='macs' or budget='neurons'.")
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
  layers = table_class(entries).predictor(analysis)  # scale 1, fixed 0
  points = _calibration_points(model, analysis, calibrate, ignore, timer,
                               layers, round_to)
  whole, full = points[0]["whole_seconds"], points[0]["layer_seconds"]
  scale, fixed = fit_calibration(points)
  if fixed < 0:
    logging.info(
        "LatencyTable: the fixed term is negative (%.4g s): the layers "
        "timed alone (%.4g s at full width) cost more than inside the "
        "whole model (%.4g s).", fixed, full, whole)
  metadata = timing.machine_info()
  metadata.update({
      "model": model.name,
      **{k: v for k, v in settings.items() if k != "layers"},
      "whole_seconds": whole, "layer_seconds": full,
      "calibration": points,
      "distinct_layers": len(measured),
      "measure_seconds": time.perf_counter() - started,
      "timing": ("train_on_batch" if training else "predict_on_batch"),
  })
  table = table_class(entries, fixed, metadata, scale=scale)
  if cache_dir is not None:
    path = _cache_path(cache_dir, settings)
    os.makedirs(cache_dir, exist_ok=True)
    table.save(path + ".tmp")
    os.replace(path + ".tmp", path)
  return table


def _architecture(analysis):
  """What a table's entries depend on: every counted call's key, class and
  shapes."""
  return [[key, type(call.op).__name__, list(call.in_shapes[0]),
           list(call.out_shapes[0])]
          for key, call in plan_lib.counted_calls(analysis)]


def _cache_path(cache_dir, settings):
  digest = hashlib.sha256(json.dumps(
      [settings, {k: timing.machine_info().get(k)
                  for k in timing.MACHINE_KEYS}],
      sort_keys=True, default=str).encode()).hexdigest()[:16]
  return os.path.join(os.fspath(cache_dir), f"latency_{digest}.json")


def _cached(table_class, cache_dir, settings):
  """The table in `cache_dir` measured with these settings on this machine
  (the same CPU, cores and versions), or None."""
  path = _cache_path(cache_dir, settings)
  if not os.path.isfile(path):
    return None
  try:
    table = table_class.load(path)
  except ValueError as e:
    logging.warning("LatencyTable: ignoring the cached table %s (%s).",
                    path, e)
    return None
  meta = table.metadata
  if not timing.same_machine(meta, timing.machine_info()) or any(
      meta.get(k) != v for k, v in settings.items() if k != "layers"):
    return None
  logging.info("LatencyTable: read %s, measured on %s (%.0f s then).", path,
               meta.get("date"), meta.get("measure_seconds", float("nan")))
  table.metadata["cached_from"] = path
  return table



def time_plan(table, model, keep, *, ignore=(), repeats=None, warmup=None):
  """`LatencyTable.time_plan` (see there)."""
  meta = table.metadata
  if not validation.is_integer(meta.get("batch_size")) or not isinstance(
      meta.get("training"), bool):
    raise ValueError(
        "LatencyTable.time_plan needs the batch size and mode the table "
        "was measured at: its metadata lacks an integer 'batch_size' or a "
        "boolean 'training' (add them to a table written by hand).")
  repeats = validation.integer("repeats", meta.get("repeats", 5)
                               if repeats is None else repeats, 1)
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
      "predicted_fraction": (table.predict(model, keep, ignore=ignore) /
                             table.predict(model, ignore=ignore)),
      "dense_seconds": float(np.median(dense)),
      "pruned_seconds": float(np.median(small)),
      "rounds": len(ratios),
  }



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
    in_free = int((ins != graph.FIXED).sum())
    out_free = int((outs != graph.FIXED).sum())
    self.tied = bool(in_free and len(outs) and
                     set(outs.tolist()) <= set(ins.tolist()) and
                     c_out % c_in == 0)
    if not in_free or len(ins) != c_in:
      self.in_grid = [c_in]
    else:
      self.in_grid = width_grid(c_in, c_in - in_free, widths, round_to)
    if self.tied:
      self.out_grid = None
    elif not out_free or call.rule.config is None or len(outs) != c_out:
      self.out_grid = [c_out]
    else:
      self.out_grid = width_grid(c_out, c_out - out_free, widths, round_to)
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
    h = functional.layer_from_config(call.op, config)(h)
    for follower in self.followers:
      h = functional.layer_from_config(follower.op,
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


def width_grid(full, minimum, widths, round_to=1):
  """The widths an axis of `full` channels is timed at: each fraction of
  `widths` (and 0) rounded by the planner's rule (`plan.round_width`), at
  least `minimum` (the channels that stay), and the full width."""
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
    if not layers_lib.follows(nxt, call):
      break
    followers.append(nxt)
    current = nxt
  return followers


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

  def __init__(self, batch_size, training, warmup, repeats, shapes=None):
    self.shapes = shapes  # per-example input shapes of open-size models
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
    """Median seconds of `repeats` calls of `model` after `warmup`."""
    result = timing.time_alternately(
        {"model": self.step(model)}, rounds=self.repeats, warmup=self.warmup,
        num_calls=1)
    return result["median_seconds"]["model"]

  def time_together(self, models, burst=3):
    """Seconds per call of each of `models` when called back to back: the
    median over rounds of `rounds`."""
    return [float(np.median(t)) for t in self.rounds(models, burst)]

  def rounds(self, models, burst=3):
    """Per-round seconds of each of `models` (one list per model):
    ``max(2 * repeats, 7)`` rounds in a rotating order, each measurement
    one untimed call (the model's weights come back into the caches after
    another model's call), then the median of `burst` timed calls."""
    result = timing.time_alternately(
        {i: self.step(m) for i, m in enumerate(models)},
        rounds=max(2 * self.repeats, 7), warmup=self.warmup, num_calls=burst,
        statistic="median", settle=1)
    return [result["seconds"][i] for i in range(len(models))]

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
    shapes = self.shapes or [t.shape[1:] for t in model.inputs]
    inputs = [keras.Input(s, dtype=t.dtype)
              for s, t in zip(shapes, model.inputs)]
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


def fit_calibration(points):
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
