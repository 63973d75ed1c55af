"""What one EPI run cuts, and how the cut reaches the models.

`Pruning` answers, for one fit of `keras_epi.EPICallback`: which channel
groups may be cut (`prunable_groups`: not the stem, the residual streams or
frozen layers where the callback says so), which channels a set of scores
removes under the budget (`Pruning.plan`; the steps of a gradual prune only
add to what earlier steps removed), and the cut itself: `pruned_model` made
by the surgeon, and, while a plain `model.fit` trains on, the removed
channels of the training model held at exactly zero (`keras_epi.masking`),
so that the two compute the same function.
"""

import warnings

from absl import logging
import numpy as np

from keras_epi import budget as budget_lib
from keras_epi import graph
from keras_epi import masking
from keras_epi import surgeon as surgeon_lib


def prunable_groups(model, analysis, *, keep_stem, keep_residual,
                    prune_frozen, min_channels):
  """``(frozen group names, the groups a run may cut)``.

  Args:
    model: The model of `analysis`.
    analysis: Its `graph.Analysis`.
    keep_stem: Leave the first group whole.
    keep_residual: Leave the residual streams whole.
    prune_frozen: Cut groups that a frozen layer (``trainable=False``, with
      weights) produces or carries; False keeps them whole and logs them.
    min_channels: Channels every group keeps at least (a warning where that
      leaves nothing to cut).

  Raises:
    ValueError: where no group may be cut.
  """
  groups = analysis.groups
  frozen = () if prune_frozen else tuple(
      g.name for g in groups
      if any(_is_frozen(graph.layer_at(model, path)) for path, _ in g.members))
  candidates = set(budget_lib.candidate_groups(analysis, keep_stem,
                                               keep_residual))
  prunable = [g for g in groups
              if g.name in candidates and g.name not in frozen]
  if frozen:
    logging.info(
        "EPICallback: %d group(s) with frozen layers (trainable=False) are "
        "kept whole: %s. Pass prune_frozen=True to prune them.", len(frozen),
        ", ".join(frozen[:8]) + (", ..." if len(frozen) > 8 else ""))
  if not prunable:
    raise ValueError(
        f"Model '{model.name}' has no prunable channel groups (its groups: "
        f"{[g.name for g in groups]}; keep_stem={keep_stem}, "
        f"keep_residual={keep_residual}, frozen groups kept whole: "
        f"{list(frozen)}). EPICallback needs trainable convolution or Dense "
        "layers whose outputs are not model outputs (or prune_frozen=True).")
  if all(min_channels >= g.size for g in prunable):
    warnings.warn(
        f"EPICallback: min_channels={min_channels} is at least the size of "
        f"every prunable group (largest: {max(g.size for g in prunable)} "
        "channels), so pruning removes nothing. Lower `min_channels`.",
        UserWarning, stacklevel=4)
  return frozen, prunable


class Pruning:
  """The plans and the cut of one run over `analysis`.

  Args:
    analysis: The `graph.Analysis` of the training model.
    groups: The groups the run may cut (`prunable_groups`).
    budget: "neurons", "macs" or "latency" (`keras_epi.select_channels`).
    latency_table: The `keras_epi.LatencyTable` of ``budget="latency"``.
    min_channels: Channels every group keeps at least.
    round_to: Kept widths are multiples of this.
    ignore: Layer names whose channels stay.
  """

  def __init__(self, analysis, groups, *, budget, latency_table,
               min_channels, round_to, ignore):
    self.analysis, self.groups = analysis, groups
    self.budget, self.latency_table = budget, latency_table
    self.min_channels, self.round_to = min_channels, round_to
    self.ignore = ignore
    self.dense_macs = budget_lib.planned_macs(analysis, {})
    self._masks = self._apply = None

  def plan(self, scores, ratio, kept=None):
    """The channels to keep, ``{group name: indices}``, for `ratio`. With
    `kept` (an earlier step's plan), the channels it removed are ranked
    first for removal, so that a gradual step only adds to them."""
    if kept is not None:
      scores = {name: np.where(np.isin(np.arange(len(v)), kept[name]), v,
                               -np.inf) for name, v in scores.items()}
    return budget_lib.plan_channels(
        self.analysis, scores, ratio, budget=self.budget,
        latency_table=self.latency_table, min_channels=self.min_channels,
        round_to=self.round_to, keep_stem=False)

  def check_latency_target(self, ratio):
    """Plans once with flat scores, so that a latency target the table
    says cannot be met (which does not depend on the scores) fails before
    the first epoch, not at the prune epoch."""
    try:
      self.plan({g.name: np.ones(g.size) for g in self.groups}, ratio)
    except ValueError as e:
      raise ValueError(f"EPICallback(prune_ratio={ratio:g}, "
                       f"budget='latency'), checked before training: "
                       f"{e}") from None

  def macs_fraction(self, keep):
    """MACs of the plan / dense MACs, without building the model."""
    return float(budget_lib.planned_macs(self.analysis, keep) /
                 self.dense_macs)

  def kept_fraction(self, keep):
    """Kept channels / the channels of the groups the run may cut."""
    return float(sum(len(keep[g.name]) for g in self.groups) /
                 sum(g.size for g in self.groups))

  def cut(self, model, keep):
    """`cut` of `model` (the model of the analysis)."""
    return cut(model, keep, self.ignore, self.analysis)

  def start_masking(self, model, keep):
    """Holds the channels `keep` removes at zero in `model` from now on:
    now, and at every `apply_masks`."""
    self._masks = masking.channel_masks(model, self.analysis, keep)
    self._apply = masking.make_mask_function(self._masks)
    self._apply()

  def apply_masks(self):
    """Zeroes the removed channels again (after a train step)."""
    if self._apply is not None:
      self._apply()

  def cut_after_fit(self, model, keep):
    """`cut` of the masked model after a plain fit, with a warning where its
    removed channels are no longer zero."""
    restored = masking.unmasked(self._masks) if self._masks else []
    if restored:
      warnings.warn(
          f"EPICallback: after the fit, the removed channels of "
          f"'{model.name}' are not zero ({restored[0]}, ...): another "
          "callback set weights from before the prune (EarlyStopping("
          "restore_best_weights=True) whose best epoch came before it?). "
          "`pruned_model` is the cut of those weights, which were not "
          "trained after the cut and differ from the model's function. "
          "Use keras_epi.fit, where EarlyStopping restarts at the prune.",
          UserWarning, stacklevel=3)
    return self.cut(model, keep)

  def prune_logs(self, model, pruned, keep, *, when=None):
    """The logs of the prune event; with `when` (what fired, for the log
    line) also its log line: MACs, parameters and the changed widths."""
    macs_after = budget_lib.count_macs(pruned)
    if when is not None:
      groups = self.groups
      changes = ", ".join(f"{g.name} {g.size}->{len(keep[g.name])}"
                          for g in groups[:8] if len(keep[g.name]) != g.size)
      logging.info(
          "EPICallback: pruning %s: MACs %.4gG -> %.4gG (%.1f%%), params %d "
          "-> %d; widths: %s%s", when, self.dense_macs / 1e9,
          macs_after / 1e9, 100 * macs_after / self.dense_macs,
          model.count_params(), pruned.count_params(), changes,
          ", ..." if len(groups) > 8 else "")
    return {"kept_fraction": self.kept_fraction(keep),
            "macs_fraction": float(macs_after / self.dense_macs)}


def cut(model, keep, ignore, analysis=None):
  """``(pruned model, surgeon)`` of the plan `keep`, built under the
  model's strategy (`keras_epi.surgeon.prune_with_surgeon`)."""
  with model.distribute_strategy.scope():
    return surgeon_lib.prune_with_surgeon(model, keep, ignore,
                                          analysis=analysis)


def _is_frozen(layer):
  """A layer with weights that are not trained (``trainable=False``).
  `layer` may be None: a layer a composite layer makes in its `call`."""
  return layer is not None and bool(layer.weights) and not layer.trainable
