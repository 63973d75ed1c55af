"""EPICallback: score filters during `model.fit`, decide when to prune, prune.

One line added to `model.fit`::

  cb = keras_epi.EPICallback(prune_ratio=0.3)
  model.fit(x, y, epochs=30, callbacks=[cb])
  cb.prune_epoch, cb.pruned_model

At the end of every epoch the callback ranks all prunable channels globally
(`keras_epi.select_channels`), forms the dominant sub-network that pruning now
would keep, and feeds its architecture (the kept width of every group) to the
indicator of its `policy`. When the indicator fires, it prunes: it builds
`pruned_model` (physically smaller, weights copied) and, inside a plain
`model.fit`, holds the removed channels of the training model at exactly zero
for the rest of training (weights, their optimizer slots, BatchNormalization),
so the trained model and `pruned_model` compute the same function.
`keras_epi.fit` instead continues training on `pruned_model`, where the
training-cost saving comes from.

Taylor scores reuse the gradients of the train step through a `GradientTap`:
the optimizer's `apply` is wrapped only while a leased train step runs, so no
second backward pass is paid and no exception or interrupt can leave the
wrapper behind (see `GradientTap`). Masking zeroes the removed channels on
both the producer's and the consumers' side (`keras_epi.masking`), so the
masked model equals the cut one for any activation.
"""

import contextlib
import json
import os
import warnings
import weakref

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras_epi import _keras_internals as internals
from keras_epi import _validation as validation
from keras_epi import budget as budget_lib
from keras_epi import graph
from keras_epi import importance as importance_lib
from keras_epi import indicators
from keras_epi import masking
from keras_epi import surgeon

CRITERIA = ("taylor", "magnitude")
_STATE_FILE = "keras_epi_state.json"
POLICIES = ("epi", "early_bird", "fixed")


class EPICallback(keras.callbacks.Callback):
  """Early structural pruning during `model.fit`.

  Per-epoch values published in `logs` (so History, CSVLogger, TensorBoard,
  EarlyStopping and the progress bar see them): ``epi`` (0.0 until `window`
  epochs exist), ``kept_fraction`` (kept / prunable channels of the dominant
  sub-network) and ``macs_fraction`` (its MACs / dense MACs); with
  ``policy="early_bird"`` also ``eb_distance``.

  Args:
    prune_ratio: Fraction of the budget removed, in (0, 1). With
      ``budget="neurons"`` the paper's "pruned ratio": the fraction of
      prunable channels removed.
    budget: "neurons", "macs" or "latency" (the fraction of the latency
      that `latency_table` predicts; see `keras_epi.select_channels`).
    criterion: "taylor" (first-order Taylor on BatchNormalization, from the
      train step's gradients) or "magnitude" (filter norm / sqrt(size)).
    window: r, the number of previous epochs EPI compares with (>= 1).
    threshold: tau; None takes the paper's value for the criterion (0.944
      taylor, 0.983 magnitude). Tune it on your data and schedule.
    policy: "epi" (the paper), "early_bird" (You et al. 2020: BN |gamma|
      masks, Hamming distance < `early_bird_distance` over 5 masks, with an
      L1 penalty `early_bird_penalty` on gamma while searching) or "fixed"
      (prune after `prune_epoch` dense epochs: the oracle grid; 0 prunes at
      initialisation).
    prune_by: For ``policy="epi"`` or ``"early_bird"``: a deadline. If the
      indicator has not fired after this many dense epochs, prune at the end
      of that epoch anyway, with the dominant sub-network of that epoch
      (`prune_reason` is then "deadline"). None (default): wait as long as
      the schedule lasts, as in the paper. Not from the paper: a guard for
      short schedules, where tau may never be reached.
    prune_epoch: For ``policy="fixed"``: the number of dense epochs before
      pruning. With 0 and the Taylor criterion, scores come from the first
      `init_steps` batches.
    ignore: Layer names whose channels stay (see `keras_epi.channel_groups`).
    min_channels: Channels every group keeps at least.
    round_to: Kept widths are rounded to multiples of this.
    keep_stem: Leave the first conv's group whole (HALP does). The
      classifier's outputs are never pruned.
    keep_residual: Leave the residual streams whole (`ChannelGroup.residual`)
      and meet the budget inside the blocks (see
      `keras_epi.select_channels`).
    taylor_reduction: "square" (mean of s^2 per interval, Taylor_pruning) or
      "abs" (mean |s|, HALP).
    init_steps: Batches scored before pruning at initialisation.
    early_bird_penalty: L1 coefficient on BN gamma for "early_bird".
    early_bird_distance: Early-Bird's mask distance threshold.
    prune_frozen: False (default) keeps every group whole that a frozen
      layer (``trainable=False``, with weights) produces or carries, as in
      fine-tuning with a frozen backbone; they are listed in `frozen_groups`
      and logged. True prunes them like the others.
    backup_dir: Directory where the run state (indicator history, the prune
      plan) is saved every epoch, so that a run interrupted and restarted
      with `keras.callbacks.BackupAndRestore` resumes it. `keras_epi.fit`
      takes it from a BackupAndRestore in its callbacks when None.
    gradual_steps: 1 prunes in one shot at the trigger. k > 1 prunes
      gradually over the epoch after the trigger, as the group's related
      code does (HALP, Taylor_pruning): k equal steps spread over that epoch,
      importance re-estimated before each, removed channels held at zero,
      and the model is cut at that epoch's end.
    verbose: 1 logs the prune event.
    latency_table: A `keras_epi.LatencyTable` measured on the model
      (``training=True`` for the cost of the training steps after the
      prune); required with ``budget="latency"`` and only then.

  Attributes:
    prune_epoch: Dense epochs trained before pruning (so the first pruned
      epoch's index), or None.
    prune_reason: What triggered the pruning: the policy ("epi",
      "early_bird", "fixed") or "deadline" (`prune_by`); None before.
    pruned_model: The physically smaller `keras.Model`, or None.
    keep: The pruning plan {group name: kept indices}, or None.
    importance: Latest scores {group name: np.ndarray of group.size}.
    epi_history: EPI per epoch (None where undefined).
    width_history: Per epoch, {group name: kept width} of the dominant
      sub-network.
    early_bird_history: Per epoch, Early-Bird's largest mask distance
      (``policy="early_bird"``).
    skipped_batches: Batches whose Taylor scores were not finite.
    frozen_groups: Names of the groups kept whole because a member layer is
      frozen (empty with ``prune_frozen=True``).

  Raises:
    ValueError: for an argument out of its range or of the wrong type (the
      message names it); at `on_train_begin`, for a model without prunable
      groups, a second EPICallback in the same fit, or ``prune_epoch=0``
      with `init_steps` longer than an epoch.
  """

  def __init__(self, prune_ratio=0.3, budget="neurons", criterion="taylor",
               window=5, threshold=None, policy="epi", prune_epoch=None,
               prune_by=None,
               ignore=(), min_channels=1, round_to=1, keep_stem=True,
               keep_residual=False,
               taylor_reduction="square", init_steps=20,
               early_bird_penalty=1e-4, early_bird_distance=0.1,
               backup_dir=None, gradual_steps=1, prune_frozen=False,
               verbose=1, latency_table=None):
    super().__init__()
    prune_ratio = validation.number("prune_ratio", prune_ratio, "(0, 1)")
    if budget not in budget_lib.BUDGETS:
      raise ValueError(f"`budget` must be one of {budget_lib.BUDGETS}, "
                       f"received {budget!r}.")
    if criterion not in CRITERIA:
      raise ValueError(f"`criterion` must be one of {CRITERIA}, received "
                       f"{criterion!r}.")
    if policy not in POLICIES:
      raise ValueError(f"`policy` must be one of {POLICIES}, received "
                       f"{policy!r}.")
    if policy == "fixed":
      prune_epoch = validation.integer("prune_epoch", prune_epoch, 0,
                             " with policy='fixed'")
    elif prune_epoch is not None:
      raise ValueError(f"`prune_epoch` is only used with policy='fixed'; "
                       f"received prune_epoch={prune_epoch!r} with "
                       f"policy={policy!r}.")
    if prune_by is not None:
      if policy == "fixed" or not validation.is_integer(prune_by) or prune_by < 1:
        raise ValueError(
            f"`prune_by` must be None or an integer >= 1 with policy='epi' "
            f"or 'early_bird', received prune_by={prune_by!r} with "
            f"policy={policy!r}.")
      prune_by = int(prune_by)
    window = validation.integer("window", window, 1)
    if threshold is None:
      threshold = indicators.PAPER_THRESHOLDS[criterion]
    threshold = validation.number("threshold", threshold, "(0, 1]")
    if taylor_reduction not in importance_lib.TAYLOR_REDUCTIONS:
      raise ValueError(f"`taylor_reduction` must be one of "
                       f"{importance_lib.TAYLOR_REDUCTIONS}, received "
                       f"{taylor_reduction!r}.")
    init_steps = validation.integer("init_steps", init_steps, 1)
    early_bird_penalty = validation.number("early_bird_penalty", early_bird_penalty,
                                 "[0, inf)")
    early_bird_distance = validation.number("early_bird_distance", early_bird_distance,
                                  "(0, 1]")
    budget_lib._check_arguments(prune_ratio, budget, min_channels, round_to,  # pylint: disable=protected-access
                                latency_table)
    if isinstance(ignore, str) or not isinstance(
        ignore, (list, tuple, set, frozenset)) or not all(
            isinstance(name, str) for name in ignore):
      raise ValueError(f"`ignore` must be a collection of layer names, "
                       f"received {ignore!r}.")
    if backup_dir is not None and not isinstance(backup_dir,
                                                 (str, os.PathLike)):
      raise ValueError(f"`backup_dir` must be None or a directory path (a "
                       f"string), received {backup_dir!r}.")
    gradual_steps = validation.integer("gradual_steps", gradual_steps, 1)
    self.prune_ratio = prune_ratio
    self.budget = budget
    self.latency_table = latency_table
    self.criterion = criterion
    self.window = window
    self.threshold = threshold
    self.policy = policy
    self.fixed_epoch = prune_epoch
    self.prune_by = prune_by
    self.ignore = tuple(ignore)
    self.min_channels = int(min_channels)
    self.round_to = int(round_to)
    self.keep_stem = validation.boolean("keep_stem", keep_stem)
    self.keep_residual = validation.boolean("keep_residual", keep_residual)
    self.prune_frozen = validation.boolean("prune_frozen", prune_frozen)
    self.taylor_reduction = taylor_reduction
    self.init_steps = init_steps
    self.early_bird_penalty = early_bird_penalty
    self.early_bird_distance = early_bird_distance
    self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
    self.gradual_steps = gradual_steps
    self.verbose = verbose
    # Set by keras_epi.fit: stop `fit` at the trigger / continue a run.
    self._stop_on_prune = False
    self._continuing = False
    self._hook = None
    self._reset_run_state()

  # -- state ----------------------------------------------------------------

  def _reset_run_state(self):
    self.prune_epoch = None
    self.prune_reason = None
    self._fire_reason = None  # why a trigger fired, until `_prune` runs
    self.pruned_model = None
    self.keep = None
    self.importance = {}
    self.epi_history = []
    self.width_history = []
    self.skipped_batches = 0
    self.frozen_groups = ()
    self._epi = indicators.EarlyPruningIndicator(self.window, self.threshold)
    self._early_bird = indicators.EarlyBirdIndicator(
        window=5, max_distance=self.early_bird_distance)
    self._analysis = None
    self._groups = []
    self._scorer = None
    self._hook = None
    self._masks = None
    self._apply_masks = None
    self._surgeon = None
    self._gradual_epoch = None  # the epoch of gradual pruning, once fired
    self._gradual_step = 0
    self._epoch = 0
    self._macs_dense = None
    self._last_logs = {}

  @property
  def pruned(self):
    return self.prune_epoch is not None

  @property
  def early_bird_history(self):
    """Early-Bird's largest mask distance per epoch (None until its window
    is full); empty unless ``policy="early_bird"``."""
    return list(self._early_bird.values) if self.policy == "early_bird" else []

  # -- Keras lifecycle ------------------------------------------------------

  def on_train_begin(self, logs=None):
    self._claim_model()
    if self._continuing:  # keras_epi.fit goes on with the pruned model
      self._save_state()
      return
    self._remove_gradient_hook()  # a previous fit that ended by an exception
    self._reset_run_state()
    model = self.model
    self._analysis = graph.analyze(model, self.ignore)
    stem = self._analysis.groups[0].name if self._analysis.groups else None
    self.frozen_groups = () if self.prune_frozen else tuple(
        g.name for g in self._analysis.groups
        if any(_is_frozen(graph.layer_at(model, path))
               for path, _ in g.members))
    self._groups = [g for g in self._analysis.groups
                    if not (self.keep_stem and g.name == stem) and
                    not (self.keep_residual and g.residual) and
                    g.name not in self.frozen_groups]
    if self.frozen_groups:
      logging.info(
          "EPICallback: %d group(s) with frozen layers (trainable=False) are "
          "kept whole: %s. Pass prune_frozen=True to prune them.",
          len(self.frozen_groups), ", ".join(self.frozen_groups[:8]) +
          (", ..." if len(self.frozen_groups) > 8 else ""))
    if not self._groups:
      raise ValueError(
          f"Model '{model.name}' has no prunable channel groups (its groups: "
          f"{[g.name for g in self._analysis.groups]}; keep_stem="
          f"{self.keep_stem}, keep_residual={self.keep_residual}, frozen "
          f"groups kept whole: {list(self.frozen_groups)}). "
          "EPICallback needs trainable convolution or Dense layers whose "
          "outputs are not model outputs (or prune_frozen=True).")
    self._check_run_settings()
    self._macs_dense = budget_lib.planned_macs(self._analysis, {})
    needs_gradients = (self.criterion == "taylor" or
                       self.policy == "early_bird")
    if needs_gradients and getattr(model, "optimizer", None) is None:
      raise ValueError("EPICallback needs a compiled model (an optimizer) "
                       "for Taylor scores and Early-Bird.")
    saved = self.load_saved_state()
    if saved is not None:  # resuming an interrupted run
      self.set_state(saved)
    if self.pruned:
      self._start_masking()
      logging.info("EPICallback: resumed a run pruned after %d epochs.",
                   self.prune_epoch)
      return
    if needs_gradients:
      if self.criterion == "taylor" and self.policy != "early_bird":
        self._scorer = importance_lib.TaylorScorer(
            model, self._groups, reduction=self.taylor_reduction)
      self._install_gradient_hook()
    if saved is not None:
      return
    if self.policy == "fixed" and self.fixed_epoch == 0:
      if self.gradual_steps > 1:
        self._start_gradual(0)
      elif self._scorer is None:
        self._prune(self._scores_for_pruning(), 0)

  def _claim_model(self):
    """Refuses a second EPICallback in the same fit of the same model."""
    other = _RUNNING.get(self.model)
    other = other() if other is not None else None
    if (other is not None and other is not self and
        self.params is not None and other.params is self.params):
      raise ValueError(
          "Two EPICallbacks in one fit of the same model: each would score, "
          "mask and prune it on its own. Pass exactly one EPICallback (to "
          "compare settings, run one fit per callback on copies of the "
          "model).")
    _RUNNING[self.model] = weakref.ref(self)

  def _check_run_settings(self):
    """Warnings and errors that need the model and the fit's parameters."""
    if all(self.min_channels >= g.size for g in self._groups):
      warnings.warn(
          f"EPICallback: min_channels={self.min_channels} is at least the "
          f"size of every prunable group (largest: "
          f"{max(g.size for g in self._groups)} channels), so pruning removes "
          "nothing. Lower `min_channels`.", UserWarning, stacklevel=2)
    steps = (self.params or {}).get("steps")
    if (self.policy == "fixed" and self.fixed_epoch == 0 and
        self.criterion == "taylor" and self.gradual_steps == 1 and
        steps is not None and self.init_steps > steps):
      raise ValueError(
          f"`init_steps`={self.init_steps} is longer than an epoch ({steps} "
          "steps): with policy='fixed' and prune_epoch=0 the model is pruned "
          "after `init_steps` batches of the first epoch. Pass init_steps <= "
          f"{steps}, or prune_epoch=1 to prune after the first epoch.")

  def on_train_batch_begin(self, batch, logs=None):
    if self._hook is not None:
      self._hook.grant()

  def on_train_batch_end(self, batch, logs=None):
    if self._gradual_epoch is not None and not self.pruned:
      self._gradual_batch_end(batch)
    elif (self.policy == "fixed" and self.fixed_epoch == 0 and
          not self.pruned and self._epoch == 0 and
          batch + 1 >= self.init_steps):
      self._prune(self._scores_for_pruning(), 0)
    if self._apply_masks is not None:
      self._apply_masks()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    if self._gradual_epoch == epoch and not self.pruned:  # last step: cut
      scores = self._scores_for_pruning()
      self._prune(scores, epoch + 1, self._plan(scores, self.prune_ratio))
    if self.pruned:
      logs.update(self._last_logs)
      self._save_state()
      return
    scores = self._current_scores()
    if scores is None:  # nothing (finite) scored this epoch
      due = ((self.policy == "fixed" and epoch + 1 >= self.fixed_epoch) or
             (self.prune_by is not None and epoch + 1 >= self.prune_by))
      if not due:
        return
      scores = self._scores_for_pruning()  # a fixed trigger still fires
    keep = self._plan(scores, self.prune_ratio)
    widths = {g.name: len(keep[g.name]) for g in self._groups}
    self.width_history.append(widths)
    fired = self._epi.update(list(widths.values()))
    self.epi_history.append(self._epi.latest)
    kept = sum(widths.values()) / sum(g.size for g in self._groups)
    self._last_logs = {
        "epi": float(self._epi.latest or 0.0),
        "kept_fraction": float(kept),
        "macs_fraction": float(budget_lib.planned_macs(self._analysis, keep) /
                               self._macs_dense),
    }
    if self.policy == "early_bird":
      mask = np.concatenate([np.isin(np.arange(g.size), keep[g.name])
                             for g in self._groups])
      fired = self._early_bird.update(mask)
      self._last_logs["eb_distance"] = float(
          self._early_bird.latest if self._early_bird.latest is not None
          else 1.0)
    elif self.policy == "fixed":
      fired = epoch + 1 >= self.fixed_epoch
    reason = self.policy
    if not fired and self.prune_by is not None and epoch + 1 >= self.prune_by:
      fired, reason = True, "deadline"
    if fired:
      self._fire_reason = reason
    logs.update(self._last_logs)
    if fired and self.gradual_steps > 1:
      self._start_gradual(epoch + 1)
    elif fired:
      self._prune(scores, epoch + 1, keep)
    self._save_state()

  def on_train_end(self, logs=None):
    self._remove_gradient_hook()
    self._release_model()
    if self.pruned and not self._stop_on_prune and not self._continuing:
      # The masked model trained on after the trigger: cut it again so that
      # `pruned_model` holds the trained weights.
      with self.model.distribute_strategy.scope():
        self.pruned_model, self._surgeon = surgeon.prune_with_surgeon(
            self.model, self.keep, self.ignore, analysis=self._analysis)
    if self._scorer is not None:
      self.skipped_batches = int(self._scorer.skipped.numpy())

  def _release_model(self):
    if self.model is not None and (_RUNNING.get(self.model) or (lambda: None))() is self:
      del _RUNNING[self.model]

  def close(self):
    """Ends this callback's part in a fit that did not reach
    `on_train_end` (an exception): removes the gradient tap. `keras_epi.fit`
    calls it on every exit; in a plain `fit` the tap removes itself at the
    next train step it is not leased for."""
    self._remove_gradient_hook()
    self._release_model()

  # -- scoring --------------------------------------------------------------

  def _current_scores(self):
    """Scores of the interval just ended, per group; resets the scorer."""
    if self.policy == "early_bird":
      scores = _batchnorm_gamma_scores(self.model, self._groups)
    elif self._scorer is not None:
      scores = self._scorer.result()
      self.skipped_batches = int(self._scorer.skipped.numpy())
      self._scorer.reset()
      if scores is None:
        return None
    else:
      scores = importance_lib.magnitude_importance(self.model, self._groups)
    if not _finite(scores):
      logging.warning(
          "EPICallback: the %s scores of epoch %d are not finite (NaN or "
          "inf weights or gradients); the epoch is not counted.",
          "Early-Bird" if self.policy == "early_bird" else self.criterion,
          self._epoch)
      return None
    self.importance = scores
    return scores

  def _scores_for_pruning(self):
    """The interval's scores; where there are none that are finite (every
    batch's Taylor scores were NaN, as under a loss scale that skips steps),
    filter magnitudes, so that a due trigger still prunes."""
    scores = self._current_scores()
    if scores is None:
      scores = importance_lib.magnitude_importance(self.model, self._groups)
      if not _finite(scores):
        raise ValueError(
            "EPICallback: cannot prune, the model's weights are not finite "
            "(NaN or inf): there is no score to rank the channels by. Check "
            "the learning rate and the data, or add "
            "keras.callbacks.TerminateOnNaN().")
      logging.warning("EPICallback: no finite %s scores this interval; the "
                      "plan ranks filter magnitudes instead.", self.criterion)
      self.importance = scores
    return scores

  def _install_gradient_hook(self):
    """Taps the train step's gradients (Taylor scores, Early-Bird's L1)."""
    gammas = set()
    if self.policy == "early_bird":
      for g in self._groups:
        for path, _ in g.members:
          layer = graph.layer_at(self.model, path)
          if isinstance(layer, keras.layers.BatchNormalization) and \
              getattr(layer, "gamma", None) is not None:
            gammas.add(id(layer.gamma))
    callback = weakref.ref(self)

    def on_gradients(grads, variables):
      cb = callback()
      if cb is None or cb.pruned:
        return grads
      if cb._scorer is not None:  # pylint: disable=protected-access
        cb._scorer.update(grads, variables)  # pylint: disable=protected-access
      if gammas and cb.early_bird_penalty:
        grads = [g + cb.early_bird_penalty * tf.sign(v.value)
                 if id(v) in gammas and g is not None else g
                 for g, v in zip(grads, variables)]
      return grads

    self._hook = GradientTap(self.model, on_gradients)
    self._hook.install()

  def _remove_gradient_hook(self):
    if self._hook is not None:
      self._hook.remove()
      self._hook = None

  # -- pruning --------------------------------------------------------------

  def _plan(self, scores, ratio):
    """The dominant sub-network for `ratio`; channels already removed by a
    gradual step are ranked first for removal, so steps only add to it."""
    if self.keep is not None:
      scores = {name: np.where(np.isin(np.arange(len(v)), self.keep[name]),
                               v, -np.inf) for name, v in scores.items()}
    return budget_lib.plan_channels(
        self._analysis, scores, ratio, budget=self.budget,
        latency_table=self.latency_table,
        min_channels=self.min_channels, round_to=self.round_to,
        keep_stem=False)

  def _start_gradual(self, epoch):
    if not self.params or self.params.get("steps") is None:
      raise ValueError(
          "EPICallback(gradual_steps>1) needs the number of steps per epoch: "
          "pass `steps_per_epoch` to fit, or data of known length.")
    self._gradual_epoch = epoch
    self._gradual_step = 0

  def _gradual_batch_end(self, batch):
    if self._epoch != self._gradual_epoch:
      return
    step = self._gradual_step + 1
    if step >= self.gradual_steps or batch + 1 < round(
        self.params["steps"] * step / self.gradual_steps):
      return
    self._gradual_step = step
    scores = self._current_scores()
    if scores is None:
      return
    self.keep = self._plan(scores, self.prune_ratio * step /
                           self.gradual_steps)
    self._start_masking()

  def _prune(self, scores, prune_epoch, keep=None):
    if keep is None:
      keep = self._plan(scores, self.prune_ratio)
    model = self.model
    self.keep = keep
    self.prune_epoch = prune_epoch
    self.prune_reason = self._fire_reason or self.policy
    macs_before = self._macs_dense
    if not self._stop_on_prune:  # keras_epi.fit trains the cut model instead
      self._start_masking()
    with model.distribute_strategy.scope():
      self.pruned_model, self._surgeon = surgeon.prune_with_surgeon(
          model, keep, self.ignore, analysis=self._analysis)
    macs_after = budget_lib.count_macs(self.pruned_model)
    self._last_logs.update({
        "kept_fraction": float(
            sum(len(keep[g.name]) for g in self._groups) /
            sum(g.size for g in self._groups)),
        "macs_fraction": float(macs_after / macs_before),
    })
    self._last_logs.setdefault("epi", float(self._epi.latest or 0.0))
    if self.verbose:
      changes = ", ".join(
          f"{g.name} {g.size}->{len(keep[g.name])}" for g in self._groups[:8]
          if len(keep[g.name]) != g.size)
      logging.info(
          "EPICallback: pruning after %d dense epoch(s) (policy=%s, EPI=%s): "
          "MACs %.4gG -> %.4gG (%.1f%%), params %d -> %d; widths: %s%s",
          prune_epoch, self.policy,
          "n/a" if self._epi.latest is None else f"{self._epi.latest:.4f}",
          macs_before / 1e9, macs_after / 1e9, 100 * macs_after / macs_before,
          model.count_params(), self.pruned_model.count_params(), changes,
          ", ..." if len(self._groups) > 8 else "")
    self._remove_gradient_hook()  # scoring is over: plain train steps
    if self._stop_on_prune:
      model.stop_training = True

  def _start_masking(self):
    self._masks = masking.channel_masks(self.model, self._analysis, self.keep)
    self._apply_masks = masking.make_mask_function(self._masks)
    self._apply_masks()

  # -- checkpointable state (BackupAndRestore-style resumption) --------------

  def get_state(self):
    """The run state as plain data (for resuming an interrupted run)."""
    return {
        "version": 1,
        "prune_epoch": self.prune_epoch,
        "prune_reason": self.prune_reason,
        "keep": None if self.keep is None else {
            k: np.asarray(v).tolist() for k, v in self.keep.items()},
        "epi": self._epi.get_state(),
        "early_bird": self._early_bird.get_state(),
        "width_history": self.width_history,
        "epi_history": self.epi_history,
        "last_logs": self._last_logs,
    }

  def set_state(self, state):
    """Restores `get_state()` output (after `on_train_begin`'s reset)."""
    self._epi.set_state(state["epi"])
    self._early_bird.set_state(state["early_bird"])
    self.width_history = list(state["width_history"])
    self.epi_history = list(state["epi_history"])
    self._last_logs = dict(state["last_logs"])
    if state["prune_epoch"] is not None:
      self.prune_epoch = state["prune_epoch"]
      self.prune_reason = state.get("prune_reason")
      self.keep = {k: np.asarray(v, dtype=np.int64)
                   for k, v in state["keep"].items()}

  @property
  def state_path(self):
    """Where the run state is saved, or None without `backup_dir`."""
    if self.backup_dir is None:
      return None
    return os.path.join(self.backup_dir, _STATE_FILE)

  def load_saved_state(self):
    """The state saved in `backup_dir` by an interrupted run, or None."""
    path = self.state_path
    if path is None or not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)

  def _save_state(self):
    path = self.state_path
    if path is None:
      return
    tf.io.gfile.makedirs(self.backup_dir)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
      json.dump(self.get_state(), f)
    tf.io.gfile.rename(tmp, path, overwrite=True)


# The EPICallback in a fit of each model, to refuse a second one.
_RUNNING = weakref.WeakKeyDictionary()


def _finite(scores):
  return all(np.isfinite(v).all() for v in scores.values())


def _is_frozen(layer):
  """A layer with weights that are not trained (``trainable=False``).
  `layer` may be None: a layer a composite layer makes in its `call`."""
  return layer is not None and bool(layer.weights) and not layer.trainable


# Re-exported: the masks used to live here.
channel_masks = masking.channel_masks


class GradientTap:
  """Sees the gradients of `model.fit`'s train step, for one fit at most.

  The tap wraps the optimizer's `apply` *only while the train function runs*
  (a context manager around each call, so an exception or a
  `KeyboardInterrupt` anywhere cannot leave the wrapper behind), and the
  train function it wraps is traced with the wrapper in its graph. Each train
  step needs a lease (`grant`, from the owning callback's
  `on_train_batch_begin`): a step without one belongs to a later `fit` that
  the callback is not part of (the one that installed the tap ended with an
  exception, which Keras' `fit` does not report to callbacks), so the tap
  removes itself and the step runs the plain train function. The owner is
  held weakly by `on_gradients`, so the tap never outlives it.

  Args:
    model: The compiled model whose train steps are tapped.
    on_gradients: ``on_gradients(grads, variables) -> grads``, called while
      the train step traces (its TensorFlow ops become part of the step).
  """

  def __init__(self, model, on_gradients):
    self.model = model
    self.on_gradients = on_gradients
    optimizer = model.optimizer
    self._optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    self._leased = False
    self._installed = False
    self._train_function = None  # our wrapper, while installed

  def install(self):
    """Retraces the model's train function with the tap in it."""
    self._installed = True
    self._leased = False
    self.model.make_train_function(force=True)
    traced = self.model.train_function
    tap = self

    def train_function(iterator):
      if not (tap._installed and tap._leased):  # pylint: disable=protected-access
        tap.remove()  # a stale tap: the fit that installed it is over
        return tap.model.train_function(iterator)
      tap._leased = False  # pylint: disable=protected-access
      with tap.tapping():
        return traced(iterator)

    self._train_function = train_function
    self.model.train_function = train_function

  def grant(self):
    """Lets the next train step run tapped (one lease per train-function
    call; call it from `on_train_batch_begin`)."""
    self._leased = True

  @property
  def installed(self):
    return self._installed

  def remove(self):
    """Restores plain train steps. Idempotent."""
    if not self._installed:
      return
    self._installed = False
    self._leased = False
    if self.model.train_function is self._train_function:
      self.model.make_train_function(force=True)
    self._train_function = None

  @contextlib.contextmanager
  def tapping(self):
    """The optimizer's `apply` wrapped, for the body of the `with`."""
    inner = self._optimizer
    previous = vars(inner).get("apply")
    original = inner.apply
    on_gradients = self.on_gradients

    def apply(grads, trainable_variables=None):
      variables = (trainable_variables if trainable_variables is not None
                   else internals.optimizer_variables_to_train(inner))
      grads = on_gradients(list(grads), list(variables))
      return original(grads, trainable_variables)

    inner.apply = apply
    try:
      yield
    finally:
      if previous is None:
        vars(inner).pop("apply", None)
      else:
        inner.apply = previous


def _batchnorm_gamma_scores(model, groups):
  """Early-Bird's scores: sum of |gamma| over a group's BN members."""
  scores = {}
  for g in groups:
    total = np.zeros(g.size)
    for path, positions in g.members:
      layer = graph.layer_at(model, path)
      if isinstance(layer, keras.layers.BatchNormalization) and \
          getattr(layer, "gamma", None) is not None:
        total += importance_lib.gather_channels(
            np.abs(keras.ops.convert_to_numpy(layer.gamma)), positions)
    scores[g.name] = total
  return scores
