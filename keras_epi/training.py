"""keras_epi.fit: `Model.fit` that continues on the physically pruned model.

Training runs on the dense model until the EPICallback fires; then the model
is cut (`keras_epi.prune_model`), compiled with the same loss and metrics and
an optimizer of the same configuration whose state is carried over (the step
counter, so the learning-rate schedule continues, and the slots of surviving
channels, sliced), and training continues on the smaller model to the last
epoch with the same callbacks. One History covers all epochs.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_epi import _keras_internals as internals
from keras_epi import callbacks as callbacks_lib


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
  epi = epi[0]
  # The EPICallback first, so that every other callback (CSVLogger,
  # TensorBoard, EarlyStopping, BackupAndRestore) sees the epoch's values
  # and state it adds.
  callbacks.remove(epi)
  callbacks.insert(0, epi)
  history_cb = _history_of(callbacks)
  backups = [c for c in callbacks
             if isinstance(c, keras.callbacks.BackupAndRestore)]
  if epi.backup_dir is None and backups:
    epi.backup_dir = backups[0].backup_dir
  multi_worker_fit_workaround(model)

  def prepare(pruned, surgeon):
    _compile_like(model, pruned, surgeon)
    multi_worker_fit_workaround(pruned)

  appending = []  # CSVLoggers switched to append for the pruned fit
  first, first_epochs = {}, []
  # BackupAndRestore deletes its directory, the run state and the pruned
  # weights with it, when a fit ends; the dense fit ends at the prune, so
  # its deletion waits for the end of the whole run.
  deleting = [c for c in backups if c.delete_checkpoint]
  with epi.stop_at_prune(prepare):
    try:
      for c in deleting:
        c.delete_checkpoint = False
      # A run killed after the prune: the pruned model with the weights and
      # optimizer state saved at the cut (BackupAndRestore then loads a
      # later checkpoint of it, if there is one).
      pruned = epi.resume_pruned(
          model, backups and
          internals.backup_and_restore_checkpoint(backups[0])
      ) if epi.backup_dir else None
      if pruned is None:
        model.fit(x, y, callbacks=callbacks, epochs=epochs,
                  initial_epoch=initial_epoch, **kwargs)
        if epi.pruned_model is None:
          _finish(deleting)
          return model, history_cb
        pruned = epi.pruned_model
        first = {k: list(v) for k, v in history_cb.history.items()}
        first_epochs = list(history_cb.epoch)
      if not epi.dense_checkpoint_removed:
        # The dense model's checkpoint must not be loaded into the pruned
        # one (BackupAndRestore(delete_checkpoint=False) keeps it, and a
        # kill can come before it is deleted).
        for c in backups:
          for path in internals.backup_and_restore_files(c):
            if tf.io.gfile.exists(path):
              tf.io.gfile.remove(path)
        epi.mark_dense_checkpoint_removed()
      if epi.prune_epoch >= epochs:
        _finish(deleting)
        return pruned, history_cb
      epi.continue_on(pruned)
      # History keeps its dict across fits but restarts `epoch`. An epoch
      # cut short by pruning at initialisation is dropped and trained again.
      start = epi.prune_epoch
      dense_epochs = max(start - initial_epoch, 0)
      history_cb.history = {k: v[:dense_epochs] for k, v in first.items()}
      # A CSVLogger goes on in the same file rather than starting it again.
      for c in callbacks:
        if isinstance(c, keras.callbacks.CSVLogger) and not c.append:
          c.append = True
          appending.append(c)
      for c in deleting:
        c.delete_checkpoint = True  # at the end of this last fit
      pruned.fit(x, y, callbacks=callbacks, epochs=epochs,
                 initial_epoch=start, **kwargs)
    finally:
      for c in appending:
        c.append = False
      for c in deleting:
        c.delete_checkpoint = True
  history_cb.epoch = first_epochs[:dense_epochs] + list(history_cb.epoch)
  return pruned, history_cb


def _finish(deleting):
  """The end of a whole run that ended without a pruned fit: what the
  BackupAndRestore callbacks with ``delete_checkpoint=True`` would have
  deleted (their directory, with the run state in it), so that the same
  command starts a new run."""
  for c in deleting:
    if tf.io.gfile.exists(c.backup_dir):
      tf.io.gfile.rmtree(c.backup_dir)


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
  under other strategies.

  Args:
    model: A model created under the strategy's scope.
  """
  strategy = model.distribute_strategy
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


def _compile_like(model, pruned, surgeon):
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
