"""What one EPI run cuts, and how the cut reaches the models.

`Pruning` answers, for one fit of `keras_epi.EPICallback`: which channel
groups may be cut (`prunable_groups`: not the stem, the residual streams or
frozen layers where the callback says so), which channels a set of scores
removes under the budget (`Pruning.plan`; the steps of a gradual prune only
add to what earlier steps removed, `GradualPrune`), and the cut itself:
`pruned_model` made by the surgeon, and the removed channels of the training
model held at exactly zero (`keras_epi.masking`), so that the two compute
the same function.

How the cut reaches training is a handler: `MaskInPlace`, the default in a
plain `model.fit`, keeps training the masked model and cuts it again after
the fit; `keras_epi.fit` hands the cut over to its own handler instead and
trains the cut model on.
"""

import warnings

from absl import logging
import numpy as np

from keras_epi import _backend as backend
from keras_epi import _functional as functional
from keras_epi import budget as budget_lib
from keras_epi import graph
from keras_epi import masking
from keras_epi import plan as plan_lib
from keras_epi import surgeon as surgeon_lib
from keras_epi import triggers


def prunable_groups(model, analysis, *, keep_stem, keep_residual,
                    prune_frozen, min_channels):
  """``(frozen group names, the groups a run may cut)``.

  Args:
    model: The model of `analysis`.
    analysis: Its `graph.Analysis`.
    keep_stem: Leave the stem whole (`keras_epi.budget.stem_group`).
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
        "layers whose outputs are not model outputs (or prune_frozen=True). "
        f"{analysis.kept_whole_by()}")
  if all(min_channels >= g.size for g in prunable):
    warnings.warn(
        f"EPICallback: min_channels={min_channels} is at least the size of "
        f"every prunable group (largest: {max(g.size for g in prunable)} "
        "channels), so pruning removes nothing. Lower `min_channels`.",
        UserWarning, stacklevel=4)
  return frozen, prunable


def for_fit(model, params, *, ignore, input_shape, keep_stem, keep_residual,
            prune_frozen, budget, latency_table, ratio, min_channels,
            round_to, init_steps, at_start, criterion, gradual_steps,
            through_norms=False):
  """``(frozen group names, Pruning)`` of one fit of `model` (the settings
  of `keras_epi.EPICallback`; `params` the fit's); a ValueError before
  training where the run cannot prune (no group, an unreachable latency
  target, MACs on open sizes, `init_steps` longer than the epoch)."""
  check_init_steps(params, init_steps, at_start, criterion, gradual_steps)
  analysis = graph.analyze(
      model, ignore,
      input_shapes=functional.check_input_shapes(model, input_shape),
      through_norms=through_norms)
  frozen, groups = prunable_groups(
      model, analysis, keep_stem=keep_stem, keep_residual=keep_residual,
      prune_frozen=prune_frozen, min_channels=min_channels)
  pruning = Pruning(analysis, groups, budget=budget,
                    latency_table=latency_table, min_channels=min_channels,
                    round_to=round_to, ignore=ignore)
  if budget == "latency":
    pruning.check_latency_target(ratio)
  return frozen, pruning


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
    self._masks = self._apply = None
    self.dense_macs = None  # unknown for open input sizes
    open_calls = plan_lib.open_calls(analysis)
    if not open_calls:
      self.dense_macs = budget_lib.planned_macs(analysis, {})
    elif budget != "neurons":
      raise ValueError(
          f"EPICallback(budget={budget!r}) counts MACs, but layer "
          f"'{open_calls[0].path}' of model '{analysis.model.name}' has an "
          f"open input size {tuple(open_calls[0].in_shapes[0])}: pass "
          "EPICallback(input_shape=...) with the size of the training "
          "examples, e.g. input_shape=(224, 224, 3) (keras_epi.fit takes it "
          "from the data).")

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

  def check_plan(self, scores, keep, ratio):
    """`budget.check_plan`'s warnings for the plan of the cut."""
    budget_lib.check_plan(self.analysis, scores, keep, ratio, self.round_to,
                          "EPICallback", stacklevel=6)

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

  def subnetwork(self, epoch, scores, ratio, indicator):
    """The dominant sub-network of `epoch`: the plan of `scores` at `ratio`
    as a `triggers.SubNetwork`, its widths added to the run's EPI
    `indicator`; returns ``(subnetwork, plan, logs)``, the logs the
    epoch's values (``epi`` NaN where undefined)."""
    keep = self.plan(scores, ratio)
    sizes = {g.name: g.size for g in self.groups}
    indicator.update([len(keep[name]) for name in sizes])
    epi = indicator.latest
    sub = triggers.SubNetwork(epoch, {n: keep[n] for n in sizes}, sizes, epi,
                              tuple(indicator.values))
    return sub, keep, {"epi": float("nan") if epi is None else float(epi),
                       "kept_fraction": float(sub.kept_fraction),
                       "macs_fraction": self.macs_fraction(keep)}

  def macs_fraction(self, keep):
    """MACs of the plan / dense MACs, without building the model (NaN
    where the input sizes are open)."""
    if self.dense_macs is None:
      return float("nan")
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
    backend.sync_variables(model)
    self._masks = masking.channel_masks(model, self.analysis, keep)
    self._apply = masking.make_mask_function(self._masks, model)
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
          UserWarning, stacklevel=4)
    return self.cut(model, keep)

  def prune_logs(self, model, pruned, keep, event=None):
    """The logs of the prune event (`kept_fraction`, `macs_fraction` of the
    plan); with `event`, ``(dense epochs, trigger, EPI)``, also its log
    line: what fired, MACs, parameters and the changed widths."""
    logs = {"kept_fraction": self.kept_fraction(keep),
            "macs_fraction": self.macs_fraction(keep)}
    if event is not None:
      epoch, trigger, epi = event
      when = (f"after {epoch} dense epoch(s) (trigger {trigger!r}, EPI="
              f"{'n/a' if epi is None else f'{epi:.4f}'})")
      groups = self.groups
      changes = ", ".join(f"{g.name} {g.size}->{len(keep[g.name])}"
                          for g in groups[:8] if len(keep[g.name]) != g.size)
      macs = ("MACs unknown (open input sizes)" if self.dense_macs is None
              else "MACs %.4gG -> %.4gG (%.1f%%)" % (
                  self.dense_macs / 1e9,
                  logs["macs_fraction"] * self.dense_macs / 1e9,
                  100 * logs["macs_fraction"]))
      logging.info("EPICallback: pruning %s: %s, params %d -> %d; widths: "
                   "%s%s", when, macs, model.count_params(),
                   pruned.count_params(), changes,
                   ", ..." if len(groups) > 8 else "")
    return logs


class MaskInPlace:
  """The default handler of a cut, in a plain `model.fit`: the removed
  channels of the training model are held at zero for the rest of the fit
  (`Pruning.start_masking`), and after the fit the trained, masked model is
  cut again (`Pruning.cut_after_fit`) when `pruned_model` is first read, so
  that an EarlyStopping that restores weights at the end is seen.

  A handler answers: `hands_over` (recorded in the run state), `on_cut`
  (the trigger fired and `pruned_model` is made), `on_resume` (a restarted
  fit takes over a pruned run's state), `on_train_end`, and `recut` with
  `recut_pending` (a fresher `pruned_model` after the fit).
  """
  hands_over = False

  def __init__(self):
    self.recut_pending = False

  def on_cut(self, pruning, model, keep):
    pruning.start_masking(model, keep)

  def on_resume(self, pruning, model, keep):
    pruning.start_masking(model, keep)

  def on_train_end(self, pruned):
    self.recut_pending = pruned

  def recut(self, pruning, model, keep):
    self.recut_pending = False
    return pruning.cut_after_fit(model, keep)


class GradualPrune:
  """A prune spread over epoch `epoch` in `steps` equal steps (HALP,
  Taylor_pruning): after batch ``round(steps_per_epoch * k / steps)`` step k
  re-scores and masks ``k / steps`` of the ratio (only adding to what the
  earlier steps removed); the epoch's end cuts the full ratio.

  Raises:
    ValueError: where the fit does not know its steps per epoch.
  """

  def __init__(self, epoch, steps, params, reason):
    if not params or params.get("steps") is None:
      raise ValueError(
          "EPICallback(gradual_steps>1) needs the number of steps per epoch: "
          "pass `steps_per_epoch` to fit, or data of known length.")
    self.epoch, self.steps, self.reason = epoch, steps, reason
    self.steps_per_epoch = params["steps"]
    self.done = 0
    self.keep = None  # the plan of the steps so far

  def step(self, epoch, batch, scoring, pruning, model, ratio):
    """After `batch` of `epoch`: the next step where it is due (re-scored,
    planned for its share of `ratio`, masked in `model`). Returns its
    scores, or None (no step, or no finite scores)."""
    step = self.done + 1
    if (epoch != self.epoch or step >= self.steps or
        batch + 1 < round(self.steps_per_epoch * step / self.steps)):
      return None
    self.done = step
    scores = scoring.scores(epoch)
    if scores is not None:
      self.keep = pruning.plan(scores, ratio * step / self.steps, self.keep)
      pruning.start_masking(model, self.keep)
    return scores


def check_init_steps(params, init_steps, at_start, criterion, gradual_steps):
  """A prune at initialisation after `init_steps` Taylor-scored batches
  must fit in the first epoch (a ValueError that says what to pass)."""
  steps = (params or {}).get("steps")
  if (at_start and criterion == "taylor" and gradual_steps == 1 and
      steps is not None and init_steps > steps):
    raise ValueError(
        f"`init_steps`={init_steps} is longer than an epoch ({steps} "
        "steps): with policy='fixed' and prune_epoch=0 the model is pruned "
        "after `init_steps` batches of the first epoch. Pass init_steps <= "
        f"{steps}, or prune_epoch=1 to prune after the first epoch.")


def cut(model, keep, ignore, analysis=None):
  """``(pruned model, surgeon)`` of the plan `keep`, built under the
  model's strategy (`keras_epi.surgeon.prune_with_surgeon`)."""
  backend.sync_variables(model)  # the weights training has reached
  with backend.scope(model):
    return surgeon_lib.prune_with_surgeon(model, keep, ignore,
                                          analysis=analysis)


def _is_frozen(layer):
  """A layer with weights that are not trained (``trainable=False``).
  `layer` may be None: a layer a composite layer makes in its `call`."""
  return layer is not None and bool(layer.weights) and not layer.trainable
