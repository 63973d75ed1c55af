"""keras_epi.fit: `Model.fit` that continues on the physically pruned model.

Training runs on the dense model until the EPICallback fires; then the model
is cut (`keras_epi.prune_model`), compiled with the same loss and metrics and
an optimizer of the same configuration whose state is carried over (the step
counter, so the learning-rate schedule continues, and the slots of surviving
channels, sliced), and training continues on the smaller model to the last
epoch with the same callbacks. One History covers all epochs.
"""

import contextlib
import time

import keras
import numpy as np

from keras_epi import _backend as backend
from keras_epi import _keras_internals as internals
from keras_epi import callbacks as callbacks_lib
from keras_epi import graph
from keras_epi import pruning


def fit(model, x=None, y=None, *, callbacks=None, epochs=1, initial_epoch=0,
        **kwargs):
  """Trains `model` with EPI, continuing on the pruned model after the trigger.

  Takes the arguments of `keras.Model.fit`; `callbacks` must contain exactly
  one `keras_epi.EPICallback`. The data (`x`, `y`, `validation_data`) is
  iterated again after the prune, so pass arrays, a `tf.data.Dataset` or a
  `keras.utils.PyDataset`, not a one-shot generator.

  Args:
    model: A compiled functional or Sequential `keras.Model`.
    x: As in `Model.fit`.
    y: As in `Model.fit`.
    callbacks: As in `Model.fit`, including one `EPICallback`.
    epochs: As in `Model.fit`: the index of the last epoch + 1.
    initial_epoch: As in `Model.fit`.
    **kwargs: Any other argument of `Model.fit`.

  Returns:
    ``(final_model, history)``: the pruned model if pruning happened (else
    `model`), and a `keras.callbacks.History` over all epochs.

  Raises:
    ValueError: if `callbacks` has no or several EPICallbacks, or the model is
      not compiled.

  Example:
  >>> cb = keras_epi.EPICallback(prune_ratio=0.5)
  >>> small, history = keras_epi.fit(model, x, y, epochs=30, callbacks=[cb])
  """
  callbacks = list(callbacks or [])
  epi = [c for c in callbacks if isinstance(c, callbacks_lib.EPICallback)]
  if len(epi) != 1:
    raise ValueError(f"keras_epi.fit needs exactly one EPICallback in "
                     f"`callbacks`, received {len(epi)}.")
  if getattr(model, "optimizer", None) is None or not model.compiled:
    raise ValueError("keras_epi.fit needs a compiled model: call "
                     "model.compile(...) first.")
  started = time.perf_counter()  # the clock of keras_epi.cost
  epi = epi[0]
  if epi.input_shape is None:
    epi.input_shape = _open_sizes_from(model, x)
  run = _Run(model, epi, callbacks)
  with run.settings():
    pruned = run.resume_pruned()
    if pruned is None:
      with epi.handing_over(_HandOver(started)):
        model.fit(x, y, callbacks=run.callbacks, epochs=epochs,
                  initial_epoch=initial_epoch, **kwargs)
      if not epi.pruned:
        run.finish()
        epi.cost.stop()  # at the return: Keras' work after the last epoch
        return model, run.history
      run.dense_done()
      pruned = run.prepare(epi.pruned_model, epi.surgeon)
    run.remove_dense_checkpoint()
    if epi.prune_epoch < epochs:
      run.train_pruned(pruned, x, y, epochs=epochs,
                       initial_epoch=initial_epoch, **kwargs)
    else:
      run.finish()
  epi.cost.stop()  # at the return: Keras' work after the last epoch
  return pruned, run.history


class _HandOver:
  """`keras_epi.fit`'s handler of the cut (see `pruning.MaskInPlace`): the
  dense fit stops at the prune, and `_Run` trains the cut model on.
  `started`: when `keras_epi.fit` was called (`time.perf_counter`), where
  the run's cost record starts."""
  hands_over = True

  def __init__(self, started=None):
    self.started = started

  def on_cut(self, pruning_, model, keep):
    del pruning_, keep
    model.stop_training = True

  on_resume = on_cut

  def on_train_end(self, pruned):
    del pruned


class _Run:
  """One `keras_epi.fit`: the dense fit, the hand-over at the cut, and the
  fit of the pruned model, with the callbacks' settings restored on exit.

  BackupAndRestore deletes its directory, the run state and the pruned
  weights with it, when a fit ends; the dense fit ends at the prune, so its
  deletion waits for the end of the whole run. A CSVLogger goes on in the
  same file in the pruned fit, and one History records all epochs.
  """

  def __init__(self, model, epi, callbacks):
    self.model, self.epi = model, epi
    # The EPICallback first, so that every other callback (CSVLogger,
    # TensorBoard, EarlyStopping, BackupAndRestore) sees the epoch's values
    # and state it adds.
    self.callbacks = [epi] + [c for c in callbacks if c is not epi]
    self.history = _history_of(self.callbacks)
    self.backups = [c for c in self.callbacks
                    if isinstance(c, keras.callbacks.BackupAndRestore)]
    if epi.backup_dir is None and self.backups:
      epi.backup_dir = self.backups[0].backup_dir
    self._deleting = [c for c in self.backups if c.delete_checkpoint]
    self._dense = ({}, [])  # History's record of the dense fit
    multi_worker_fit_workaround(model)

  @contextlib.contextmanager
  def settings(self):
    """Restores what the run changes on the callbacks, however it ends."""
    loggers = [c for c in self.callbacks
               if isinstance(c, keras.callbacks.CSVLogger) and not c.append]
    try:
      for c in self._deleting:
        c.delete_checkpoint = False
      yield
    finally:
      for c in self._deleting:
        c.delete_checkpoint = True
      for c in loggers:
        c.append = False

  def resume_pruned(self):
    """The pruned model of an interrupted run, from the state in
    `backup_dir`: rebuilt with the saved plan, compiled, and given the
    trained weights and optimizer state saved at the cut. If the run was
    killed after the trigger but before those were written, they are made
    again from the dense model's checkpoint when it is of the prune epoch.
    None if the run was not pruned (or the dense fit must prune again)."""
    epi, state_file = self.epi, self.epi.state_file
    if state_file is None or not state_file.exists():
      return None
    analysis = graph.analyze(self.model, epi.ignore,
                             through_norms=epi.through_norms)
    saved = state_file.load_for(self.model, analysis)
    if saved is None or saved.prune is None:
      return None
    pending = saved.prune.get("weights") is None
    if pending and saved.prune.get("handoff"):
      checkpoint = self.backups and internals.backup_and_restore_checkpoint(
          self.backups[0])
      if not checkpoint or checkpoint[1] != saved.prune["epoch"]:
        return None  # the dense fit goes back to the checkpoint's epoch
      optimizer = self.model.optimizer
      if optimizer is not None and not optimizer.built:
        optimizer.build(self.model.trainable_variables)
      self.model.load_weights(checkpoint[0])
    elif pending:
      raise ValueError(
          f"The run state in {epi.backup_dir} is of a plain model.fit with "
          "EPICallback (the pruned channels are masked in the dense model's "
          "checkpoint); keras_epi.fit cannot continue it. Continue it with "
          "model.fit, or delete the directory to start afresh.")
    epi.run_state = saved
    epi.cost.start()
    pruned, surgeon = pruning.cut(self.model, epi.keep, epi.ignore, analysis)
    self.prepare(pruned, surgeon, save=pending)
    if not pending:
      state_file.load_weights(pruned)
    return pruned

  def dense_done(self):
    """Keeps History's record of the dense fit, which the pruned fit
    continues."""
    self._dense = ({k: list(v) for k, v in self.history.history.items()},
                   list(self.history.epoch))

  def prepare(self, pruned, surgeon, save=True):
    """The cut model compiled like the dense one, with its optimizer state
    carried over (after every callback saw the dense fit's last epoch, so a
    learning rate set then is carried); with `save`, its weights and
    optimizer variables written to `backup_dir`, then the state naming
    them."""
    epi = self.epi
    with epi.cost.timed("prune"), backend.scope(pruned):
      compile_like(self.model, pruned, surgeon)
      multi_worker_fit_workaround(pruned)
    epi.pruned_model = pruned
    if save and epi.state_file:
      epi.run_state.prune["weights"] = epi.state_file.save_weights(pruned)
      epi.state_file.save(epi.run_state)
    return pruned

  def remove_dense_checkpoint(self):
    """The dense model's checkpoint must not be loaded into the pruned one
    (BackupAndRestore(delete_checkpoint=False) keeps it, and a kill can
    come before it is deleted); the state records that it is gone, so that
    a checkpoint in `backup_dir` is from then on the pruned model's."""
    state = self.epi.run_state
    if state.prune.get("dense_checkpoint_removed"):
      return
    for c in self.backups:
      for path in internals.backup_and_restore_files(c):
        if backend.exists(path):
          backend.remove(path)
    state.prune["dense_checkpoint_removed"] = True
    if self.epi.state_file:
      self.epi.state_file.save(state)

  def train_pruned(self, pruned, x, y, *, epochs, initial_epoch, **kwargs):
    """The rest of the run on `pruned`. History keeps its dict across fits
    but restarts `epoch`; an epoch cut short by pruning at initialisation
    is dropped and trained again."""
    start = self.epi.prune_epoch
    dense_epochs = max(start - initial_epoch, 0)
    record, epochs_seen = self._dense
    self.history.history = {k: v[:dense_epochs] for k, v in record.items()}
    for c in self.callbacks:
      if isinstance(c, keras.callbacks.CSVLogger):
        c.append = True
    for c in self._deleting:
      c.delete_checkpoint = True  # at the end of this last fit
    callbacks = [_PrunedPhase(self.epi)] + self.callbacks[1:]
    pruned.fit(x, y, callbacks=callbacks, epochs=epochs, initial_epoch=start,
               **kwargs)
    self.history.epoch = epochs_seen[:dense_epochs] + list(self.history.epoch)

  def finish(self):
    """The end of a whole run that ended without a pruned fit: what the
    BackupAndRestore callbacks with ``delete_checkpoint=True`` would have
    deleted (their directory, with the run state in it), so that the same
    command starts a new run."""
    for c in self._deleting:
      if backend.exists(c.backup_dir):
        backend.rmtree(c.backup_dir)


class _PrunedPhase(keras.callbacks.Callback):
  """The EPICallback's part in the fit of the pruned model: every epoch's
  logs get the pruned model's values (`kept_fraction`, `macs_fraction`;
  `epi` is not measured after the prune), the run state records the epoch
  (for resuming) and the run's cost its time."""

  def __init__(self, epi):
    super().__init__()
    self.epi = epi

  def on_epoch_begin(self, epoch, logs=None):
    self.epi.cost.epoch_begin(pruned=True)

  def on_epoch_end(self, epoch, logs=None):
    state = self.epi.run_state
    if logs is not None:
      logs.update(state.prune.get("logs", {}))
    state.record_epoch(epoch, None, self.epi.trigger.get_state())
    if self.epi.state_file:
      self.epi.state_file.save(state)

  def on_train_end(self, logs=None):
    self.epi.cost.stop()


def _open_sizes_from(model, x):
  """The per-example shapes of the training data where the model leaves
  input sizes open (None), so MACs and budgets count what training sees;
  None where the model's sizes are known or the data does not say."""
  if all(None not in tuple(t.shape[1:]) for t in model.inputs):
    return None
  if backend.is_tf_dataset(x):
    spec = x.element_spec
    x = spec[0] if isinstance(spec, tuple) else spec
  elif isinstance(x, keras.utils.PyDataset):
    x = x[0][0] if isinstance(x[0], tuple) else x[0]
  shapes = [tuple(getattr(v, "shape", ())[1:])
            for v in keras.tree.flatten(x)] if x is not None else []
  if len(shapes) != len(model.inputs) or any(
      d is None for s in shapes for d in s):
    return None
  return shapes[0] if len(shapes) == 1 else shapes


def multi_worker_fit_workaround(model):
  """Lets `model.fit` run under MultiWorkerMirroredStrategy (Keras 3).

  Keras 3's `fit` builds the model symbolically from its first batch, reduced
  across replicas with `strategy.reduce`, which raises "Attempt to convert a
  value (PerReplica...)" under MultiWorkerMirroredStrategy
  (keras-team/keras#20585, open since TF 2.16). Only the batch's shapes
  matter for that build, so this instance-level override builds from the
  local replica's batch instead. Keras then reduces each step's logs with
  ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars ("Invalid
  reduction dimension 0"); the train and test steps are wrapped to return
  their logs (metric results, the same on every replica) as 1-element
  vectors, whose mean over replicas is the value itself. It does nothing
  under other strategies and on other backends.

  Args:
    model: A model created under the strategy's scope.
  """
  strategy = backend.strategy(model)
  if strategy is None:
    return
  tf = backend.tensorflow("MultiWorkerMirroredStrategy")
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return
  def local(value):
    if isinstance(value, tf.distribute.DistributedValues):
      return strategy.experimental_local_results(value)[0]
    return value

  def symbolic_build(original):
    def build(iterator=None, data_batch=None):
      if iterator is not None:
        for _, _, it in iterator:
          data_batch = keras.tree.map_structure(local, next(it))
          break
      return original(iterator=None, data_batch=data_batch)
    return build

  def vector_logs(step):
    def wrapped(data):
      return keras.tree.map_structure(
          lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0
          else v, step(data))
    return wrapped

  internals.override_symbolic_build(model, symbolic_build)
  model.train_step = vector_logs(model.train_step)
  model.test_step = vector_logs(model.test_step)


def _history_of(callbacks):
  """The History shared by both fits (appended to `callbacks` if absent)."""
  for c in callbacks:
    if isinstance(c, keras.callbacks.History):
      return c
  history = keras.callbacks.History()
  callbacks.append(history)
  return history


def compile_like(model, pruned, surgeon):
  """Compiles `pruned` like `model`, carrying the optimizer state over."""
  config = internals.compile_config(model)
  optimizer = model.optimizer
  new_optimizer = type(optimizer).from_config(optimizer.get_config())
  config["optimizer"] = new_optimizer
  for key in ("metrics", "weighted_metrics"):
    config[key] = keras.tree.map_structure(_fresh_metric, config.get(key))
  pruned.compile(**config)
  new_optimizer.build(pruned.trainable_variables)
  transfer_optimizer_state(optimizer, new_optimizer, surgeon)


def _fresh_metric(metric):
  if isinstance(metric, keras.metrics.Metric):
    return type(metric).from_config(metric.get_config())
  return metric


def transfer_optimizer_state(old, new, surgeon):
  """Copies `old`'s state into `new` (built on the pruned model's variables).

  The step counter (so learning-rate schedules continue) and every slot
  variable (momentum, Adam's moments, ...) of a surviving weight, sliced like
  the weight. Slots are matched by Keras' naming
  ``{variable path with '_'}_{slot name}``; variables that are not per-weight
  slots (loss scale, ...) are copied when their shapes agree.
  """
  old_inner = getattr(old, "inner_optimizer", old)
  new_inner = getattr(new, "inner_optimizer", new)
  cut_by_prefix = {}
  for old_weight, new_weight, cut in surgeon.weight_pairs():
    cut_by_prefix[old_weight.path.replace("/", "_") + "_"] = (
        new_weight.path.replace("/", "_") + "_", cut)
  new_by_name = {v.name: v for v in new_inner.variables}
  for variable in old_inner.variables:
    name = variable.name
    prefix = max((p for p in cut_by_prefix if name.startswith(p)), key=len,
                 default=None)
    value = keras.ops.convert_to_numpy(variable)
    if prefix is None:
      target = new_by_name.get(name)
    else:
      new_prefix, cut = cut_by_prefix[prefix]
      target = new_by_name.get(new_prefix + name[len(prefix):])
      value = cut(value)
    if target is not None and tuple(target.shape) == value.shape:
      target.assign(value)
  if new is not new_inner:  # loss-scale optimizer: its own variables
    for a, b in zip(old.variables, new.variables):
      if tuple(a.shape) == tuple(b.shape) and a.name == b.name:
        b.assign(keras.ops.convert_to_numpy(a))
  # The step counter ("iteration") was copied with the variables above. With
  # `gradient_accumulation_steps`, `iterations` is a tensor computed from it.
  iterations = new.iterations
  if hasattr(iterations, "assign"):
    iterations.assign(np.asarray(keras.ops.convert_to_numpy(
        old.iterations)))
