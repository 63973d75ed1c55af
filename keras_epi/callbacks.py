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

Taylor scores reuse the gradients of the train step: the callback wraps the
optimizer's `apply` for the duration of `fit`, so no second backward pass is
paid.
"""

import json
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras_epi import _keras_internals as internals
from keras_epi import budget as budget_lib
from keras_epi import graph
from keras_epi import importance as importance_lib
from keras_epi import indicators
from keras_epi import plan as plan_lib
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
    budget: "neurons" or "macs".
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
  """

  def __init__(self, prune_ratio=0.3, budget="neurons", criterion="taylor",
               window=5, threshold=None, policy="epi", prune_epoch=None,
               prune_by=None,
               ignore=(), min_channels=1, round_to=1, keep_stem=True,
               keep_residual=False,
               taylor_reduction="square", init_steps=20,
               early_bird_penalty=1e-4, early_bird_distance=0.1,
               backup_dir=None, gradual_steps=1, verbose=1):
    super().__init__()
    if isinstance(prune_ratio, bool) or not isinstance(
        prune_ratio, (int, float)) or not 0.0 < prune_ratio < 1.0:
      raise ValueError(f"`prune_ratio` must be a number in (0, 1), received "
                       f"{prune_ratio!r}.")
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
      if not isinstance(prune_epoch, int) or prune_epoch < 0:
        raise ValueError("`prune_epoch` must be an integer >= 0 with "
                         f"policy='fixed', received {prune_epoch!r}.")
    elif prune_epoch is not None:
      raise ValueError(f"`prune_epoch` is only used with policy='fixed'; "
                       f"received prune_epoch={prune_epoch!r} with "
                       f"policy={policy!r}.")
    if prune_by is not None and (
        policy == "fixed" or isinstance(prune_by, bool) or
        not isinstance(prune_by, int) or prune_by < 1):
      raise ValueError(
          f"`prune_by` must be None or an integer >= 1 with policy='epi' or "
          f"'early_bird', received prune_by={prune_by!r} with "
          f"policy={policy!r}.")
    self.prune_by = prune_by
    if threshold is None:
      threshold = indicators.PAPER_THRESHOLDS[criterion]
    # Validates window and threshold.
    indicators.EarlyPruningIndicator(window=window, threshold=threshold)
    if taylor_reduction not in importance_lib.TAYLOR_REDUCTIONS:
      raise ValueError(f"`taylor_reduction` must be one of "
                       f"{importance_lib.TAYLOR_REDUCTIONS}, received "
                       f"{taylor_reduction!r}.")
    if not isinstance(init_steps, int) or init_steps < 1:
      raise ValueError(f"`init_steps` must be an integer >= 1, received "
                       f"{init_steps!r}.")
    if early_bird_penalty < 0:
      raise ValueError(f"`early_bird_penalty` must be >= 0, received "
                       f"{early_bird_penalty!r}.")
    budget_lib._check_arguments(prune_ratio, budget, min_channels, round_to)  # pylint: disable=protected-access
    if isinstance(ignore, str):
      raise ValueError(f"`ignore` must be a collection of layer names, "
                       f"received the string {ignore!r}.")
    self.prune_ratio = float(prune_ratio)
    self.budget = budget
    self.criterion = criterion
    self.window = window
    self.threshold = float(threshold)
    self.policy = policy
    self.fixed_epoch = prune_epoch
    self.ignore = tuple(ignore)
    self.min_channels = min_channels
    self.round_to = round_to
    self.keep_stem = keep_stem
    self.keep_residual = bool(keep_residual)
    self.taylor_reduction = taylor_reduction
    self.init_steps = init_steps
    self.early_bird_penalty = float(early_bird_penalty)
    self.early_bird_distance = float(early_bird_distance)
    if not isinstance(gradual_steps, int) or gradual_steps < 1:
      raise ValueError(f"`gradual_steps` must be an integer >= 1, received "
                       f"{gradual_steps!r}.")
    self.backup_dir = backup_dir
    self.gradual_steps = gradual_steps
    self.verbose = verbose
    # Set by keras_epi.fit: stop `fit` at the trigger / continue a run.
    self._stop_on_prune = False
    self._continuing = False
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
    if self._continuing:  # keras_epi.fit goes on with the pruned model
      self._save_state()
      return
    self._reset_run_state()
    model = self.model
    self._analysis = graph.analyze(model, self.ignore)
    stem = self._analysis.groups[0].name if self._analysis.groups else None
    self._groups = [g for g in self._analysis.groups
                    if not (self.keep_stem and g.name == stem) and
                    not (self.keep_residual and g.residual)]
    if not self._groups:
      raise ValueError(
          f"Model '{model.name}' has no prunable channel groups (its groups: "
          f"{[g.name for g in self._analysis.groups]}; keep_stem="
          f"{self.keep_stem}, keep_residual={self.keep_residual}). "
          "EPICallback needs convolution or Dense layers whose outputs are "
          "not model outputs.")
    self._macs_dense = budget_lib.planned_macs(self._analysis, {})
    needs_gradients = (self.criterion == "taylor" or
                       self.policy == "early_bird")
    if needs_gradients:
      if getattr(model, "optimizer", None) is None:
        raise ValueError("EPICallback needs a compiled model (an optimizer) "
                         "for Taylor scores and Early-Bird.")
      if self.criterion == "taylor" and self.policy != "early_bird":
        self._scorer = importance_lib.TaylorScorer(
            model, self._groups, reduction=self.taylor_reduction)
      self._install_gradient_hook()
    saved = self.load_saved_state()
    if saved is not None:  # resuming an interrupted run
      self.set_state(saved)
      if self.pruned:
        self._start_masking()
        logging.info("EPICallback: resumed a run pruned after %d epochs.",
                     self.prune_epoch)
      return
    if self.policy == "fixed" and self.fixed_epoch == 0:
      if self.gradual_steps > 1:
        self._start_gradual(0)
      elif self._scorer is None:
        self._prune(self._current_scores(), 0)

  def on_train_batch_end(self, batch, logs=None):
    if self._gradual_epoch is not None and not self.pruned:
      self._gradual_batch_end(batch)
    elif (self.policy == "fixed" and self.fixed_epoch == 0 and
          not self.pruned and self._epoch == 0 and
          batch + 1 >= self.init_steps):
      self._prune(self._current_scores(), 0)
    if self._apply_masks is not None:
      self._apply_masks()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    if self._gradual_epoch == epoch and not self.pruned:  # last step: cut
      scores = self._current_scores()
      self._prune(scores, epoch + 1, self._plan(scores, self.prune_ratio))
    if self.pruned:
      logs.update(self._last_logs)
      self._save_state()
      return
    scores = self._current_scores()
    if scores is None:  # nothing scored this epoch (e.g. zero steps)
      return
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
    if self.pruned and not self._stop_on_prune and not self._continuing:
      # The masked model trained on after the trigger: cut it again so that
      # `pruned_model` holds the trained weights.
      with self.model.distribute_strategy.scope():
        self.pruned_model, self._surgeon = surgeon.prune_with_surgeon(
            self.model, self.keep, self.ignore)
    if self._scorer is not None:
      self.skipped_batches = int(self._scorer.skipped.numpy())

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
    self.importance = scores
    return scores

  def _install_gradient_hook(self):
    """Wraps the optimizer's `apply` to see the train step's gradients."""
    optimizer = self.model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # loss scaling
    original = inner.apply
    callback = self
    gammas = set()
    if self.policy == "early_bird":
      for g in self._groups:
        for path, _ in g.members:
          layer = graph.layer_at(self.model, path)
          if isinstance(layer, keras.layers.BatchNormalization) and \
              getattr(layer, "gamma", None) is not None:
            gammas.add(id(layer.gamma))

    def apply(grads, trainable_variables=None):
      variables = (trainable_variables if trainable_variables is not None
                   else internals.optimizer_variables_to_train(inner))
      grads = list(grads)
      if not callback.pruned:
        if callback._scorer is not None:  # pylint: disable=protected-access
          callback._scorer.update(grads, variables)  # pylint: disable=protected-access
        if gammas and callback.early_bird_penalty:
          grads = [g + callback.early_bird_penalty * tf.sign(v.value)
                   if id(v) in gammas and g is not None else g
                   for g, v in zip(grads, variables)]
      return original(grads, trainable_variables)

    inner.apply = apply
    self._hook = inner
    # fit() made its train function before on_train_begin; trace it again so
    # the hook is in the graph.
    self.model.make_train_function(force=True)

  def _remove_gradient_hook(self):
    if self._hook is not None:
      del self._hook.apply  # the class method shows through again
      self._hook = None
      self.model.make_train_function(force=True)

  # -- pruning --------------------------------------------------------------

  def _plan(self, scores, ratio):
    """The dominant sub-network for `ratio`; channels already removed by a
    gradual step are ranked first for removal, so steps only add to it."""
    if self.keep is not None:
      scores = {name: np.where(np.isin(np.arange(len(v)), self.keep[name]),
                               v, -np.inf) for name, v in scores.items()}
    return budget_lib.plan_channels(
        self._analysis, scores, ratio, budget=self.budget,
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
          model, keep, self.ignore)
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
    if self._stop_on_prune:
      model.stop_training = True
    elif self._hook is not None:
      self.model.make_train_function(force=True)  # drop scoring from steps

  def _start_masking(self):
    self._masks = channel_masks(self.model, self._analysis, self.keep)
    self._apply_masks = _make_mask_function(self._masks)
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


def channel_masks(model, analysis, keep):
  """[(variable, mask)] that zeroes the removed channels of every member.

  The masks cover the producing kernels and biases, depthwise kernels and
  BatchNormalization gamma, beta and moving mean of every layer that carries
  a removed channel at its output, and the optimizer slots of those weights.
  Masks have broadcastable shapes (one entry per output channel).
  """
  plan = plan_lib.ResolvedPlan(analysis, keep)
  masks = []
  for call in analysis.calls.values():
    if not isinstance(call.op, keras.layers.Layer) or not call.outs:
      continue
    alive = plan.masks(call)["out"]
    if alive.all():
      continue
    for weight in call.op.weights:
      if weight.name == "moving_variance":
        continue
      axis = call.rule.output_axis(weight.name)
      if axis is None:
        continue
      shape = list(weight.shape)
      if axis == "depthwise":
        mask = alive.reshape(shape[-2], shape[-1])
        mask = mask.reshape([1] * (len(shape) - 2) + shape[-2:])
      else:
        if shape[axis] != len(alive):
          continue
        mask_shape = [1] * len(shape)
        mask_shape[axis] = len(alive)
        mask = alive.reshape(mask_shape)
      masks.append((weight, mask))
  optimizer = getattr(model, "optimizer", None)
  if optimizer is not None:
    masks.extend(_slot_masks(optimizer, masks))
  return masks


def _slot_masks(optimizer, masks):
  """Masks for the optimizer variables (momentum, Adam slots) of `masks`."""
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  by_prefix = {}
  for weight, mask in masks:
    if hasattr(weight, "path"):
      by_prefix[weight.path.replace("/", "_") + "_"] = (weight, mask)
  out = []
  for variable in inner.variables:
    name = variable.name
    best = None
    for prefix in by_prefix:
      if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
        best = prefix
    if best is None:
      continue
    weight, mask = by_prefix[best]
    if tuple(variable.shape) == tuple(weight.shape):
      out.append((variable, mask))
  return out


def _make_mask_function(masks):
  pairs = [(v, tf.constant(m, dtype=v.dtype)) for v, m in masks]

  @tf.function
  def apply_masks():
    for variable, mask in pairs:
      variable.assign(variable * mask)

  return apply_masks


def _batchnorm_gamma_scores(model, groups):
  """Early-Bird's scores: sum of |gamma| over a group's BN members."""
  scores = {}
  for g in groups:
    total = np.zeros(g.size)
    for path, positions in g.members:
      layer = graph.layer_at(model, path)
      if isinstance(layer, keras.layers.BatchNormalization) and \
          getattr(layer, "gamma", None) is not None:
        gamma = np.abs(keras.ops.convert_to_numpy(layer.gamma))[positions]
        total += gamma.sum(axis=1) if gamma.ndim == 2 else gamma
    scores[g.name] = total
  return scores
