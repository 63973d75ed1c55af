"""What differs between Keras' backends, in one place.

keras_epi runs on every Keras 3 backend (TensorFlow, JAX, PyTorch). Nearly
all of it is Keras APIs; what is not is here: the `tf.distribute` strategy
of a TensorFlow model, where a train step's per-batch values go (TensorFlow
variables updated inside the traced step, summed across replicas; a host
callback from inside JAX's jitted step; eager NumPy under PyTorch), how
variables are assigned during a JAX fit (whose state lives outside the
model's variables between epochs), files (local, or any file system
TensorFlow knows where it is installed) and the TensorFlow-only features,
which import TensorFlow when used and say what they need.

TensorFlow is never imported here unless the backend is TensorFlow or a
TensorFlow-only feature is used.
"""

import contextlib
import os
import re
import shutil
import sys

import keras
import numpy as np


def name():
  """The Keras backend: "tensorflow", "jax", "torch" or "numpy"."""
  return keras.backend.backend()


def tensorflow(feature):
  """The `tensorflow` module, for `feature` (a phrase naming what needs it).

  Raises:
    ImportError: where TensorFlow is not installed, naming `feature`.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{feature} needs TensorFlow, which is not installed (keras_epi "
        "itself runs without it, on any Keras backend): pip install "
        "tensorflow") from e
  return tf


def loaded_tensorflow():
  """The `tensorflow` module if something imported it already, else None
  (so that checking whether a value is a TensorFlow object never imports
  TensorFlow)."""
  return sys.modules.get("tensorflow")


def is_tf_dataset(value):
  tf = loaded_tensorflow()
  return tf is not None and isinstance(value, tf.data.Dataset)


def strategy(model):
  """The model's `tf.distribute` strategy (TensorFlow backend), else None."""
  if name() != "tensorflow":
    return None
  return getattr(model, "distribute_strategy", None)


def scope(model):
  """The model's strategy scope (new variables are made under it), or a
  context that does nothing where the backend has no strategy
  (`keras.distribution` places variables by itself)."""
  model_strategy = strategy(model)
  return (model_strategy.scope() if model_strategy is not None
          else contextlib.nullcontext())


def sync_variables(model):
  """Makes `model`'s variables hold the values training has reached.

  A JAX fit keeps the trained values in a state it passes from step to
  step, and writes them into the variables at the end of each epoch; a
  callback that reads or assigns variables during an epoch calls this
  first (the fit then takes the variables' values back). Elsewhere the
  variables are the state, and this does nothing."""
  sync = getattr(model, "jax_state_sync", None)
  if name() == "jax" and sync is not None:
    sync()


def masking_function(pairs):
  """A function that multiplies each variable of ``[(variable, mask)]`` by
  its 0/1 NumPy mask (a `tf.function` under TensorFlow, one traced graph;
  eager assignments elsewhere)."""
  if name() == "tensorflow":
    tf = tensorflow("masking")
    constants = [(v, tf.constant(m, dtype=v.dtype)) for v, m in pairs]

    @tf.function
    def apply_masks():
      for variable, mask in constants:
        variable.assign(variable * mask)
    return apply_masks

  constants = [(v, keras.ops.convert_to_tensor(m, dtype=v.dtype))
               for v, m in pairs]

  def apply_masks():
    for variable, mask in constants:
      variable.assign(variable * mask)
  return apply_masks


class StepSum:
  """Per-batch vectors from inside a train step, reduced and summed.

  `add(s)` is called while the train step runs (traced under TensorFlow and
  JAX) with a float32 vector; batches whose vector is not all finite are
  skipped and counted. The sum is of ``reduce(s)``, with `reduction`
  "square" or "abs". Where it is kept:

  * TensorFlow: variables updated by the step's own ops, made under the
    model's strategy; each replica's `s` is summed across replicas (an
    all-reduce in the step) before it is reduced.
  * JAX: a host callback from the step (`jax.experimental.io_callback`)
    adds it in NumPy. Under `keras.distribution` the gradients, and so `s`,
    are of the global batch already.
  * PyTorch (eager): added in NumPy as the step runs.

  Args:
    model: The model whose train steps call `add`.
    size: The vector's length.
    reduction: "square" or "abs".
  """

  def __init__(self, model, size, reduction):
    self.size, self.reduction = size, reduction
    self._tf = None
    if name() == "tensorflow":
      tf = self._tf = tensorflow("the TensorFlow backend")
      with scope(model):
        kwargs = dict(trainable=False,
                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._total = tf.Variable(tf.zeros([size], tf.float32), **kwargs)
        self._counts = tf.Variable(tf.zeros([3], tf.int64), **kwargs)
    else:
      self._total = np.zeros(size, np.float64)
      self._counts = np.zeros(3, np.int64)  # steps, skipped, calls

  def add(self, s):
    """Adds one batch's vector (inside the train step)."""
    if self._tf is not None:
      self._tf_add(s)
    elif name() == "jax":
      from jax.experimental import io_callback  # pylint: disable=g-import-not-at-top
      io_callback(self._host_add, None, s)
    else:
      self._host_add(keras.ops.convert_to_numpy(keras.ops.stop_gradient(s)))

  def _tf_add(self, s):
    tf = self._tf
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      s = context.all_reduce(tf.distribute.ReduceOp.SUM, s)
    finite = tf.reduce_all(tf.math.is_finite(s))
    score = tf.square(s) if self.reduction == "square" else tf.abs(s)
    self._total.assign_add(tf.where(finite, score, tf.zeros_like(score)))
    ok = tf.cast(finite, tf.int64)
    self._counts.assign_add(tf.stack([ok, 1 - ok, tf.constant(1, tf.int64)]))

  def _host_add(self, s):
    s = np.asarray(s, np.float64)
    finite = bool(np.isfinite(s).all())
    if finite:
      self._total += np.square(s) if self.reduction == "square" else np.abs(s)
    self._counts += (int(finite), int(not finite), 1)

  def _barrier(self):
    if self._tf is None and name() == "jax":
      import jax  # pylint: disable=g-import-not-at-top
      jax.effects_barrier()  # the steps' callbacks have all run

  def total(self):
    """The float64 sum over the batches added since `reset`."""
    self._barrier()
    return np.array(keras.ops.convert_to_numpy(self._total), np.float64)

  def counts(self):
    """``(steps, skipped, calls)``: batches summed, skipped (not finite)
    and seen since the sum was made (`reset` keeps the last two)."""
    self._barrier()
    return tuple(int(c) for c in keras.ops.convert_to_numpy(self._counts))

  def reset(self):
    """Starts a new sum (the skipped and seen counts go on)."""
    self._barrier()
    if self._tf is not None:
      self._total.assign(self._tf.zeros_like(self._total))
      self._counts.assign(self._counts * self._tf.constant([0, 1, 1],
                                                       self._tf.int64))
    else:
      self._total[:] = 0.0
      self._counts[0] = 0


# -- files --------------------------------------------------------------------
# Local paths through `os`; a URL-like path (gs://, s3://, hdfs://, ...)
# through `tf.io.gfile`, which TensorFlow brings.

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _gfile(path):
  if _REMOTE.match(os.fspath(path)):
    return tensorflow(f"the path {path!r}").io.gfile
  return None


def exists(path):
  gfile = _gfile(path)
  return gfile.exists(path) if gfile else os.path.exists(path)


def open_file(path, mode="r"):
  gfile = _gfile(path)
  return gfile.GFile(path, mode) if gfile else open(path, mode)  # pylint: disable=unspecified-encoding


def makedirs(path):
  gfile = _gfile(path)
  if gfile:
    gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path):
  gfile = _gfile(path)
  if gfile:
    gfile.remove(path)
  else:
    os.remove(path)


def rename(source, target):
  """Renames `source` to `target`, replacing it (atomic on a local disk)."""
  gfile = _gfile(target)
  if gfile:
    gfile.rename(source, target, overwrite=True)
  else:
    os.replace(source, target)


def rmtree(path):
  gfile = _gfile(path)
  if gfile:
    gfile.rmtree(path)
  else:
    shutil.rmtree(path)
