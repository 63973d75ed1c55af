"""EPICallback: score filters during `model.fit`, decide when to prune, prune.

One line added to `model.fit`::

  cb = keras_epi.EPICallback(prune_ratio=0.3)
  model.fit(x, y, epochs=30, callbacks=[cb])
  cb.prune_epoch, cb.pruned_model

At the end of every epoch the callback ranks all prunable channels globally
(`keras_epi.select_channels`), forms the dominant sub-network that pruning now
would keep, computes its Early Pruning Indicator and shows both to its
trigger (`keras_epi.triggers`). When the trigger fires, it prunes: it builds
`pruned_model` (physically smaller, weights copied) and holds the removed
channels of the training model at exactly zero for the rest of the fit
(`keras_epi.pruning.MaskInPlace`), so the trained model and `pruned_model`
compute the same function. `keras_epi.fit` hands the cut over instead and
trains `pruned_model` on, which is where the training-cost saving comes from.

The parts it wires into `fit`: `keras_epi.scoring` (the channel scores, from
the train step's own gradients), the trigger, `keras_epi.pruning` (what may
be cut, the plans, the cut), `keras_epi.state` (the run state, written
atomically beside the checkpoint for resuming after a kill) and
`keras_epi.cost` (what the run's phases took).
"""

import contextlib
import weakref

from absl import logging
import keras

from keras_epi import _validation as validation
from keras_epi import budget as budget_lib
from keras_epi import cost as cost_lib
from keras_epi import importance as importance_lib
from keras_epi import indicators
from keras_epi import pruning as pruning_lib
from keras_epi import scoring as scoring_lib
from keras_epi import state as state_lib
from keras_epi import triggers as triggers_lib

CRITERIA = ("taylor", "magnitude")
_NAN = float("nan")


def _view(name, doc):
  """A read-only property showing the run state's `name`."""
  return property(lambda self: getattr(self.run_state, name), doc=doc)


class EPICallback(keras.callbacks.Callback):
  """Early structural pruning during `model.fit`.

  Logs per epoch ``epi`` (NaN before `window` earlier epochs and after the
  prune), ``kept_fraction``, ``macs_fraction`` (of the dominant sub-network,
  after the prune of the pruned model) and, with Early-Bird, ``eb_distance``.

  Args:
    prune_ratio: Fraction of the budget removed, in (0, 1); with
      ``budget="neurons"`` the paper's "pruned ratio" of channels.
    budget: "neurons", "macs" or "latency" (`latency_table`'s prediction).
    criterion: "taylor" (first-order Taylor on BatchNormalization, from the
      train step's gradients) or "magnitude" (filter norm / sqrt(size)).
    window, threshold: EPI's r (>= 1) and tau (None: the paper's, 0.944
      taylor and 0.983 magnitude; tune it to your schedule).
    trigger: A `keras_epi.triggers.Trigger`, or None for the shorthands
      `policy` ("epi": `EPITrigger`; "early_bird": `EarlyBirdTrigger(
      early_bird_distance, early_bird_penalty)`; "fixed": `AtEpoch(
      prune_epoch)`, 0 at initialisation after `init_steps` batches),
      `prune_by` (`Deadline`) and `gradual_steps` (`Gradual`); not both.
      An `EPITrigger`'s own `window` or `threshold` sets the callback's.
    ignore: Layer names whose channels stay (see `keras_epi.channel_groups`).
    through_norms: Prune through LayerNormalization and RMSNormalization
      too: a transformer's model width (embeddings, residual stream, norms'
      scales) joins the ranking. Approximate: a cut norm takes its
      statistics over the kept channels, so the cut changes the model's
      function and training after it recovers (see
      `keras_epi.channel_groups`). Default False: every cut is exact.
      Not with ``budget="latency"``; only in `keras_epi.fit` (a plain
      `model.fit` masks instead of cutting, which a norm would see).
    min_channels, round_to: Kept widths: at least, and multiples of.
    keep_stem, keep_residual: Leave the stem (the first group, where a
      convolution makes it from the input's channels), or the residual
      streams, whole (the classifier's outputs are never pruned).
    taylor_reduction: "square" (mean s^2, Taylor_pruning) or "abs" (HALP).
    backup_dir: Where the run state (`keras_epi.state`) is saved every
      epoch, so that a killed run restarted with BackupAndRestore (after
      this callback) resumes; None: `keras_epi.fit` takes BackupAndRestore's.
    prune_frozen: Prune groups of frozen layers too (else `frozen_groups`).
    verbose: 1 logs the prune event.
    latency_table: The `keras_epi.LatencyTable` of ``budget="latency"``.
    input_shape: Per-example input shape(s) MACs are counted at, for a
      model on open sizes; `keras_epi.fit` takes it from the data.

  Attributes:
    prune_epoch, prune_reason: Dense epochs before the prune, and the
      trigger's name or "deadline" (None before).
    pruned_model, surgeon, keep: The physically smaller `keras.Model`, the
      `keras_epi.surgeon.Surgeon` that cut it, the plan {group: kept}.
    importance: Latest scores {group name: np.ndarray of group.size}.
    epi_history, width_history, early_bird_history: Per scored epoch.
    skipped_batches: Train steps without finite Taylor scores.
    run_state: The `keras_epi.state.RunState`, everything decided; set a
      saved one of this model to take it over (as `keras_epi.fit` does).
    training_cost: The run's measured time by phase (`keras_epi.cost`).

  Raises:
    ValueError: for a bad argument (naming it); at `on_train_begin`, where
      the fit cannot prune (the message says why and what to pass).
  """

  def __init__(self, prune_ratio=0.3, budget="neurons", criterion="taylor",
               window=5, threshold=None, policy="epi", prune_epoch=None,
               prune_by=None, ignore=(), min_channels=1, round_to=1,
               keep_stem=True, keep_residual=False, taylor_reduction="square",
               init_steps=20, early_bird_penalty=1e-4,
               early_bird_distance=0.1, backup_dir=None, gradual_steps=1,
               prune_frozen=False, verbose=1, latency_table=None,
               trigger=None, input_shape=None, through_norms=False):
    super().__init__()
    self.prune_ratio = validation.number("prune_ratio", prune_ratio, "(0, 1)")
    self.criterion = validation.choice("criterion", criterion, CRITERIA)
    self.taylor_reduction = validation.choice(
        "taylor_reduction", taylor_reduction, importance_lib.TAYLOR_REDUCTIONS)
    self.trigger = triggers_lib.from_arguments(
        trigger, policy, prune_epoch, prune_by, gradual_steps,
        early_bird_penalty, early_bird_distance)
    (self.window, self.threshold, self.gradual_steps, self._batchnorm,
     self._gamma_penalty) = triggers_lib.settings(self.trigger, window,
                                                  threshold, criterion)
    self.through_norms = validation.boolean("through_norms", through_norms)
    budget_lib.check_arguments(self.prune_ratio, budget, min_channels,
                               round_to, latency_table, self.through_norms)
    self.budget, self.latency_table = budget, latency_table
    self.min_channels, self.round_to = int(min_channels), int(round_to)
    self.ignore = validation.names("ignore", ignore)
    self.keep_stem = validation.boolean("keep_stem", keep_stem)
    self.keep_residual = validation.boolean("keep_residual", keep_residual)
    self.prune_frozen = validation.boolean("prune_frozen", prune_frozen)
    self.init_steps = validation.integer("init_steps", init_steps, 1)
    self.backup_dir = validation.path("backup_dir", backup_dir)
    self.input_shape, self.verbose = input_shape, verbose
    self._handler = pruning_lib.MaskInPlace()
    self._scoring = None
    self._reset()

  def _reset(self):
    self.pruned_model = self.surgeon = None
    self.importance, self.skipped_batches, self.frozen_groups = {}, 0, ()
    self.run_state = state_lib.RunState({})
    self._saved = None  # the state found in backup_dir, until reconciled
    self._pruning = self._gradual = None  # this fit's; a gradual prune's
    self._epoch, self._first_epoch = 0, True
    self.cost = cost_lib.TrainingCost()

  prune_epoch = _view("prune_epoch", "Dense epochs before the prune.")
  prune_reason = _view("prune_reason", "What fired, or None.")
  width_history = _view("widths", "Kept widths per scored epoch.")
  epi_history = _view("epi", "EPI per scored epoch.")
  pruned = property(lambda self: self.run_state.prune is not None)
  policy = property(lambda self: self.trigger.name, doc="The trigger's name.")
  training_cost = property(lambda self: self.cost.as_dict())

  @property
  def keep(self):
    if self.run_state.prune is None and self._gradual is not None:
      return self._gradual.keep  # the steps of a gradual prune so far
    return self.run_state.keep

  early_bird_history = property(lambda self: getattr(triggers_lib.find(
      self.trigger, triggers_lib.EarlyBirdTrigger), "history", []))
  state_file = property(
      lambda self: self.backup_dir and state_lib.StateFile(self.backup_dir),
      doc="The `keras_epi.state.StateFile` in `backup_dir`, or None.")

  @property
  def run_state(self):
    return self._state

  @run_state.setter
  def run_state(self, state):
    self._state = state
    if str(state.epochs_done) in state.trigger:
      self.trigger.set_state(state.trigger[str(state.epochs_done)])
    self._epi = indicators.EarlyPruningIndicator(self.window, self.threshold)
    for widths in state.widths:
      self._epi.update(list(widths.values()))
    self._logs = dict(state.history[-1]["logs"]) if state.history else {}
    self._logs.update(state.prune["logs"] if state.prune else {})

  @property
  def pruned_model(self):
    """The physically smaller `keras.Model`, or None."""
    if getattr(self._handler, "recut_pending", False):  # trained on, masked
      self._pruned_model, self.surgeon = self._handler.recut(
          self._pruning, self.model, self.keep)
    return self._pruned_model

  @pruned_model.setter
  def pruned_model(self, model):
    self._pruned_model = model

  def close(self):
    """Removes the gradient tap of a fit that ended with an exception."""
    if self._scoring is not None:
      self._scoring.stop()
      self.skipped_batches = self._scoring.skipped
      self._scoring = None
    _release(self)

  @contextlib.contextmanager
  def handing_over(self, handler):
    """Within the `with`, the cut goes to `handler` (the protocol of
    `keras_epi.pruning.MaskInPlace`) instead of masking the training model,
    as `keras_epi.fit` does to train the cut model on. On exit masking is
    the default again and the tap is removed, however the `with` ended."""
    previous, self._handler = self._handler, handler
    try:
      yield self
    finally:
      self._handler = previous
      self.close()

  # -- Keras lifecycle --------------------------------------------------------

  def on_train_begin(self, logs=None):
    self.close()  # a tap left by a fit that ended with an exception
    if self.through_norms and not self._handler.hands_over:
      raise ValueError(
          "EPICallback(through_norms=True) needs keras_epi.fit(model, ..., "
          "callbacks=[callback]), which trains the cut model on. In a plain "
          "model.fit the removed channels would be held at zero in the "
          "full-width model, whose LayerNormalization and RMSNormalization "
          "still count them, so the model trained after the cut would not "
          "be the pruned model. Nothing was trained or changed.")
    _claim(self)
    self._reset()
    # From the handler's start where it has one: keras_epi.fit's call, so
    # that the record covers Keras' set-up of the fit too.
    self.cost.start(getattr(self._handler, "started", None))
    model = self.model
    self.frozen_groups, self._pruning = pruning_lib.for_fit(
        model, self.params, ignore=self.ignore, input_shape=self.input_shape,
        keep_stem=self.keep_stem, keep_residual=self.keep_residual,
        prune_frozen=self.prune_frozen, budget=self.budget,
        latency_table=self.latency_table, ratio=self.prune_ratio,
        min_channels=self.min_channels, round_to=self.round_to,
        init_steps=self.init_steps, at_start=self.trigger.due(-1),
        criterion=self.criterion, gradual_steps=self.gradual_steps,
        through_norms=self.through_norms)
    analysis = self._pruning.analysis
    self._saved = self.state_file and self.state_file.load_for(model,
                                                               analysis)
    self.run_state = state_lib.RunState(state_lib.fingerprint(model,
                                                              analysis))
    self.trigger.start(self.criterion, window=self.window,
                       threshold=self.threshold)
    triggers_lib.check_epochs(self.trigger, self.params)
    self._scoring = scoring_lib.Scoring(
        model, self._pruning.groups, self.criterion, self._batchnorm,
        self._gamma_penalty, self.taylor_reduction)

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    if self._first_epoch:
      self._first_epoch = False
      self._resume(epoch)
      if not self.pruned and epoch == 0 and self.trigger.due(-1):
        if self.gradual_steps > 1:
          self._gradual = pruning_lib.GradualPrune(
              0, self.gradual_steps, self.params, self.trigger.name)
        elif not self._scoring.needs_steps:
          self._prune(self._scoring.scores_for_pruning(0), 0)
    self.cost.epoch_begin(self.pruned)

  def on_train_batch_begin(self, batch, logs=None):
    if self._scoring is not None:
      self._scoring.step()

  def on_train_batch_end(self, batch, logs=None):
    if self._pruning is None:
      return
    if self.pruned:
      pass
    elif self._gradual is not None:
      scores = self._gradual.step(self._epoch, batch, self._scoring,
                                  self._pruning, self.model, self.prune_ratio)
      self.importance = self.importance if scores is None else scores
    elif (self._epoch == 0 and self.trigger.due(-1) and
          batch + 1 >= self.init_steps):
      self._prune(self._scoring.scores_for_pruning(0), 0)
    self._pruning.apply_masks()

  def on_epoch_end(self, epoch, logs=None):
    if self._gradual is not None and self._gradual.epoch == epoch and \
        not self.pruned:  # the last step: the cut
      self._prune(self._scoring.scores_for_pruning(epoch), epoch + 1)
    record = keep = fired = None
    if not self.pruned:
      with self.cost.timed("scoring"):
        record, keep, fired = self._score_epoch(epoch)
    self.run_state.record_epoch(epoch, record, self.trigger.get_state())
    if logs is not None:
      logs.update(self._logs)
    reason = fired if isinstance(fired, str) else self.trigger.name
    if fired and self.gradual_steps > 1:
      self._gradual = pruning_lib.GradualPrune(epoch + 1, self.gradual_steps,
                                               self.params, reason)
    elif fired:
      self._prune(self.importance, epoch + 1, keep, reason)
    if self.state_file:
      self.state_file.save(self.run_state)

  def on_train_end(self, logs=None):
    if self._first_epoch and self._saved is not None:
      self._resume(self._saved.epochs_done)  # the checkpoint was the end
    self.close()
    self.cost.stop()
    self._handler.on_train_end(self.pruned)

  # -- scoring and pruning ----------------------------------------------------

  def _score_epoch(self, epoch):
    """Scores the epoch, shows its dominant sub-network to the trigger;
    returns (the epoch's record or None, its plan, what fired)."""
    scores = self._scoring.scores(epoch)
    if scores is None:  # nothing (finite) scored this epoch
      if not self.trigger.due(epoch):
        return None, None, False
      scores = self._scoring.scores_for_pruning(epoch)  # still fires
    self.importance = scores
    sub, keep, logs = self._pruning.subnetwork(epoch, scores,
                                               self.prune_ratio, self._epi)
    fired = self.trigger.update(epoch, sub)
    self._logs = {**logs, **self.trigger.logs()}
    return {"widths": sub.widths, "epi": sub.epi,
            "logs": dict(self._logs)}, keep, fired

  def _prune(self, scores, prune_epoch, keep=None, reason=None):
    with self.cost.timed("prune"):
      self.importance = scores
      if keep is None:
        keep = self._pruning.plan(scores, self.prune_ratio, self.keep)
      if reason is None:
        reason = self._gradual.reason if self._gradual else self.trigger.name
      self._pruning.check_plan(scores, keep, self.prune_ratio)
      self.run_state.record_prune(prune_epoch, reason, keep,
                                  self._handler.hands_over)
      self.pruned_model, self.surgeon = self._pruning.cut(self.model,
                                                          self.keep)
      self._handler.on_cut(self._pruning, self.model, self.keep)
      self._logs = self.run_state.prune["logs"] = {
          **{k: _NAN for k in self._logs},
          **self._pruning.prune_logs(
              self.model, self.pruned_model, self.keep,
              (prune_epoch, self.trigger, self._epi.latest)
              if self.verbose else None)}
      self._scoring.stop()  # scoring is over: plain train steps
      self.skipped_batches = self._scoring.skipped

  def _resume(self, epochs_done):
    """Takes over the saved state as it was after `epochs_done` epochs (the
    epoch training restarts at, from the restored checkpoint)."""
    saved, self._saved = self._saved, None
    state = saved and state_lib.resume_at(saved, epochs_done,
                                          self.backup_dir)
    if state is not None:
      self.run_state = state
    if state is not None and self.pruned:
      self._scoring.stop()
      self._handler.on_resume(self._pruning, self.model, self.keep)
      logging.info("EPICallback: resumed a run pruned after %d epochs.",
                   self.prune_epoch)


# The EPICallback in a fit of each model, to refuse a second one.
_RUNNING = weakref.WeakKeyDictionary()


def _claim(callback):
  """Refuses a second EPICallback in the same fit of the same model."""
  other = _RUNNING.get(callback.model)
  other = other() if other is not None else None
  if (other is not None and other is not callback and
      callback.params is not None and other.params is callback.params):
    raise ValueError(
        "Two EPICallbacks in one fit of the same model: each would score, "
        "mask and prune it on its own. Pass exactly one EPICallback (to "
        "compare settings, run one fit per callback on copies of the "
        "model).")
  _RUNNING[callback.model] = weakref.ref(callback)


def _release(callback):
  model = callback.model
  if model is not None and _RUNNING.get(model) is not None and \
      _RUNNING[model]() is callback:
    del _RUNNING[model]
