"""Budgets of a sub-network: MAC counts and the dominant sub-network.

`count_macs` counts the multiply-accumulates of the layers that dominate a
CNN's cost: convolutions (plain, grouped, transposed, depthwise, separable)
and Dense layers, for one example (each layer's formula is its `macs` in the
layer registry, `keras_epi.layers`). Normalisation, activations, pooling and
element-wise merges are not counted (they are a few percent of a CNN's MACs and
are not multiply-accumulates); this is the convention of most pruning papers.

`select_channels` forms the *dominant sub-network* of EPI: the channels that
pruning now would keep, ranked globally across groups, under a budget of
neurons, MACs or predicted latency (`keras_epi.LatencyTable`).
"""

import collections.abc
import functools
import numbers
import warnings

import numpy as np

from keras_epi import _functional as functional
from keras_epi import _validation as validation
from keras_epi import graph
from keras_epi import latency as latency_lib
from keras_epi import plan as plan_lib

BUDGETS = ("neurons", "macs", "latency")
_NOTHING_TO_PRUNE = (
    "No group to prune: `scores` is empty or holds only groups kept whole "
    "(the stem unless keep_stem=False, residual streams if "
    "keep_residual=True).")


def count_macs(model, keep=None, *, ignore=(), input_shape=None,
               per_layer=False, through_norms=False):
  """Multiply-accumulates of `model` for one example.

  Args:
    model: A built functional or Sequential `keras.Model`. Nested models are
      counted with the shapes of their outer call, composite custom layers
      through their sublayers; a layer called twice counts twice.
      channels_first layers are counted too.
    keep: A plan (``{group name: kept indices}``, see
      `keras_epi.select_channels`): the MACs of the model that
      `keras_epi.prune_model(model, keep)` would return, without building
      it. None counts `model` as it is.
    ignore: The `ignore` given to `keras_epi.channel_groups` (with `keep`).
    input_shape: The per-example input shape (a list of them for several
      inputs) to count at, for a model built on open sizes such as
      ``(None, None, 3)``. None counts at the model's own input shapes.
    per_layer: Return ``{call key: MACs}`` instead of the total: the key is
      the layer's path (``"conv1"``, ``"backbone/conv1"``), ``"path#k"`` for
      its call ``k >= 1`` (the keys of `keras_epi.LatencyTable`), for every
      call with a MAC formula, in graph order.
    through_norms: The `through_norms` the plan was made with (see
      `keras_epi.channel_groups`).

  Returns:
    The MAC count, an `int` (or the per-layer dict).

  Raises:
    ValueError: if a counted layer has an unknown shape (pass
      `input_shape`), `input_shape` does not fit the model, or `keep` is not
      a plan of the model's groups.

  Example:
  >>> keras_epi.count_macs(keras.applications.ResNet50(weights=None))
  3857973248
  """
  shapes = functional.check_input_shapes(model, input_shape)
  analysis = graph.analyze(model, ignore, strict=keep is not None,
                           input_shapes=shapes, through_norms=through_norms)
  masks = plan_lib.ResolvedPlan(analysis, keep) if keep is not None else None
  counted = {key: plan_lib.call_macs(call, masks and masks.masks(call))
             for key, call in plan_lib.counted_calls(analysis)}
  return counted if per_layer else sum(counted.values())


def uniform_plan(model, fraction, *, scores=None, round_to=1, ignore=(),
                 keep_stem=False, keep_residual=False, through_norms=False):
  """A plan that keeps the same fraction of every channel group.

  Each group keeps ``fraction * size`` channels, rounded by the rule of
  `select_channels` (the nearest multiple of `round_to`, at least
  `round_to`, at most the group). Which channels: the highest-scored where
  `scores` has the group, else the first ones.

  Args:
    model: The model.
    fraction: Kept fraction of each group, in (0, 1].
    scores: ``{group name: scores}`` (e.g. `keras_epi.magnitude_importance`),
      or None.
    round_to: Kept widths are multiples of this (>= 1).
    ignore: As in `keras_epi.channel_groups`.
    keep_stem: Leave the stem whole (the first group, where a convolution
      makes it from the input's channels).
    keep_residual: Leave the residual streams whole.
    through_norms: Cut through LayerNormalization and RMSNormalization
      (approximate; see `keras_epi.channel_groups`).

  Returns:
    ``{group name: sorted kept indices}`` for the groups that lose channels.

  Example:
  >>> keep = keras_epi.uniform_plan(model, 0.5, round_to=8)
  >>> keras_epi.count_macs(model, keep) / keras_epi.count_macs(model)
  """
  validation.number("fraction", fraction, "(0, 1]")
  validation.integer("round_to", round_to, 1)
  analysis = graph.analyze(model, ignore, through_norms=through_norms)
  cut = set(candidate_groups(analysis, keep_stem, keep_residual))
  keep = {}
  for g in analysis.groups:
    kept = plan_lib.round_width(fraction * g.size, round_to, g.size)
    if g.name not in cut or kept >= g.size:
      continue
    if scores is not None and g.name in scores:
      order = np.argsort(-np.asarray(scores[g.name], np.float64),
                         kind="stable")
      keep[g.name] = np.sort(order[:kept])
    else:
      keep[g.name] = np.arange(kept)
  return keep


def select_channels(model, scores, ratio, *, budget="neurons", ignore=(),
                    min_channels=1, round_to=1, keep_stem=True,
                    keep_residual=False, latency_table=None,
                    through_norms=False):
  """The channels to keep: a global ranking of scores under a budget.

  All channels of the scored groups are ranked together by score; the lowest
  are removed until the budget is met. ``budget="neurons"`` removes
  ``round(ratio * n)`` of the ``n`` scored channels (the paper's "pruned
  ratio": the percentage of neurons removed; an attention head counts as
  one). No group keeps fewer than `min_channels`; with ``round_to > 1`` the
  kept count of every group is rounded to the nearest multiple of
  `round_to` (widths that suit vectorised kernels), keeping the
  highest-scored channels.

  ``budget="macs"`` removes channels until `count_macs` of the pruned model
  is at most ``(1 - ratio)`` of the dense one, and ``budget="latency"``
  until the latency that `latency_table` predicts
  (`keras_epi.LatencyTable.predict`, its `fixed` term included) is:
  ``ratio=0.5`` asks for half the MACs, or a predicted 2x. Channels are
  then ranked by importance per unit of cost, the greedy order of HALP's
  knapsack (Shen et al., NeurIPS 2022): each score is divided by its
  group's cost per channel, ``(C(dense) - C(group at half width)) /
  (channels removed)`` with every other group whole (a choice: one fixed
  price per group, not re-estimated as other groups shrink), so that a
  channel that costs little (an MLP neuron beside an attention head, a
  channel of a late, low-resolution layer) is not removed first for its
  low score alone. Within a group the order is the scores'. The kept widths
  are found by a binary search on the cost, so the result meets the target
  (rounding included) and removes no more than it needs to. A latency
  target that the smallest plan cannot meet
  (every group at `min_channels` or `round_to`, groups kept whole, the fixed
  term) is a `ValueError` that states the largest reachable `ratio`; the
  plan is never silently smaller than asked.

  Args:
    model: The model the groups were computed on.
    scores: ``{group name: array of group.size scores}``, higher is more
      important (e.g. from `keras_epi.magnitude_importance`). Groups not in
      `scores` stay whole.
    ratio: Fraction of the budget to remove, in (0, 1).
    budget: "neurons", "macs" or "latency".
    ignore: The `ignore` given to `keras_epi.channel_groups`.
    min_channels: Minimum channels kept per group (at least 1).
    round_to: Kept widths are rounded to multiples of this (>= 1).
    keep_stem: Leave the stem whole: the first group, where a convolution
      makes it from the input's channels (an image's). A model that starts
      otherwise (a transformer, an MLP) has no stem.
    keep_residual: Leave the residual streams whole (groups with
      `ChannelGroup.residual`); the budget is then met inside the blocks.
      On CPUs, where time follows activations more than MACs, this gives
      the most speed per MAC removed in inverted-residual nets
      (benchmarks/inference_speed/results/inference_speed_keep_residual.md).
    latency_table: A `keras_epi.LatencyTable` measured on `model` (or on
      the model it was pruned from); required with ``budget="latency"``
      and only then.
    through_norms: Let groups pass through LayerNormalization and
      RMSNormalization: a transformer's model width becomes a group.
      Approximate (see `keras_epi.channel_groups`); pass the same value to
      `keras_epi.prune_model`. Not with ``budget="latency"``.

  Returns:
    ``{group name: sorted np.ndarray of kept indices}`` for the scored groups,
    ready for `keras_epi.prune_model`.

  Raises:
    ValueError: for a ratio outside (0, 1), an unknown budget, a bad
      `min_channels` or `round_to`, scores that do not fit the groups, a
      missing or unneeded `latency_table`, a table without an entry for a
      layer of the model, or a latency target that cannot be reached.

  Example:

  ```python
  table = keras_epi.LatencyTable.measure(model, batch_size=8)
  keep = keras_epi.select_channels(model, scores, 0.5, budget="latency",
                                   latency_table=table, round_to=8)
  ```
  """
  check_arguments(ratio, budget, min_channels, round_to, latency_table,
                  through_norms)
  analysis = graph.analyze(model, ignore, through_norms=through_norms)
  keep = plan_channels(analysis, scores, ratio, budget=budget,
                       min_channels=min_channels, round_to=round_to,
                       keep_stem=keep_stem, keep_residual=keep_residual,
                       latency_table=latency_table)
  check_plan(analysis, scores, keep, ratio, round_to, "select_channels")
  return keep


def plan_channels(analysis, scores, ratio, *, budget="neurons",
                  min_channels=1, round_to=1, keep_stem=True,
                  keep_residual=False, latency_table=None):
  """`select_channels` on an existing graph analysis (internal)."""
  if not isinstance(scores, collections.abc.Mapping):
    raise ValueError(
        f"`scores` must be a mapping {{group name: array of the group's "
        f"channel scores}} (e.g. from keras_epi.magnitude_importance), "
        f"received a {type(scores).__name__}.")
  sizes = {g.name: g.size for g in analysis.groups}
  pruned = set(candidate_groups(analysis, keep_stem, keep_residual))
  ranked = {}
  for name, values in scores.items():
    if name not in sizes:
      raise ValueError(f"`scores` has group {name!r}, which the model does not "
                       f"have; its groups are {list(sizes)[:10]}.")
    try:
      values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
      raise ValueError(f"`scores[{name!r}]` must be an array of numbers, one "
                       f"per channel, received a {type(values).__name__}: "
                       f"{str(values)[:80]}.") from None
    if values.shape != (sizes[name],):
      raise ValueError(f"`scores[{name!r}]` has shape {values.shape}; the "
                       f"group has {sizes[name]} channels.")
    if np.isnan(values).any():  # +-inf rank fine; NaN has no order
      raise ValueError(f"`scores[{name!r}]` has NaN values at channels "
                       f"{np.flatnonzero(np.isnan(values))[:10].tolist()}; "
                       "a ranking of them would be arbitrary.")
    if name not in pruned:
      continue
    ranked[name] = np.argsort(-values, kind="stable")  # best first
  if not ranked:
    raise ValueError(f"{_NOTHING_TO_PRUNE} {analysis.kept_whole_by()}".strip())

  cost = None
  if budget == "latency":
    _check_latency_table(budget, latency_table)
    cost = _Cost(latency_table.predictor(analysis), ranked, sizes, "latency")
  elif budget == "macs":
    cost = _Cost(functools.partial(planned_macs, analysis), ranked, sizes,
                 "MACs")

  # Global order of removal: lowest score (per unit of latency) first; each
  # group's best `min_channels` are never candidates.
  candidates = []
  for name, order in ranked.items():
    floor = min(min_channels, sizes[name])
    values = np.asarray(scores[name], dtype=np.float64)
    if cost is not None:
      values = values / cost.per_channel[name]
    for index in order[floor:]:
      candidates.append((values[index], name))
  candidates.sort(key=lambda c: c[0])

  def plan(n_removed):
    removed = {name: 0 for name in ranked}
    for _, name in candidates[:n_removed]:
      removed[name] += 1
    keep = {}
    for name, order in ranked.items():
      kept = plan_lib.round_width(sizes[name] - removed[name], round_to,
                                  sizes[name], min_channels)
      keep[name] = np.sort(order[:kept])
    return keep

  total = sum(sizes[name] for name in ranked)
  if budget == "neurons":
    return plan(min(int(round(ratio * total)), len(candidates)))
  measure, dense = cost.predict, cost.dense
  target = (1.0 - ratio) * dense
  lo, hi = 0, len(candidates)  # find the fewest removals meeting the target
  if budget == "latency":
    smallest = measure(_smallest_plan(sizes, ranked, min_channels, round_to))
    if smallest > target:
      raise ValueError(
          f"budget='latency': ratio={ratio:g} asks for a predicted "
          f"{target:.4g} s of the dense {dense:.4g} s, but the smallest "
          f"plan predicts {smallest:.4g} s: at most ratio="
          f"{_floor(1.0 - smallest / dense):g} of the predicted latency can "
          f"be removed (limits: min_channels={min_channels}, round_to="
          f"{round_to}, {len(sizes) - len(ranked)} group(s) kept whole or "
          f"unscored, layers whose widths are fixed, and the table's fixed "
          f"term of {latency_table.fixed:.4g} s). Ask for a smaller ratio "
          "(keras_epi.max_latency_ratio gives it before any scoring), or "
          "prune more groups.")
  while lo < hi:
    mid = (lo + hi) // 2
    if measure(plan(mid)) <= target:
      hi = mid
    else:
      lo = mid + 1
  return plan(lo)


def max_latency_ratio(model, latency_table, *, ignore=(), min_channels=1,
                      round_to=1, keep_stem=True, keep_residual=False):
  """The largest `ratio` that ``budget="latency"`` can meet on `model`.

  Whether a latency target can be met does not depend on the scores: the
  smallest plan cuts every pruned group to its floor (`min_channels`, rounded
  up to `round_to`), and `latency_table` predicts it. This is the ratio that
  `select_channels` and `EPICallback` name when they refuse a target, given
  before any training or scoring, e.g. to choose a reachable target:
  ``ratio = min(0.5, keras_epi.max_latency_ratio(model, table, round_to=8))``.

  Args:
    model: The model the table was measured on (or one pruned from it).
    latency_table: A `keras_epi.LatencyTable`.
    ignore, min_channels, round_to, keep_stem, keep_residual: As in
      `select_channels`; every group not kept whole is taken as scored.

  Returns:
    ``1 - predicted(smallest plan) / predicted(model)``, rounded down to 4
    decimals (so the value itself is reachable), a float >= 0.

  Raises:
    ValueError: for a bad argument, a table without an entry for a layer of
      `model`, or a model with no group to prune under these settings.

  Example:

  ```python
  table = keras_epi.LatencyTable.measure(model, batch_size=8, round_to=8)
  ratio = min(0.5, keras_epi.max_latency_ratio(model, table, round_to=8))
  ```
  """
  check_arguments(0.5, "latency", min_channels, round_to, latency_table)
  return max_latency_ratio_of(graph.analyze(model, ignore), latency_table,
                              min_channels, round_to, keep_stem,
                              keep_residual)


def max_latency_ratio_of(analysis, latency_table, min_channels, round_to,
                         keep_stem, keep_residual):
  sizes = {g.name: g.size for g in analysis.groups}
  ranked = candidate_groups(analysis, keep_stem, keep_residual)
  if not ranked:
    raise ValueError(f"{_NOTHING_TO_PRUNE} {analysis.kept_whole_by()}".strip())
  cost = _Cost(latency_table.predictor(analysis), (), sizes, "latency")
  smallest = cost.predict(_smallest_plan(sizes, ranked, min_channels,
                                         round_to))
  return _floor(1.0 - smallest / cost.dense)


def stem_group(analysis):
  """The name of the stem's group, or None: the first group, where a
  convolution makes it from channels kept whole (an image's). A model that
  starts otherwise (a transformer's first group is an attention layer's
  heads or an MLP's width; an MLP's first Dense) has no stem."""
  if not analysis.groups:
    return None
  name = analysis.groups[0].name
  call = analysis.calls.get(name)
  if (call is None or not call.ins or
      not hasattr(call.op, "kernel_size") or
      (analysis.find(call.ins[0]) != graph.FIXED).any()):
    return None
  return name


def candidate_groups(analysis, keep_stem, keep_residual):
  """Names of the groups a plan may cut, in the analysis' order: all but
  the stem's (with `keep_stem`, see `stem_group`) and the residual streams
  (with `keep_residual`)."""
  stem = stem_group(analysis)
  return [g.name for g in analysis.groups
          if not (keep_stem and g.name == stem) and
          not (keep_residual and g.residual)]


def _smallest_plan(sizes, names, min_channels, round_to):
  """Every group of `names` at its floor: what removing every candidate of
  `plan_channels` gives (a latency depends on widths, not on which)."""
  return {name: np.arange(plan_lib.round_width(
      min(min_channels, sizes[name]), round_to, sizes[name], min_channels))
          for name in names}


class _Cost:
  """The cost side of a MAC or latency budget over one analysis (internal).

  Attributes:
    predict: ``f(keep) -> MACs or predicted seconds``.
    dense: The cost of the unpruned model.
    per_channel: ``{group: cost saved per channel removed}`` when the group
      alone is cut to half its width, clipped below at a tiny positive
      value (a group whose channels save nothing is removed last).
  """

  def __init__(self, predict, ranked, sizes, unit):
    self.predict = predict
    self.dense = self.predict({})
    if not self.dense > 0:
      raise ValueError(
          f"The {unit} of the dense model come out as {self.dense!r}; a "
          f"{unit} budget needs a positive cost. " + (
              "Measure the latency table again (with more `repeats` on a "
              "busy machine)." if unit == "latency" else
              "Prune a model with convolution, Dense or attention layers."))
    tiny = max(abs(self.dense), 1e-30) * 1e-12
    self.per_channel = {}
    for name in ranked:
      removed = sizes[name] // 2
      saved = 0.0
      if removed:
        half = self.predict({name: np.arange(sizes[name] - removed)})
        saved = (self.dense - half) / removed
      self.per_channel[name] = max(saved, tiny)


def _floor(value, digits=4):
  """`value` rounded down to `digits` decimals (a ratio that is reachable)."""
  return max(0.0, float(np.floor(value * 10**digits) / 10**digits))


def _check_latency_table(budget, latency_table):
  if budget == "latency":
    if latency_table is None:
      raise ValueError(
          "`latency_table` is required with budget='latency': measure one "
          "with keras_epi.LatencyTable.measure(model) or load one with "
          "keras_epi.LatencyTable.load(path).")
    if not isinstance(latency_table, latency_lib.LatencyTable):
      raise ValueError(f"`latency_table` must be a keras_epi.LatencyTable, "
                       f"received {type(latency_table).__name__}.")
  elif latency_table is not None:
    raise ValueError(f"`latency_table` is only used with budget='latency', "
                     f"received a table with budget={budget!r}.")


def check_arguments(ratio, budget, min_channels, round_to,
                    latency_table=None, through_norms=False):
  """ValueErrors naming the argument; NumPy scalars count as numbers."""
  if not isinstance(ratio, numbers.Real) or isinstance(
      ratio, (bool, np.bool_)) or not 0.0 < ratio < 1.0:
    raise ValueError(f"`ratio` must be a number in (0, 1), received "
                     f"{ratio!r}.")
  validation.choice("budget", budget, BUDGETS)
  if through_norms and budget == "latency":
    raise ValueError(
        "budget='latency' cannot be combined with through_norms=True: a "
        "LatencyTable times the model's exact channel groups. Use "
        "budget='macs' (or 'neurons') for the model width.")
  if not isinstance(min_channels, numbers.Integral) or isinstance(
      min_channels, bool) or min_channels < 1:
    raise ValueError(f"`min_channels` must be an integer >= 1, received "
                     f"{min_channels!r}.")
  if not isinstance(round_to, numbers.Integral) or isinstance(
      round_to, bool) or round_to < 1:
    raise ValueError(f"`round_to` must be an integer >= 1, received "
                     f"{round_to!r}.")
  _check_latency_table(budget, latency_table)


def planned_macs(analysis, keep):
  """MACs of the model pruned by `keep`, without building it."""
  return plan_lib.ResolvedPlan(analysis, keep).macs()


def check_plan(analysis, scores, keep, ratio, round_to, caller, stacklevel=3):
  """Warnings where a plan says less than it seems: scores that do not rank
  the channels (all equal, e.g. all zero: channels go by index order), and
  a plan that removes nothing (`ratio` too small for the groups, or
  `round_to` wider than them)."""
  values = [np.asarray(scores[name], np.float64) for name in keep]
  if values and np.ptp(np.concatenate(values)) == 0:
    warnings.warn(
        f"{caller}: every score of the groups it cuts is {values[0][0]:g}: "
        "the scores do not rank the channels, which are then removed in "
        "index order. Check the scores (a criterion that sees no gradient "
        "or no weight gives all zeros).", UserWarning, stacklevel=stacklevel)
  sizes = {g.name: g.size for g in analysis.groups}
  if keep and all(len(kept) == sizes[name] for name, kept in keep.items()):
    warnings.warn(
        f"{caller}: the plan removes no channel (ratio={ratio:g}, round_to="
        f"{round_to}, largest group {max(sizes[n] for n in keep)} channels):"
        " the pruned model would be the dense one. Raise the ratio or lower "
        "round_to.", UserWarning, stacklevel=stacklevel)
