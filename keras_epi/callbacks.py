"""EPICallback: score filters during `model.fit`, decide when to prune, prune.

One line added to `model.fit`::

  cb = keras_epi.EPICallback(prune_ratio=0.3)
  model.fit(x, y, epochs=30, callbacks=[cb])
  cb.prune_epoch, cb.pruned_model

At the end of every epoch the callback ranks all prunable channels globally
(`keras_epi.select_channels`), forms the dominant sub-network that pruning now
would keep, and shows it to its trigger (`keras_epi.triggers`: the paper's
EPI, Early-Bird, a fixed epoch, a deadline, gradual steps, or your own). When
the trigger fires, it prunes: it builds `pruned_model` (physically smaller,
weights copied) and, inside a plain `model.fit`, holds the removed channels
of the training model at exactly zero for the rest of training (weights,
their optimizer slots, BatchNormalization; `keras_epi.masking`), so the
trained model and `pruned_model` compute the same function for any
activation. `keras_epi.fit` instead continues training on `pruned_model`,
where the training-cost saving comes from.

The parts: `keras_epi.scoring` scores the channels, through a
`keras_epi.tap.GradientTap` that sees the train step's gradients for Taylor
scores without a second backward pass (and cannot outlive an exception or
the callback); the trigger decides when; `keras_epi.pruning` decides which
groups may be cut and what the scores remove under the budget, and makes the
cut (`keras_epi.masking` holds the removed channels at zero);
`keras_epi.state` keeps the run state, written atomically beside the
checkpoint, for resuming after a kill. The callback wires them into `fit`.
"""

import contextlib
import os
import weakref

from absl import logging
import keras
import numpy as np

from keras_epi import _validation as validation
from keras_epi import budget as budget_lib
from keras_epi import graph
from keras_epi import importance as importance_lib
from keras_epi import indicators
from keras_epi import masking
from keras_epi import pruning as pruning_lib
from keras_epi import scoring as scoring_lib
from keras_epi import state as state_lib
from keras_epi import tap as tap_lib
from keras_epi import triggers as triggers_lib

CRITERIA = ("taylor", "magnitude")
POLICIES = triggers_lib.POLICIES
GradientTap = tap_lib.GradientTap  # re-exported: it used to live here
channel_masks = masking.channel_masks  # re-exported: it used to live here


class EPICallback(keras.callbacks.Callback):
  """Early structural pruning during `model.fit`.

  Per-epoch values published in `logs` (so History, CSVLogger, TensorBoard,
  EarlyStopping and the progress bar see them): ``epi`` (0.0 until `window`
  epochs exist), ``kept_fraction`` (kept / prunable channels of the dominant
  sub-network) and ``macs_fraction`` (its MACs / dense MACs); with an
  Early-Bird trigger also ``eb_distance``.

  Args:
    prune_ratio: Fraction of the budget removed, in (0, 1). With
      ``budget="neurons"`` the paper's "pruned ratio": the fraction of
      prunable channels removed.
    budget: "neurons", "macs" or "latency" (the fraction of the latency
      that `latency_table` predicts; see `keras_epi.select_channels`).
    criterion: "taylor" (first-order Taylor on BatchNormalization, from the
      train step's gradients) or "magnitude" (filter norm / sqrt(size)).
    window: r, the number of previous epochs EPI compares with (>= 1). EPI
      is computed and logged under every trigger.
    threshold: tau; None takes the paper's value for the criterion (0.944
      taylor, 0.983 magnitude). Tune it on your data and schedule.
    trigger: A `keras_epi.triggers.Trigger` that decides when to prune;
      None builds one from `policy` and its arguments below, which are then
      shorthands: ``policy="epi"`` is `EPITrigger()`, ``"early_bird"``
      `EarlyBirdTrigger(early_bird_distance, early_bird_penalty)`,
      ``"fixed"`` `AtEpoch(prune_epoch)`; `prune_by` wraps it in a
      `Deadline`, ``gradual_steps > 1`` in `Gradual`. Pass either `trigger`
      or those arguments.
    policy: "epi" (the paper), "early_bird" (You et al. 2020) or "fixed"
      (prune after `prune_epoch` dense epochs; 0 prunes at initialisation).
    prune_epoch: With ``policy="fixed"``: dense epochs before pruning.
    prune_by: A deadline: prune after this many dense epochs if the trigger
      has not fired (`prune_reason` is then "deadline").
    ignore: Layer names whose channels stay (see `keras_epi.channel_groups`).
    min_channels: Channels every group keeps at least.
    round_to: Kept widths are rounded to multiples of this.
    keep_stem: Leave the first conv's group whole (HALP does). The
      classifier's outputs are never pruned.
    keep_residual: Leave the residual streams whole (`ChannelGroup.residual`)
      and meet the budget inside the blocks.
    taylor_reduction: "square" (mean of s^2 per interval, Taylor_pruning) or
      "abs" (mean |s|, HALP).
    init_steps: Batches scored before pruning at initialisation.
    early_bird_penalty: L1 coefficient on BN gamma for "early_bird".
    early_bird_distance: Early-Bird's mask distance threshold.
    backup_dir: Directory of the run state (`keras_epi.state`): saved every
      epoch, so that a run killed at any point and restarted with
      `keras.callbacks.BackupAndRestore` resumes it. Put the EPICallback
      before BackupAndRestore in `callbacks` (`keras_epi.fit` does). A state
      of another model, or one the restored checkpoint does not match, is
      set aside with a warning. `keras_epi.fit` takes the directory from a
      BackupAndRestore in its callbacks when None.
    gradual_steps: k > 1 prunes gradually over the epoch after the trigger
      (`keras_epi.triggers.Gradual`).
    prune_frozen: False (default) keeps every group whole that a frozen
      layer (``trainable=False``, with weights) produces or carries, as in
      fine-tuning with a frozen backbone; they are listed in `frozen_groups`
      and logged. True prunes them like the others.
    verbose: 1 logs the prune event.
    latency_table: A `keras_epi.LatencyTable` measured on the model
      (``training=True`` for the cost of the training steps after the
      prune; measured with the same `round_to`); required with
      ``budget="latency"`` and only then.

  Attributes:
    prune_epoch: Dense epochs trained before pruning (so the first pruned
      epoch's index), or None.
    prune_reason: The trigger's name ("epi", "early_bird", "fixed", ...) or
      "deadline"; None before.
    pruned_model: The physically smaller `keras.Model`, or None.
    keep: The pruning plan {group name: kept indices}, or None.
    importance: Latest scores {group name: np.ndarray of group.size}.
    epi_history: EPI per scored epoch (None where undefined).
    width_history: Per scored epoch, {group name: kept width} of the
      dominant sub-network.
    early_bird_history: Early-Bird's largest mask distance per epoch.
    skipped_batches: Train steps whose Taylor scores were not finite
      (including the steps a loss-scale optimizer skipped).
    frozen_groups: Names of the groups kept whole because a member layer is
      frozen (empty with ``prune_frozen=True``).
    surgeon: The `keras_epi.surgeon.Surgeon` that made `pruned_model` (its
      `weight_pairs` map each old weight to its cut copy).

  Raises:
    ValueError: for an argument out of its range or of the wrong type (the
      message names it); at `on_train_begin`, for a model without prunable
      groups, a second EPICallback in the same fit, or ``prune_epoch=0``
      with `init_steps` longer than an epoch.
  """

  def __init__(self, prune_ratio=0.3, budget="neurons", criterion="taylor",
               window=5, threshold=None, policy="epi", prune_epoch=None,
               prune_by=None, ignore=(), min_channels=1, round_to=1,
               keep_stem=True, keep_residual=False, taylor_reduction="square",
               init_steps=20, early_bird_penalty=1e-4,
               early_bird_distance=0.1, backup_dir=None, gradual_steps=1,
               prune_frozen=False, verbose=1, latency_table=None,
               trigger=None):
    super().__init__()
    self.prune_ratio = validation.number("prune_ratio", prune_ratio, "(0, 1)")
    self.criterion = validation.choice("criterion", criterion, CRITERIA)
    self.taylor_reduction = validation.choice(
        "taylor_reduction", taylor_reduction, importance_lib.TAYLOR_REDUCTIONS)
    self.trigger = triggers_lib.from_arguments(
        trigger, policy, prune_epoch, prune_by, gradual_steps,
        early_bird_penalty, early_bird_distance)
    self.window = validation.integer("window", window, 1)
    self.threshold = validation.number(
        "threshold", indicators.PAPER_THRESHOLDS[criterion]
        if threshold is None else threshold, "(0, 1]")
    budget_lib.check_arguments(self.prune_ratio, budget, min_channels,
                               round_to, latency_table)
    self.budget, self.latency_table = budget, latency_table
    self.ignore = validation.names("ignore", ignore)
    if backup_dir is not None and not isinstance(backup_dir,
                                                 (str, os.PathLike)):
      raise ValueError(f"`backup_dir` must be None or a directory path (a "
                       f"string), received {backup_dir!r}.")
    self.min_channels, self.round_to = int(min_channels), int(round_to)
    self.keep_stem = validation.boolean("keep_stem", keep_stem)
    self.keep_residual = validation.boolean("keep_residual", keep_residual)
    self.prune_frozen = validation.boolean("prune_frozen", prune_frozen)
    self.init_steps = validation.integer("init_steps", init_steps, 1)
    self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
    self.verbose = verbose
    self._handoff = None  # set by `stop_at_prune` / `continue_on`
    self._scoring = None
    self._reset()

  def _reset(self):
    self.prune_epoch = self.prune_reason = self.pruned_model = None
    self.keep = self.surgeon = None
    self.importance = {}
    self.skipped_batches = 0
    self.frozen_groups = ()
    self._state = None  # state_lib.RunState of this run
    self._saved = None  # the state found in backup_dir, until reconciled
    self._pruning = None  # pruning_lib.Pruning of this fit
    self._gradual_epoch = None
    self._gradual_step = 0
    self._epoch = 0
    self._first_epoch = True
    self._fire_reason = None
    self._epi = indicators.EarlyPruningIndicator(self.window, self.threshold)
    self._last_logs = {}

  # -- what it has decided ----------------------------------------------------

  @property
  def pruned(self):
    return self.prune_epoch is not None

  @property
  def policy(self):
    """The trigger's name ("epi", "early_bird", "fixed" or your own)."""
    return self.trigger.name

  @property
  def width_history(self):
    return [h["widths"] for h in self._state.history] if self._state else []

  @property
  def epi_history(self):
    return [h["epi"] for h in self._state.history] if self._state else []

  @property
  def early_bird_history(self):
    early_bird = triggers_lib.find(self.trigger,
                                   triggers_lib.EarlyBirdTrigger)
    return early_bird.history if early_bird else []

  @property
  def state_file(self):
    """The `keras_epi.state.StateFile` in `backup_dir`, or None."""
    return state_lib.StateFile(self.backup_dir) if self.backup_dir else None

  # -- the protocol of keras_epi.fit (and of loops like it) --------------------

  @contextlib.contextmanager
  def stop_at_prune(self, prepare):
    """Within the `with`, a fit ends at the trigger instead of masking. At
    the end of that fit (after every callback has seen the last epoch's end,
    so a learning rate ReduceLROnPlateau set then is carried),
    `prepare(pruned_model, surgeon)` compiles the pruned model and carries
    the optimizer state over; then the pruned weights and optimizer
    variables, and the state that names them, are written to `backup_dir`
    (when set). On exit the callback's gradient tap is removed, whatever
    ended the `with`."""
    self._handoff = {"prepare": prepare, "continuing": False}
    try:
      yield self
    finally:
      self._handoff = None
      self.close()

  def continue_on(self, pruned_model):
    """The next fit (inside `stop_at_prune`) trains `pruned_model`: the
    callback logs its values and saves its state, and scores nothing."""
    self.pruned_model = pruned_model
    self._handoff["continuing"] = True

  def resume_pruned(self, model, checkpoint=None):
    """Inside `stop_at_prune`: the pruned model of an interrupted run, from
    the state in `backup_dir`: rebuilt from `model` with the saved plan,
    given to `stop_at_prune`'s `prepare`, and
    given the trained weights and optimizer state saved at the cut. If the
    run was killed after the trigger but before those were written, they
    are made again from `checkpoint` (``(weights file, epochs done)`` of
    the dense model's BackupAndRestore checkpoint) when it is of the prune
    epoch. None if the run was not pruned (or there is no state, or the
    prune must be made again by the dense fit)."""
    self._reset()
    self.trigger.start(self.criterion, window=self.window,
                       threshold=self.threshold)
    analysis = saved = None
    if self.state_file and self.state_file.exists():
      analysis = graph.analyze(model, self.ignore)
      saved = self.state_file.load_for(model, analysis)
    if saved is None or saved.prune is None:
      return None
    pending = saved.prune.get("weights") is None
    if pending and saved.prune.get("handoff"):
      if checkpoint is None or checkpoint[1] != saved.prune["epoch"]:
        return None  # the dense fit goes back to the checkpoint's epoch
      if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
      model.load_weights(checkpoint[0])
    elif pending:
      raise ValueError(
          f"The run state in {self.backup_dir} is of a plain model.fit with "
          "EPICallback (the pruned channels are masked in the dense model's "
          "checkpoint); keras_epi.fit cannot continue it. Continue it with "
          "model.fit, or delete the directory to start afresh.")
    self._adopt(saved)
    self.pruned_model, self.surgeon = pruning_lib.cut(model, self.keep,
                                                      self.ignore, analysis)
    self._finish_cut(save=pending)
    if not pending:
      self.state_file.load_weights(self.pruned_model)
    return self.pruned_model

  def close(self):
    """Ends this callback's part in a fit that did not reach
    `on_train_end` (an exception): removes the gradient tap."""
    if self._scoring is not None:
      self._scoring.stop()
      self.skipped_batches = self._scoring.skipped
      self._scoring = None
    _release(self)

  # -- Keras lifecycle ----------------------------------------------------------

  def on_train_begin(self, logs=None):
    if not (self._handoff and self._handoff["continuing"]):
      self.close()  # a tap left by a fit that ended with an exception
    self._claim_model()
    if self._handoff and self._handoff["continuing"]:
      return
    self._reset()
    model = self.model
    analysis = graph.analyze(model, self.ignore)
    self.frozen_groups, groups = pruning_lib.prunable_groups(
        model, analysis, keep_stem=self.keep_stem,
        keep_residual=self.keep_residual, prune_frozen=self.prune_frozen,
        min_channels=self.min_channels)
    self._check_init_steps()
    self._pruning = pruning_lib.Pruning(
        analysis, groups, budget=self.budget,
        latency_table=self.latency_table, min_channels=self.min_channels,
        round_to=self.round_to, ignore=self.ignore)
    self._saved = (self.state_file.load_for(model, analysis)
                   if self.state_file else None)
    self._state = state_lib.RunState(state_lib.fingerprint(model, analysis))
    self.trigger.start(self.criterion, window=self.window,
                       threshold=self.threshold)
    if self.budget == "latency":
      self._pruning.check_latency_target(self.prune_ratio)
    self._scoring = scoring_lib.Scoring(
        model, groups, self.criterion, self.trigger.ranks_batchnorm,
        self.trigger.gamma_penalty, self.taylor_reduction)

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    if self._first_epoch and not (self._handoff and
                                  self._handoff["continuing"]):
      self._first_epoch = False
      self._resume(epoch)
      if not self.pruned and epoch == 0 and self.trigger.at_start:
        if self.trigger.gradual_steps > 1:
          self._start_gradual(0)
        elif not self._scoring.needs_steps:
          self._prune(self._scoring.scores_for_pruning(epoch), 0)

  def on_train_batch_begin(self, batch, logs=None):
    if self._scoring is not None:
      self._scoring.step()

  def on_train_batch_end(self, batch, logs=None):
    if self._gradual_epoch is not None and not self.pruned:
      self._gradual_batch_end(batch)
    elif (self.trigger.at_start and self.trigger.gradual_steps == 1 and
          not self.pruned and self._epoch == 0 and
          batch + 1 >= self.init_steps):
      self._prune(self._scoring.scores_for_pruning(0), 0)
    if self._pruning is not None:
      self._pruning.apply_masks()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs if logs is not None else {}
    if self._handoff and self._handoff["continuing"]:
      logs.update(self._last_logs)
      return
    if self._gradual_epoch == epoch and not self.pruned:  # last step: cut
      self._prune(self._scoring.scores_for_pruning(epoch), epoch + 1)
    if self.pruned:
      logs.update(self._last_logs)
      self._state.record_epoch(epoch, None, self.trigger.get_state())
      self._save_state()
      return
    record, keep, fired = self._score_epoch(epoch)
    self._state.record_epoch(epoch, record, self.trigger.get_state())
    logs.update(self._last_logs)
    if fired and self.trigger.gradual_steps > 1:
      self._start_gradual(epoch + 1)
    elif fired:
      self._prune(self.importance, epoch + 1, keep)
    self._save_state()

  def on_train_end(self, logs=None):
    continuing = self._handoff and self._handoff["continuing"]
    if self._first_epoch and self._saved is not None and not continuing:
      self._resume(self._saved.epochs_done)  # the checkpoint was the end
    self.close()
    if self._handoff and not continuing and self.pruned:
      self._finish_cut()
    # The masked model trained on after the trigger: `pruned_model` is cut
    # again when first read, after every callback's `on_train_end` (an
    # EarlyStopping may restore other weights).
    self._recut = self.pruned and self._handoff is None

  @property
  def pruned_model(self):
    """The physically smaller `keras.Model`, or None."""
    if getattr(self, "_recut", False):
      self._recut = False
      self._pruned_model, self.surgeon = self._pruning.cut_after_fit(
          self.model, self.keep)
    return self._pruned_model

  @pruned_model.setter
  def pruned_model(self, model):
    self._pruned_model = model
    self._recut = False

  # -- setup ------------------------------------------------------------------

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

  def _check_init_steps(self):
    steps = (self.params or {}).get("steps")
    if (self.trigger.at_start and self.criterion == "taylor" and
        self.trigger.gradual_steps == 1 and steps is not None and
        self.init_steps > steps):
      raise ValueError(
          f"`init_steps`={self.init_steps} is longer than an epoch ({steps} "
          "steps): with policy='fixed' and prune_epoch=0 the model is pruned "
          "after `init_steps` batches of the first epoch. Pass init_steps <= "
          f"{steps}, or prune_epoch=1 to prune after the first epoch.")

  # -- scoring ----------------------------------------------------------------

  def _score_epoch(self, epoch):
    """Scores the epoch, shows its dominant sub-network to the trigger;
    returns (the epoch's record or None, its plan, whether to prune)."""
    scores = self._scoring.scores(epoch)
    if scores is None:  # nothing (finite) scored this epoch
      if not self.trigger.due(epoch):
        return None, None, False
      scores = self._scoring.scores_for_pruning(epoch)  # still fires
    self.importance = scores
    keep = self._pruning.plan(scores, self.prune_ratio, self.keep)
    groups = self._pruning.groups
    widths = {g.name: len(keep[g.name]) for g in groups}
    self._epi.update(list(widths.values()))
    sub = triggers_lib.SubNetwork(
        epoch, {g.name: keep[g.name] for g in groups},
        {g.name: g.size for g in groups}, self._epi.latest)
    fired = self.trigger.update(epoch, sub)
    if fired:
      self._fire_reason = fired if isinstance(fired, str) else \
          self.trigger.name
    self._last_logs = {
        "epi": float(self._epi.latest or 0.0),
        "kept_fraction": float(sub.kept_fraction),
        "macs_fraction": self._pruning.macs_fraction(keep),
        **self.trigger.logs()}
    return {"widths": widths, "epi": self._epi.latest,
            "logs": self._last_logs}, keep, bool(fired)

  # -- pruning ----------------------------------------------------------------

  def _start_gradual(self, epoch):
    if not self.params or self.params.get("steps") is None:
      raise ValueError(
          "EPICallback(gradual_steps>1) needs the number of steps per epoch: "
          "pass `steps_per_epoch` to fit, or data of known length.")
    self._gradual_epoch, self._gradual_step = epoch, 0

  def _gradual_batch_end(self, batch):
    steps = self.trigger.gradual_steps
    if self._epoch != self._gradual_epoch:
      return
    step = self._gradual_step + 1
    if step >= steps or batch + 1 < round(self.params["steps"] * step /
                                          steps):
      return
    self._gradual_step = step
    scores = self._scoring.scores(self._epoch)
    if scores is not None:
      self.importance = scores
      self.keep = self._pruning.plan(scores, self.prune_ratio * step / steps,
                                     self.keep)
      self._pruning.start_masking(self.model, self.keep)

  def _prune(self, scores, prune_epoch, keep=None):
    model = self.model
    self.importance = scores
    self.keep = keep if keep is not None else self._pruning.plan(
        scores, self.prune_ratio, self.keep)
    self.prune_epoch = prune_epoch
    self.prune_reason = self._fire_reason or self.trigger.name
    self._state.prune = {
        "epoch": prune_epoch, "reason": self.prune_reason,
        "keep": {k: np.asarray(v).tolist() for k, v in self.keep.items()},
        "weights": None, "handoff": self._handoff is not None,
        "dense_checkpoint_removed": False}
    if self._handoff is None:  # keras_epi.fit trains the cut model instead
      self._pruning.start_masking(model, self.keep)
    self.pruned_model, self.surgeon = self._pruning.cut(model, self.keep)
    latest = self._epi.latest
    when = (f"after {prune_epoch} dense epoch(s) (trigger "
            f"{self.trigger.describe()}, EPI="
            f"{'n/a' if latest is None else f'{latest:.4f}'})")
    self._last_logs.update(self._pruning.prune_logs(
        model, self.pruned_model, self.keep,
        when=when if self.verbose else None))
    self._last_logs.setdefault("epi", float(latest or 0.0))
    self._scoring.stop()  # scoring is over: plain train steps
    self.skipped_batches = self._scoring.skipped
    if self._handoff is not None:
      model.stop_training = True  # `on_train_end` finishes the cut

  def _finish_cut(self, save=True):
    """`stop_at_prune`'s end of the dense fit: the pruned model prepared,
    then (with `save`) its weights and optimizer state saved, and the state
    naming them."""
    with self.pruned_model.distribute_strategy.scope():
      self._handoff["prepare"](self.pruned_model, self.surgeon)
    if save and self.state_file:
      self._state.prune["weights"] = self.state_file.save_weights(
          self.pruned_model)
      self._save_state()

  # -- the run state ------------------------------------------------------------

  def _resume(self, epochs_done):
    """Takes over the saved state as it was after `epochs_done` epochs (the
    epoch training restarts at, from the restored checkpoint)."""
    saved, self._saved = self._saved, None
    if saved is None:
      return
    state = state_lib.resume_at(saved, epochs_done, self.backup_dir)
    if state is None:
      return
    self._adopt(state)
    if self.pruned:
      self._scoring.stop()
      if self._handoff is None:
        self._pruning.start_masking(self.model, self.keep)
      logging.info("EPICallback: resumed a run pruned after %d epochs.",
                   self.prune_epoch)

  def _adopt(self, state):
    self._state = state
    if str(state.epochs_done) in state.trigger:
      self.trigger.set_state(state.trigger[str(state.epochs_done)])
    self._epi.reset()
    for h in state.history:
      self._epi.update(list(h["widths"].values()))
    self._last_logs = dict(state.history[-1]["logs"]) if state.history \
        else {}
    if state.prune is not None:
      self.prune_epoch = state.prune["epoch"]
      self.prune_reason = state.prune["reason"]
      self.keep = state.keep

  def _save_state(self):
    if self.state_file:
      self.state_file.save(self._state)

  def mark_dense_checkpoint_removed(self):
    """Records that the dense model's checkpoint is gone, so that a
    checkpoint in `backup_dir` is from now on the pruned model's."""
    self._state.prune["dense_checkpoint_removed"] = True
    self._save_state()

  @property
  def dense_checkpoint_removed(self):
    return bool(self._state and self._state.prune and
                self._state.prune["dense_checkpoint_removed"])


# The EPICallback in a fit of each model, to refuse a second one.
_RUNNING = weakref.WeakKeyDictionary()


def _release(callback):
  model = callback.model
  if model is not None and _RUNNING.get(model) is not None and \
      _RUNNING[model]() is callback:
    del _RUNNING[model]
